// One sampled token per row of logits, each row with its own temperature, top-k, top-p, min-p and uniform draw,
// with the semantics of lamina/engine/sampler.py (filters applied in that order, each on the distribution left
// by the one before; the draw inverts the CDF in vocabulary order). Only the nucleus is sorted, never the row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vec_math.h"

namespace {

struct RowParams {
  float temperature, top_p, min_p;
  int64_t top_k;
  double draw;
};

int64_t sample_row(const float* logits, int64_t V, const RowParams& p, std::vector<float>& e,
                   std::vector<int64_t>& kept) {
  e.resize(V);
  const float t = std::max(p.temperature, 1e-5f);
  float top = -INFINITY;
  for (int64_t i = 0; i < V; ++i) top = std::max(top, e[i] = logits[i] / t);
  kept.clear();
  if (p.top_k > 0 && p.top_k < V) {  // keep the k highest (and any tied with the k-th)
    std::vector<float> copy(e.begin(), e.end());
    std::nth_element(copy.begin(), copy.begin() + (p.top_k - 1), copy.end(), std::greater<float>());
    const float kth = copy[p.top_k - 1];
    for (int64_t i = 0; i < V; ++i)
      if (e[i] < kth) e[i] = -INFINITY;
  }
  const __m256 shift = _mm256_set1_ps(top);
  double total = 0.0;
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    __m256 v = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(e.data() + i), shift));
    _mm256_storeu_ps(e.data() + i, v);
  }
  for (; i < V; ++i) e[i] = std::exp(e[i] - top);
  for (int64_t j = 0; j < V; ++j) total += e[j];
  bool all = true;  // `kept` is meaningful only once a filter has narrowed the row
  if (p.top_p < 1.0f) {
    const double target = static_cast<double>(p.top_p) * total;
    for (float floor = 1e-4f;; floor *= 1.0f / 64) {  // candidates: every token above a floor holding >= top_p
      kept.clear();
      double mass = 0.0;
      for (int64_t j = 0; j < V; ++j)
        if (e[j] >= floor && e[j] > 0.0f) { kept.push_back(j); mass += e[j]; }
      if (mass >= target || floor < 1e-38f) break;
    }
    std::sort(kept.begin(), kept.end(), [&](int64_t a, int64_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); });
    double cum = 0.0;
    size_t n = 0;
    while (n < kept.size() && cum < target) cum += e[kept[n++]];
    kept.resize(std::max<size_t>(n, 1));
    std::sort(kept.begin(), kept.end());
    all = false;
  }
  if (p.min_p > 0.0f) {  // the most likely token has e = 1
    if (all) {
      for (int64_t j = 0; j < V; ++j)
        if (e[j] >= p.min_p) kept.push_back(j);
      all = false;
    } else {
      kept.erase(std::remove_if(kept.begin(), kept.end(), [&](int64_t j) { return e[j] < p.min_p; }), kept.end());
    }
  }
  if (all) {
    double target = p.draw * total, cum = 0.0;
    int64_t last = 0;
    for (int64_t j = 0; j < V; ++j) {
      if (e[j] <= 0.0f) continue;
      cum += e[j];
      last = j;
      if (cum > target) return j;
    }
    return last;
  }
  double mass = 0.0;
  for (int64_t j : kept) mass += e[j];
  const double target = p.draw * mass;
  double cum = 0.0;
  for (int64_t j : kept) {
    cum += e[j];
    if (cum > target) return j;
  }
  return kept.back();
}

}  // namespace

at::Tensor sample_rows(const at::Tensor& logits, const at::Tensor& temperatures, const at::Tensor& top_ks,
                       const at::Tensor& top_ps, const at::Tensor& min_ps, const at::Tensor& draws) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.is_contiguous(), "logits: float32 [B, V]");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(temperatures.scalar_type() == at::kFloat && top_ps.scalar_type() == at::kFloat &&
              min_ps.scalar_type() == at::kFloat && top_ks.scalar_type() == at::kLong &&
              draws.scalar_type() == at::kDouble, "parameter dtypes: float32 temperatures/top_ps/min_ps, int64 top_ks, float64 draws");
  TORCH_CHECK(temperatures.numel() == B && top_ks.numel() == B && top_ps.numel() == B && min_ps.numel() == B &&
              draws.numel() == B, "one parameter per row");
  auto out = at::empty({B}, logits.options().dtype(at::kLong));
  const float* lp = logits.data_ptr<float>();
  const float *tp = temperatures.data_ptr<float>(), *pp = top_ps.data_ptr<float>(), *mp = min_ps.data_ptr<float>();
  const int64_t* kp = top_ks.data_ptr<int64_t>();
  const double* dp = draws.data_ptr<double>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> e;
    std::vector<int64_t> kept;
    for (int64_t row = begin; row < end; ++row)
      op[row] = sample_row(lp + row * V, V, RowParams{tp[row], pp[row], mp[row], kp[row], dp[row]}, e, kept);
  });
  return out;
}
