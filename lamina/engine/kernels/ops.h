// The kernels' entry points, declared once for the files that call them (module.cpp binds them to Python,
// decode.cpp calls them from the native decode step). Defined in qgemm.cpp, attention.cpp, elementwise.cpp,
// sampler.cpp.
#pragma once

#include <ATen/ATen.h>

#include <string>

at::Tensor block_quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                              const at::Tensor& offsets, const c10::optional<at::Tensor>& bias, int64_t out_features);
void set_qgemm_mode(const std::string& mode);
std::string qgemm_mode();
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& tables, const at::Tensor& lengths, double scale);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
void rope_(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
           const at::Tensor& positions);
at::Tensor silu_mul(const at::Tensor& gate_up);
at::Tensor sample_rows(const at::Tensor& logits, const at::Tensor& temperatures, const at::Tensor& top_ks,
                       const at::Tensor& top_ps, const at::Tensor& min_ps, const at::Tensor& draws);
