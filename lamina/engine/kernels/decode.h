// A decode step of the Llama family in one native call (decode.cpp): every layer run without returning to Python.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

// One linear of the step: "block_quant" (tensors: codes, scales, offsets panels of qgemm.cpp), "onednn" (tensors:
// the weight packed by torch.ops.mkldnn._reorder_linear_weight) or "dense" (tensors: the fp32 weight [out, in]).
using LinearSpec = std::tuple<std::string, std::vector<at::Tensor>, c10::optional<at::Tensor>, int64_t>;

struct DecodeLinear {
  int kind = 0;  // 0 block_quant, 1 onednn, 2 dense
  std::vector<at::Tensor> tensors;
  c10::optional<at::Tensor> bias;
  int64_t out_features = 0;
  at::Tensor operator()(const at::Tensor& x) const;
};

struct DecodeLayer {
  at::Tensor input_norm, post_norm;
  DecodeLinear qkv, o, gate_up, down;
  double scale;
};

class DecodeModel {
 public:
  DecodeModel(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, at::Tensor cos, at::Tensor sin,
              at::Tensor final_norm);
  void add_layer(at::Tensor input_norm, at::Tensor post_norm, double scale, const std::vector<LinearSpec>& linears);
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& positions, const std::vector<at::Tensor>& k_cache,
                     const std::vector<at::Tensor>& v_cache, const at::Tensor& slots, const at::Tensor& tables,
                     const at::Tensor& lengths) const;

 private:
  int64_t heads_, kv_heads_, head_dim_;
  double eps_;
  at::Tensor cos_, sin_, final_norm_;
  std::vector<DecodeLayer> layers_;
};
