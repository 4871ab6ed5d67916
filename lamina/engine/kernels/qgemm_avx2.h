// The AVX2 panel kernel of qgemm.cpp: a panel's 16 outputs as two 8-wide vectors, one panel per unit.
#pragma once

constexpr int UNIT = 1;  // panels per unit of work

// The fp32 weights W[n0:n0+16, k] of one panel, as two vectors: scale * code (+ offset), multiply then add.
template <bool Q4, bool OFFS>
ALWAYS_INLINE void weights_at(const uint8_t* codes, int k, __m256 d0, __m256 d1, __m256 m0, __m256 m1, __m256& w0, __m256& w1) {
  __m256 q0, q1;
  if (Q4) {
    // byte j holds output j's code in its low nibble and output j + 8's in its high nibble
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(k) * (P / 2))));
    q0 = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)));
    q1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(k) * P));
    q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
  }
  w0 = _mm256_mul_ps(d0, q0);
  w1 = _mm256_mul_ps(d1, q1);
  if (OFFS) w0 = _mm256_add_ps(w0, m0), w1 = _mm256_add_ps(w1, m1);
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
template <bool Q4, bool OFFS, typename Body>
ALWAYS_INLINE void for_each_k(const PanelRef& pr, int K, int G, Body&& body) {
  for (int g = 0; g < K / G; ++g) {
    prefetch_group<Q4, OFFS>(pr, g, G);
    const __m256 d0 = _mm256_loadu_ps(pr.scales + g * P), d1 = _mm256_loadu_ps(pr.scales + g * P + 8);
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    if (OFFS) m0 = _mm256_loadu_ps(pr.offsets + g * P), m1 = _mm256_loadu_ps(pr.offsets + g * P + 8);
    for (int k = g * G; k < (g + 1) * G; ++k) {
      __m256 w0, w1;
      weights_at<Q4, OFFS>(pr.codes, k, d0, d1, m0, m1, w0, w1);
      body(k, w0, w1);
    }
  }
}

// A few rows (R <= 4) against a panel, expanding the weights on the way: for small batches the expansion then
// overlaps the FMAs instead of taking a pass of its own.
template <int R, bool Q4, bool OFFS>
ALWAYS_INLINE void few_rows(const float* x, int64_t ldx, const PanelRef& pr, int K, int G, float* tile, int64_t ldt) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for_each_k<Q4, OFFS>(pr, K, G, [&](int k, __m256 w0, __m256 w1) ALWAYS_INLINE_LAMBDA {
    ROWS_FMA(R, x, ldx, k, w0, w1, acc);
  });
  ROWS_STORE(R, acc, tile, ldt);
}

// The whole panel expanded to fp32 into `buf` [K][16], for batches that reuse it across many rows.
template <bool Q4, bool OFFS>
void expand(const PanelRef& pr, int K, int G, float* buf) {
  for_each_k<Q4, OFFS>(pr, K, G, [&](int k, __m256 w0, __m256 w1) ALWAYS_INLINE_LAMBDA {
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

template <bool Q4, bool OFFS>
void unit_times_rows(const float* x, int64_t M, int K, int G, const PanelRef* pr, int /*npanels: always 1*/,
                     float* buf, float* tile, int64_t ldt) {
  switch (M) {
    case 1: few_rows<1, Q4, OFFS>(x, K, *pr, K, G, tile, ldt); return;
    case 2: few_rows<2, Q4, OFFS>(x, K, *pr, K, G, tile, ldt); return;
    case 3: few_rows<3, Q4, OFFS>(x, K, *pr, K, G, tile, ldt); return;
    case 4: few_rows<4, Q4, OFFS>(x, K, *pr, K, G, tile, ldt); return;
    default: break;
  }
  expand<Q4, OFFS>(*pr, K, G, buf);
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
