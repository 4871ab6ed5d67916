// Decode attention straight from the paged KV cache: one query token per sequence against its blocks, without
// gathering them into a contiguous copy first. Each (sequence, kv head) pair is computed on its own, so a
// sequence's result does not depend on the others in the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vec_math.h"

inline void prefetch_block(const float* start, int64_t floats) {
  for (int64_t i = 0; i < floats; i += 16) _mm_prefetch(reinterpret_cast<const char*>(start + i), _MM_HINT_T0);
}

struct ValueWalk {
  const float* values;  // this kv head's [blocks, block_size, D]
  const int64_t* table;
  int64_t length, block_size, dim;
};

// out[g, d0 : d0 + 8 NV] = sum over t of probs[g, t] * V[t, d0 : d0 + 8 NV], for G heads sharing the kv head: each
// value row is loaded once for all G heads, and the G x NV sums stay in registers (one chain over t each).
template <int G, int NV>
void weighted_values(const ValueWalk& w, const float* probs, int64_t padded, int64_t d0, float* out) {
  __m256 acc[G][NV];
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < NV; ++v) acc[g][v] = _mm256_setzero_ps();
  for (int64_t j = 0, t0 = 0; t0 < w.length; ++j, t0 += w.block_size) {
    const float* block = w.values + w.table[j] * w.block_size * w.dim + d0;
    if (t0 + w.block_size < w.length) prefetch_block(w.values + w.table[j + 1] * w.block_size * w.dim, w.block_size * w.dim);
    for (int64_t u = 0, n = std::min(w.block_size, w.length - t0); u < n; ++u) {
      for (int g = 0; g < G; ++g) {
        const __m256 p = _mm256_set1_ps(probs[g * padded + t0 + u]);
        for (int v = 0; v < NV; ++v)
          acc[g][v] = _mm256_fmadd_ps(p, _mm256_loadu_ps(block + u * w.dim + 8 * v), acc[g][v]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + g * w.dim + d0 + 8 * v, acc[g][v]);
}

// q [B, H, D]; caches [KVH, blocks, block_size, D]; tables [B, W] int64; lengths [B] int64 -> out [B, H, D]
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& tables, const at::Tensor& lengths, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "q: contiguous float32 [B, H, D]");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == at::kFloat, "caches: float32 [KVH, N, S, D]");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.is_contiguous() && lengths.scalar_type() == at::kLong,
              "tables and lengths: int64");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_cache.size(0), NB = k_cache.size(1), S = k_cache.size(2), W = tables.size(1);
  TORCH_CHECK(D % 8 == 0 && k_cache.size(3) == D && H % KVH == 0 && tables.size(0) == B && lengths.numel() == B,
              "shapes do not agree");
  const int64_t G = H / KVH;
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(lp[b] > 0 && lp[b] <= W * S, "length beyond the block table");
  auto out = at::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / KVH, h = item % KVH, L = lp[b];
      const int64_t padded = (L + 7) / 8 * 8;
      scores.assign(G * padded, -INFINITY);
      const float* query = qp + (b * H + h * G) * D;
      for (int64_t j = 0, t0 = 0; t0 < L; ++j, t0 += S) {
        const int64_t block = tp[b * W + j];
        TORCH_CHECK(block >= 0 && block < NB, "block id out of range");
        const float* keys = kp + (h * NB + block) * S * D;
        if (t0 + S < L) prefetch_block(kp + (h * NB + tp[b * W + j + 1]) * S * D, S * D);
        for (int64_t u = 0, n = std::min(S, L - t0); u < n; ++u) {
          for (int64_t g = 0; g < G; ++g) {
            __m256 dot0 = _mm256_setzero_ps(), dot1 = _mm256_setzero_ps();
            int64_t d = 0;
            for (; d + 16 <= D; d += 16) {
              dot0 = _mm256_fmadd_ps(_mm256_loadu_ps(query + g * D + d), _mm256_loadu_ps(keys + u * D + d), dot0);
              dot1 = _mm256_fmadd_ps(_mm256_loadu_ps(query + g * D + d + 8), _mm256_loadu_ps(keys + u * D + d + 8), dot1);
            }
            if (d < D) dot0 = _mm256_fmadd_ps(_mm256_loadu_ps(query + g * D + d), _mm256_loadu_ps(keys + u * D + d), dot0);
            scores[g * padded + t0 + u] = hsum(_mm256_add_ps(dot0, dot1)) * fscale;
          }
        }
      }
      std::vector<float> inv(G);
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores.data() + g * padded;
        float top = -INFINITY;
        for (int64_t t = 0; t < L; ++t) top = std::max(top, s[t]);
        const __m256 shift = _mm256_set1_ps(top);
        __m256 total = _mm256_setzero_ps();
        for (int64_t t = 0; t < padded; t += 8) {
          const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), shift));
          _mm256_storeu_ps(s + t, e);
          total = _mm256_add_ps(total, e);
        }
        inv[g] = 1.0f / hsum(total);
      }
      const ValueWalk walk{vp + h * NB * S * D, tp + b * W, L, S, D};
      float* dst = op + (b * H + h * G) * D;
      for (int64_t g0 = 0; g0 < G; g0 += 3) {
        const int64_t heads = std::min<int64_t>(3, G - g0);
        const float* probs = scores.data() + g0 * padded;
        for (int64_t d0 = 0; d0 < D;) {
          const bool wide = d0 + 32 <= D;
          if (heads == 3) wide ? weighted_values<3, 4>(walk, probs, padded, d0, dst + g0 * D) : weighted_values<3, 1>(walk, probs, padded, d0, dst + g0 * D);
          else if (heads == 2) wide ? weighted_values<2, 4>(walk, probs, padded, d0, dst + g0 * D) : weighted_values<2, 1>(walk, probs, padded, d0, dst + g0 * D);
          else wide ? weighted_values<1, 4>(walk, probs, padded, d0, dst + g0 * D) : weighted_values<1, 1>(walk, probs, padded, d0, dst + g0 * D);
          d0 += wide ? 32 : 8;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const __m256 vinv = _mm256_set1_ps(inv[g]);
        for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(dst + g * D + d, _mm256_mul_ps(_mm256_loadu_ps(dst + g * D + d), vinv));
      }
    }
  });
  return out;
}
