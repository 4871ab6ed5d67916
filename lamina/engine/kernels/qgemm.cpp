// y = x W^T + b for fp32 activations x [M, K] and weights W kept in their GGUF block-quantized form.
//
// W is stored in panels of P = 16 output rows. For each k, a panel holds the 16 codes of W[n0:n0+16, k] (4-bit
// codes two to a byte: output j in the low nibble of byte j, output j + 8 in its high nibble); every block of 32
// k's has 16 scales (and, for 4-bit codes, 16 offsets): W[n, k] = scale * code + offset, computed in fp32 exactly
// as the GGUF reference does (a multiply, then an add; -ffp-contract=off keeps them apart). A panel is expanded to
// fp32 into a small buffer that every row of x is multiplied against (for up to 4 rows the expansion is fused into
// the multiply instead). Each output is one chain of FMAs over k = 0..K-1, the same whatever M is, so a row's
// result does not depend on its batch mates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int P = 16;
constexpr int QB = 32;

// The fp32 weights W[n0:n0+16, k] of one panel, as two vectors: scale * code (+ offset), multiply then add.
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

template <bool Q4>
ALWAYS_INLINE void weights_at(const uint8_t* codes, int k, __m256 d0, __m256 d1, __m256 m0, __m256 m1, __m256& w0, __m256& w1) {
  if (Q4) {
    // byte j holds output j's code in its low nibble and output j + 8's in its high nibble
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(k) * (P / 2))));
    const __m256i low = _mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)), high = _mm256_srli_epi32(bytes, 4);
    w0 = _mm256_add_ps(_mm256_mul_ps(d0, _mm256_cvtepi32_ps(low)), m0);
    w1 = _mm256_add_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(high)), m1);
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(k) * P));
    w0 = _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
    w1 = _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8))));
  }
}

// acc[r] += x[r, k] * (w0, w1) for R rows, and the R x 16 results stored. Macros, not functions: passed to a helper
// by reference, GCC keeps the accumulators on the stack instead of in registers (2x slower).
#define ROWS_FMA(R, x, ldx, k, w0, w1, acc)                      \
  _Pragma("GCC unroll 8")                                        \
  for (int r = 0; r < (R); ++r) {                                \
    const __m256 xv = _mm256_broadcast_ss((x) + r * (ldx) + (k)); \
    acc[r][0] = _mm256_fmadd_ps(xv, (w0), acc[r][0]);            \
    acc[r][1] = _mm256_fmadd_ps(xv, (w1), acc[r][1]);            \
  }
#define ROWS_STORE(R, acc, tile, ldt)                     \
  _Pragma("GCC unroll 8")                                 \
  for (int r = 0; r < (R); ++r) {                         \
    _mm256_storeu_ps((tile) + r * (ldt), acc[r][0]);      \
    _mm256_storeu_ps((tile) + r * (ldt) + 8, acc[r][1]);  \
  }

// Every k of a panel in order, with the panel's weights at k as two vectors (16 outputs).
template <bool Q4, typename Body>
ALWAYS_INLINE void for_each_k(const uint8_t* codes, const float* scales, const float* offsets, int K, Body&& body) {
  for (int b = 0; b < K / QB; ++b) {
    const __m256 d0 = _mm256_loadu_ps(scales + b * P), d1 = _mm256_loadu_ps(scales + b * P + 8);
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    if (Q4) m0 = _mm256_loadu_ps(offsets + b * P), m1 = _mm256_loadu_ps(offsets + b * P + 8);
    for (int k = b * QB; k < (b + 1) * QB; ++k) {
      __m256 w0, w1;
      weights_at<Q4>(codes, k, d0, d1, m0, m1, w0, w1);
      body(k, w0, w1);
    }
  }
}

// A few rows (R <= 4) against a panel, expanding the weights on the way: for small batches the expansion then
// overlaps the FMAs instead of taking a pass of its own.
template <int R, bool Q4>
ALWAYS_INLINE void few_rows(const float* x, int64_t ldx, const uint8_t* codes, const float* scales,
                            const float* offsets, int K, float* tile, int64_t ldt) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for_each_k<Q4>(codes, scales, offsets, K, [&](int k, __m256 w0, __m256 w1) ALWAYS_INLINE_LAMBDA {
    ROWS_FMA(R, x, ldx, k, w0, w1, acc);
  });
  ROWS_STORE(R, acc, tile, ldt);
}

// The whole panel expanded to fp32 into `buf` [K][16], for batches that reuse it across many rows.
template <bool Q4>
void expand(const uint8_t* codes, const float* scales, const float* offsets, int K, float* buf) {
  for_each_k<Q4>(codes, scales, offsets, K, [&](int k, __m256 w0, __m256 w1) ALWAYS_INLINE_LAMBDA {
    _mm256_store_ps(buf + k * P, w0);
    _mm256_store_ps(buf + k * P + 8, w1);
  });
}

template <int R>
ALWAYS_INLINE void many_rows(const float* x, int64_t ldx, const float* buf, int K, float* tile, int64_t ldt) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_load_ps(buf + k * P), w1 = _mm256_load_ps(buf + k * P + 8);
    ROWS_FMA(R, x, ldx, k, w0, w1, acc);
  }
  ROWS_STORE(R, acc, tile, ldt);
}

template <bool Q4>
void panel_times_rows(const float* x, int64_t M, int K, const uint8_t* codes, const float* scales,
                      const float* offsets, float* buf, float* tile, int64_t ldt) {
  switch (M) {
    case 1: few_rows<1, Q4>(x, K, codes, scales, offsets, K, tile, ldt); return;
    case 2: few_rows<2, Q4>(x, K, codes, scales, offsets, K, tile, ldt); return;
    case 3: few_rows<3, Q4>(x, K, codes, scales, offsets, K, tile, ldt); return;
    case 4: few_rows<4, Q4>(x, K, codes, scales, offsets, K, tile, ldt); return;
    default: break;
  }
  expand<Q4>(codes, scales, offsets, K, buf);
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) many_rows<6>(x + m * K, K, buf, K, tile + m * ldt, ldt);
  const float* xr = x + m * K;
  float* tr = tile + m * ldt;
  switch (M - m) {
    case 5: many_rows<5>(xr, K, buf, K, tr, ldt); break;
    case 4: many_rows<4>(xr, K, buf, K, tr, ldt); break;
    case 3: many_rows<3>(xr, K, buf, K, tr, ldt); break;
    case 2: many_rows<2>(xr, K, buf, K, tr, ldt); break;
    case 1: many_rows<1>(xr, K, buf, K, tr, ldt); break;
    default: break;
  }
}

}  // namespace

at::Tensor block_quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                                 const at::Tensor& offsets, const c10::optional<at::Tensor>& bias,
                                 int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(codes.dim() == 3 && codes.is_contiguous() && codes.size(0) * P >= out_features, "codes: [panels, K, bytes]");
  const int64_t M = x.size(0), panels = codes.size(0);
  const int K = static_cast<int>(x.size(1));
  const bool q4 = offsets.numel() > 0;
  TORCH_CHECK(K % QB == 0 && codes.size(1) == K && codes.size(2) == (q4 ? P / 2 : P), "codes do not match x's K");
  TORCH_CHECK(scales.is_contiguous() && scales.numel() == panels * (K / QB) * P, "scales: [panels, K/32, 16]");
  TORCH_CHECK(!q4 || (offsets.is_contiguous() && offsets.numel() == scales.numel()), "offsets: like scales");
  auto out = at::empty({M, out_features}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* op = q4 ? offsets.data_ptr<float>() : nullptr;
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = out.data_ptr<float>();
  const int64_t panel_codes = codes.size(1) * codes.size(2), panel_scales = (K / QB) * P;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> storage(static_cast<size_t>(K) * P + 8 + static_cast<size_t>(M) * P);
    float* buf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 31) & ~uintptr_t(31));
    float* tile = buf + static_cast<size_t>(K) * P;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * P, width = std::min<int64_t>(P, out_features - n0);
      float* dst = width == P ? yp + n0 : tile;  // a full panel lands in the output directly
      const int64_t ldt = width == P ? out_features : P;
      if (q4) panel_times_rows<true>(xp, M, K, cp + p * panel_codes, sp + p * panel_scales, op + p * panel_scales, buf, dst, ldt);
      else panel_times_rows<false>(xp, M, K, cp + p * panel_codes, sp + p * panel_scales, nullptr, buf, dst, ldt);
      for (int64_t m = 0; m < M; ++m) {
        float* row = yp + m * out_features + n0;
        if (dst == tile) std::copy(tile + m * P, tile + m * P + width, row);
        if (bp) for (int64_t j = 0; j < width; ++j) row[j] += bp[n0 + j];
      }
    }
  });
  return out;
}
