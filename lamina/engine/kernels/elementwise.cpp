// Per-token elementwise ops of the Llama layer, each one pass instead of PyTorch's several: RMSNorm, rotary
// embedding (in place, NeoX halves), and SiLU(gate) * up. Each token row is computed on its own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "vec_math.h"

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [T, N]");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1) && weight.scalar_type() == at::kFloat, "weight: [N]");
  const int64_t T = x.size(0), N = x.size(1);
  auto out = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = xp + t * N;
      __m256 sq = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= N; i += 8) {
        const __m256 v = _mm256_loadu_ps(row + i);
        sq = _mm256_fmadd_ps(v, v, sq);
      }
      float sum = hsum(sq);
      for (; i < N; ++i) sum += row[i] * row[i];
      const float inv = 1.0f / std::sqrt(sum / static_cast<float>(N) + static_cast<float>(eps));
      const __m256 vinv = _mm256_set1_ps(inv);
      float* dst = op + t * N;
      for (i = 0; i + 8 <= N; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(row + i), vinv), _mm256_loadu_ps(wp + i)));
      for (; i < N; ++i) dst[i] = row[i] * inv * wp[i];
    }
  });
  return out;
}

namespace {

// x[t, h, :] = x * cos + rotate_half(x) * sin, with PyTorch's roundings (multiply, multiply, add).
void rope_rows(const at::Tensor& x, const float* cos, const float* sin, const int64_t* positions, int64_t D) {
  const int64_t T = x.size(0), H = x.size(1), st = x.stride(0), sh = x.stride(1), half = D / 2;
  float* base = x.data_ptr<float>();
  at::parallel_for(0, T, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cos + positions[t] * D;
      const float* s = sin + positions[t] * D;
      for (int64_t h = 0; h < H; ++h) {
        float* v = base + t * st + h * sh;
        int64_t i = 0;
        for (; i + 8 <= half; i += 8) {
          const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + half + i);
          const __m256 lo = _mm256_sub_ps(_mm256_mul_ps(a, _mm256_loadu_ps(c + i)), _mm256_mul_ps(b, _mm256_loadu_ps(s + i)));
          const __m256 hi = _mm256_add_ps(_mm256_mul_ps(b, _mm256_loadu_ps(c + half + i)),
                                          _mm256_mul_ps(a, _mm256_loadu_ps(s + half + i)));
          _mm256_storeu_ps(v + i, lo);
          _mm256_storeu_ps(v + half + i, hi);
        }
        for (; i < half; ++i) {
          const float a = v[i], b = v[half + i];
          v[i] = a * c[i] - b * s[i];
          v[half + i] = b * c[half + i] + a * s[half + i];
        }
      }
    }
  });
}

}  // namespace

void rope_(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
           const at::Tensor& positions) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.stride(2) == 1 && k.stride(2) == 1 && q.size(2) == k.size(2) &&
              q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat, "q, k: float32 [T, heads, D], rows dense");
  const int64_t D = q.size(2);
  TORCH_CHECK(D % 2 == 0 && cos.is_contiguous() && sin.is_contiguous() && cos.size(1) == D && sin.sizes() == cos.sizes(),
              "cos/sin: [positions, D]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() && positions.numel() == q.size(0) &&
              k.size(0) == q.size(0), "positions: int64 [T]");
  const int64_t* pp = positions.data_ptr<int64_t>();
  for (int64_t t = 0; t < positions.numel(); ++t)
    TORCH_CHECK(pp[t] >= 0 && pp[t] < cos.size(0), "position beyond the rotary table");
  rope_rows(q, cos.data_ptr<float>(), sin.data_ptr<float>(), pp, D);
  rope_rows(k, cos.data_ptr<float>(), sin.data_ptr<float>(), pp, D);
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.scalar_type() == at::kFloat && gate_up.size(1) % 2 == 0,
              "gate_up: contiguous float32 [T, 2I]");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  auto out = at::empty({T, I}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, T, 4, [&](int64_t begin, int64_t end) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (int64_t t = begin; t < end; ++t) {
      const float *g = gp + t * 2 * I, *u = g + I;
      float* dst = op + t * I;
      int64_t i = 0;
      for (; i + 8 <= I; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp_nonpositive(_mm256_or_ps(x, sign));  // e^-|x|
        const __m256 sigmoid = _mm256_blendv_ps(_mm256_div_ps(e, _mm256_add_ps(one, e)),
                                                _mm256_div_ps(one, _mm256_add_ps(one, e)),
                                                _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_mul_ps(x, sigmoid), _mm256_loadu_ps(u + i)));
      }
      for (; i < I; ++i) dst[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}
