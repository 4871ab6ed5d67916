// Python bindings of Lamina's native CPU kernels (qgemm.cpp, attention.cpp, sampler.cpp, elementwise.cpp, decode.cpp).
#include <torch/extension.h>

#include "decode.h"
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  m.attr("isa") = "avx512";
#else
  m.attr("isa") = "avx2";
#endif
  m.def("block_quant_linear", &block_quant_linear, "y = x W^T + b with W in GGUF block-quantized panels");
  m.def("set_qgemm_mode", &set_qgemm_mode, py::arg("mode"),
        "block_quant_linear's arithmetic: 'exact' (dequantized weights) or 'fast' (avx512: scale applied per group)");
  m.def("qgemm_mode", &qgemm_mode, "block_quant_linear's arithmetic now: 'exact' or 'fast'");
  m.def("rms_norm", &rms_norm, "x * rsqrt(mean(x^2) + eps) * weight, per row");
  m.def("rope_", &rope_, "rotary embedding of q and k in place (NeoX halves)");
  m.def("silu_mul", &silu_mul, "silu(gate) * up for gate_up = [gate | up]");
  m.def("sample_rows", &sample_rows, "one token per row, each with its own filters and uniform draw");
  m.def("paged_decode_attention", &paged_decode_attention, "one query per sequence against its paged KV blocks");
  py::class_<DecodeModel>(m, "DecodeModel", py::module_local(), "a Llama-family decode step over all layers in one call (decode.cpp)")
      .def(py::init<int64_t, int64_t, int64_t, double, at::Tensor, at::Tensor, at::Tensor>(), py::arg("heads"),
           py::arg("kv_heads"), py::arg("head_dim"), py::arg("eps"), py::arg("cos"), py::arg("sin"), py::arg("final_norm"))
      .def("add_layer", &DecodeModel::add_layer, py::arg("input_norm"), py::arg("post_norm"), py::arg("scale"),
           py::arg("linears"))
      .def_property_readonly("num_layers", &DecodeModel::num_layers)
      .def("forward", &DecodeModel::forward, py::arg("x"), py::arg("positions"), py::arg("k_cache"), py::arg("v_cache"),
           py::arg("slots"), py::arg("tables"), py::arg("lengths"), py::call_guard<py::gil_scoped_release>());
}
