// A decode step of the Llama family (lamina/engine/models/llama.py's DecoderLayer) run natively: for a batch of
// decode rows (one token each, any sequences), every layer's RMSNorm, q/k/v projection, RoPE, K/V write into the
// paged cache, paged attention, output projection, residual add, RMSNorm, gate/up projection, SiLU-and-multiply,
// down projection and residual add, then the final RMSNorm, without returning to Python between operations. It
// calls the same kernels in the same order on the same values as the Python path with native kernels, so its
// result is bitwise the Python path's (tests/test_native_decode.py); the weights are handed over once, at load.
#include "decode.h"
#include "ops.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <cstring>

at::Tensor DecodeLinear::operator()(const at::Tensor& x) const {
  if (kind == 0) return block_quant_linear(x, tensors[0], tensors[1], tensors[2], bias, out_features);
  if (kind == 2) return at::linear(x, tensors[0], bias);
  // oneDNN's packed fp32 GEMM, as cpu_linear.PackedLinear calls it: _linear_pointwise(x, packed, bias, "none", [], "")
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.emplace_back(x);
  stack.emplace_back(tensors[0]);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<c10::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

namespace {

DecodeLinear make_linear(const LinearSpec& spec) {
  const auto& [kind, tensors, bias, out_features] = spec;
  DecodeLinear linear;
  linear.tensors = tensors;
  linear.bias = bias;
  linear.out_features = out_features;
  if (kind == "block_quant") {
    TORCH_CHECK(tensors.size() == 3, "block_quant linear: codes, scales, offsets");
    linear.kind = 0;
  } else if (kind == "onednn") {
    TORCH_CHECK(tensors.size() == 1, "onednn linear: the packed weight");
    linear.kind = 1;
  } else if (kind == "dense") {
    TORCH_CHECK(tensors.size() == 1 && tensors[0].dim() == 2 && tensors[0].size(0) == out_features, "dense linear: weight [out, in]");
    linear.kind = 2;
  } else {
    TORCH_CHECK(false, "unknown linear kind '", kind, "' (block_quant, onednn, dense)");
  }
  TORCH_CHECK(!bias.has_value() || (bias->numel() == out_features && bias->scalar_type() == at::kFloat),
              "bias: float32 [out_features]");
  return linear;
}

// x += y, elementwise (the Python path's x + y, one fp32 add per element)
void add_(at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(y.is_contiguous() && y.sizes() == x.sizes(), "residual: shapes do not agree");
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) xp[i] += yp[i];
}

// rows [T, KVH, D] (rows dense) into cache [KVH, blocks, block_size, D] at flat slots[T]
void write_cache(const at::Tensor& rows, const at::Tensor& cache, const int64_t* slots) {
  const int64_t T = rows.size(0), KVH = rows.size(1), D = rows.size(2);
  const int64_t capacity = cache.size(1) * cache.size(2);
  const float* src = rows.data_ptr<float>();
  float* dst = cache.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(slots[t] >= 0 && slots[t] < capacity, "cache slot out of range");
    for (int64_t h = 0; h < KVH; ++h)
      std::memcpy(dst + (h * capacity + slots[t]) * D, src + t * rows.stride(0) + h * rows.stride(1), D * sizeof(float));
  }
}

}  // namespace

DecodeModel::DecodeModel(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, at::Tensor cos,
                         at::Tensor sin, at::Tensor final_norm)
    : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps), cos_(std::move(cos)), sin_(std::move(sin)),
      final_norm_(std::move(final_norm)) {
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim % 8 == 0,
              "heads must be a multiple of kv_heads and head_dim of 8");
}

void DecodeModel::add_layer(at::Tensor input_norm, at::Tensor post_norm, double scale,
                            const std::vector<LinearSpec>& linears) {
  TORCH_CHECK(linears.size() == 4, "a layer has 4 linears: qkv, o, gate_up, down");
  const int64_t q = heads_ * head_dim_, kv = kv_heads_ * head_dim_;
  DecodeLayer layer{std::move(input_norm), std::move(post_norm), make_linear(linears[0]), make_linear(linears[1]),
                    make_linear(linears[2]), make_linear(linears[3]), scale};
  TORCH_CHECK(layer.qkv.out_features == q + 2 * kv, "qkv: out_features ", layer.qkv.out_features, " != ", q + 2 * kv);
  TORCH_CHECK(layer.gate_up.out_features % 2 == 0, "gate_up: odd out_features");
  layers_.push_back(std::move(layer));
}

at::Tensor DecodeModel::forward(const at::Tensor& input, const at::Tensor& positions, const std::vector<at::Tensor>& k_cache,
                                const std::vector<at::Tensor>& v_cache, const at::Tensor& slots, const at::Tensor& tables,
                                const at::Tensor& lengths) const {
  TORCH_CHECK(input.dim() == 2 && input.scalar_type() == at::kFloat, "x: float32 [T, hidden]");
  const int64_t T = input.size(0), L = num_layers();
  TORCH_CHECK(static_cast<int64_t>(k_cache.size()) == L && static_cast<int64_t>(v_cache.size()) == L, "one cache per layer");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == T, "slots: int64 [T]");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == T && lengths.numel() == T, "tables [T, W], lengths [T]");
  const int64_t q_size = heads_ * head_dim_, kv_size = kv_heads_ * head_dim_;
  const int64_t* sp = slots.data_ptr<int64_t>();
  at::Tensor x = input.contiguous().clone();
  for (int64_t i = 0; i < L; ++i) {
    const DecodeLayer& layer = layers_[i];
    const at::Tensor& kc = k_cache[i];
    const at::Tensor& vc = v_cache[i];
    TORCH_CHECK(kc.dim() == 4 && kc.is_contiguous() && vc.is_contiguous() && kc.size(0) == kv_heads_ &&
                kc.size(3) == head_dim_ && vc.sizes() == kc.sizes() && kc.scalar_type() == at::kFloat,
                "caches: float32 [kv_heads, blocks, block_size, head_dim]");
    at::Tensor qkv = layer.qkv(rms_norm(x, layer.input_norm, eps_));
    at::Tensor q = qkv.narrow(1, 0, q_size).view({T, heads_, head_dim_});
    at::Tensor k = qkv.narrow(1, q_size, kv_size).view({T, kv_heads_, head_dim_});
    at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({T, kv_heads_, head_dim_});
    rope_(q, k, cos_, sin_, positions);
    write_cache(k, kc, sp);
    write_cache(v, vc, sp);
    at::Tensor attn = paged_decode_attention(q.contiguous(), kc, vc, tables, lengths, layer.scale);
    add_(x, layer.o(attn.view({T, q_size})));
    add_(x, layer.down(silu_mul(layer.gate_up(rms_norm(x, layer.post_norm, eps_)))));
  }
  return rms_norm(x, final_norm_, eps_);
}
