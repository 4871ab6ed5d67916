// The AVX-512 panel kernel of qgemm.cpp: a panel's 16 outputs are one 16-wide vector, and a unit is two panels
// (32 outputs), so that each row's broadcast input feeds two FMAs. The arithmetic is the AVX2 kernel's, lane for
// lane: the same weights (scale * code, then + offset) and for each output one chain of FMAs over k = 0..K-1, so
// both variants give bit-identical results.
#pragma once

constexpr int UNIT = 2;  // panels per unit of work
constexpr int TILE_ROWS = 12;  // rows per register tile: 12 x 2 accumulators, 2 weights, 1 broadcast of 32 registers
constexpr int FUSED_ROWS = 8;  // up to this many rows, the weights are expanded on the way instead of into a buffer

template <bool Q4, bool OFFS>
ALWAYS_INLINE __m512 weights_at(const uint8_t* codes, int k, __m512 d, __m512 m) {
  __m512 q;
  if (Q4) {
    // byte j holds output j's code in its low nibble and output j + 8's in its high nibble: the 8 bytes loaded
    // twice, widened, and shifted by 0 (lanes 0-7) or 4 (lanes 8-15)
    const __m128i twice = _mm_castpd_si128(_mm_loaddup_pd(reinterpret_cast<const double*>(codes + static_cast<size_t>(k) * (P / 2))));
    const __m512i shifts = _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i nibbles = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(twice), shifts), _mm512_set1_epi32(0x0F));
    q = _mm512_cvtepi32_ps(nibbles);
  } else {
    q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(k) * P))));
  }
  const __m512 w = _mm512_mul_ps(d, q);
  return OFFS ? _mm512_add_ps(w, m) : w;
}

// acc[r][j] += x[r, k] * w[j] for R rows and NW panels; then the R x 16 NW results stored (macros: see qgemm_avx2.h).
#define ROWS_FMA512(R, NW, x, ldx, k, w, acc)                       \
  _Pragma("GCC unroll 16")                                          \
  for (int r = 0; r < (R); ++r) {                                   \
    const __m512 xv = _mm512_set1_ps((x)[r * (ldx) + (k)]);         \
    _Pragma("GCC unroll 2")                                         \
    for (int j = 0; j < (NW); ++j) acc[r][j] = _mm512_fmadd_ps(xv, w[j], acc[r][j]); \
  }
#define ROWS_STORE512(R, NW, acc, tile, ldt)                                       \
  _Pragma("GCC unroll 16")                                                         \
  for (int r = 0; r < (R); ++r) {                                                  \
    _Pragma("GCC unroll 2")                                                        \
    for (int j = 0; j < (NW); ++j) _mm512_storeu_ps((tile) + r * (ldt) + j * P, acc[r][j]); \
  }
#define ROWS_ZERO512(R, NW, acc)                                                   \
  _Pragma("GCC unroll 16")                                                         \
  for (int r = 0; r < (R); ++r) {                                                  \
    _Pragma("GCC unroll 2")                                                        \
    for (int j = 0; j < (NW); ++j) acc[r][j] = _mm512_setzero_ps();                \
  }

// Every k of NW panels in order, with each panel's weights at k as one vector.
template <int NW, bool Q4, bool OFFS, typename Body>
ALWAYS_INLINE void for_each_k(const PanelRef* pr, int K, int G, Body&& body) {
  for (int g = 0; g < K / G; ++g) {
    __m512 d[NW], m[NW];
#pragma GCC unroll 2
    for (int j = 0; j < NW; ++j) prefetch_group<Q4, OFFS>(pr[j], g, G);
#pragma GCC unroll 2
    for (int j = 0; j < NW; ++j) {
      d[j] = _mm512_loadu_ps(pr[j].scales + g * P);
      m[j] = OFFS ? _mm512_loadu_ps(pr[j].offsets + g * P) : _mm512_setzero_ps();
    }
    for (int k = g * G; k < (g + 1) * G; ++k) {
      __m512 w[NW];
#pragma GCC unroll 2
      for (int j = 0; j < NW; ++j) w[j] = weights_at<Q4, OFFS>(pr[j].codes, k, d[j], m[j]);
      body(k, w);
    }
  }
}

// A few rows (R <= FUSED_ROWS) against the panels, expanding the weights on the way (see qgemm_avx2.h).
template <int R, int NW, bool Q4, bool OFFS>
ALWAYS_INLINE void few_rows(const float* x, int64_t ldx, const PanelRef* pr, int K, int G, float* tile, int64_t ldt) {
  __m512 acc[R][NW];
  ROWS_ZERO512(R, NW, acc);
  for_each_k<NW, Q4, OFFS>(pr, K, G, [&](int k, const __m512* w) ALWAYS_INLINE_LAMBDA {
    ROWS_FMA512(R, NW, x, ldx, k, w, acc);
  });
  ROWS_STORE512(R, NW, acc, tile, ldt);
}

// The panels expanded to fp32 into `buf` [K][16 NW], for batches that reuse them across many rows.
template <int NW, bool Q4, bool OFFS>
void expand(const PanelRef* pr, int K, int G, float* buf) {
  for_each_k<NW, Q4, OFFS>(pr, K, G, [&](int k, const __m512* w) ALWAYS_INLINE_LAMBDA {
#pragma GCC unroll 2
    for (int j = 0; j < NW; ++j) _mm512_store_ps(buf + (static_cast<size_t>(k) * NW + j) * P, w[j]);
  });
}

template <int R, int NW>
void many_rows(const float* x, int64_t ldx, const float* buf, int K, float* tile, int64_t ldt) {
  __m512 acc[R][NW];
  ROWS_ZERO512(R, NW, acc);
  for (int k = 0; k < K; ++k) {
    __m512 w[NW];
#pragma GCC unroll 2
    for (int j = 0; j < NW; ++j) w[j] = _mm512_load_ps(buf + (static_cast<size_t>(k) * NW + j) * P);
    ROWS_FMA512(R, NW, x, ldx, k, w, acc);
  }
  ROWS_STORE512(R, NW, acc, tile, ldt);
}

// The last R < TILE_ROWS rows: many_rows<R> for the R given at run time.
template <int R, int NW>
void tail_rows(int rows, const float* x, int64_t ldx, const float* buf, int K, float* tile, int64_t ldt) {
  if constexpr (R > 0) {
    if (rows == R) return many_rows<R, NW>(x, ldx, buf, K, tile, ldt);
    tail_rows<R - 1, NW>(rows, x, ldx, buf, K, tile, ldt);
  }
}

// All rows at once when there are R or fewer: few_rows<rows> for the count given at run time; false if more.
template <int R, int NW, bool Q4, bool OFFS>
bool fused_rows(int rows, const float* x, int K, int G, const PanelRef* pr, float* tile, int64_t ldt) {
  if constexpr (R > 0) {
    if (rows == R) return few_rows<R, NW, Q4, OFFS>(x, K, pr, K, G, tile, ldt), true;
    return fused_rows<R - 1, NW, Q4, OFFS>(rows, x, K, G, pr, tile, ldt);
  }
  return false;
}

template <int NW, bool Q4, bool OFFS>
void panels_times_rows(const float* x, int64_t M, int K, int G, const PanelRef* pr, float* buf, float* tile, int64_t ldt) {
  if (M <= FUSED_ROWS && fused_rows<FUSED_ROWS, NW, Q4, OFFS>(static_cast<int>(M), x, K, G, pr, tile, ldt)) return;
  expand<NW, Q4, OFFS>(pr, K, G, buf);
  int64_t m = 0;
  for (; m + TILE_ROWS <= M; m += TILE_ROWS) many_rows<TILE_ROWS, NW>(x + m * K, K, buf, K, tile + m * ldt, ldt);
  tail_rows<TILE_ROWS - 1, NW>(static_cast<int>(M - m), x + m * K, K, buf, K, tile + m * ldt, ldt);
}

template <bool Q4, bool OFFS>
void unit_times_rows(const float* x, int64_t M, int K, int G, const PanelRef* pr, int npanels, float* buf,
                     float* tile, int64_t ldt) {
  if (npanels == 2) panels_times_rows<2, Q4, OFFS>(x, M, K, G, pr, buf, tile, ldt);
  else panels_times_rows<1, Q4, OFFS>(x, M, K, G, pr, buf, tile, ldt);
}
