// The "fast" formulation of the AVX-512 block-quantized GEMM (qgemm.cpp), opt-in (LAMINA_QGEMM=fast): per group of G
// k's, each output first sums x * code over the group (the codes as small integers turned into floats, never
// scaled), and only then applies the group's scale and offset once:
//   y += d * sum_i(x_i * q_i) + m * sum_i(x_i)
// (Q4_1; Q4_0's offset m = -8 d; Q8_0 has no offset). sum_i(x_i) per group is computed once per row of x, in
// block_quant_linear, and shared by every output. Per 16 weights that is a code expansion and one FMA instead of
// the exact path's expansion, multiply, add and FMA. It is fp32 arithmetic reassociated, not the dequantized
// reference's bits: within the fp32 tolerance of it (tests/test_native_kernels.py), and still batch-invariant,
// since every row's arithmetic is the same whatever its batch mates (rows are taken in register tiles of up to
// FAST_TILE_ROWS, each row computed alone inside its tile). One-hot rows still pick each weight out bitwise
// (d * q rounded, then + m rounded, as the reference does).
// Each group's sum runs as CHAINS interleaved FMA chains (k mod CHAINS), added pairwise at the group's end: a single
// row has only one accumulator per 16 outputs, and one chain per accumulator would wait on the FMA latency
// (SmolLM2-135M's linears for one row: about as slow as the exact path, which has that limit too).
// Measured on an AMD EPYC (Zen 4, 1 thread, a loaded shared machine): one row against one linear in cache 1.2-1.3x
// faster than exact for Q4_1, 1.6x for Q8_0; all 121 linears of SmolLM2-135M for one row 1.11x
// (benchmarks/qgemm_ab.py: 9.72 vs 8.79 ms CPU, min of 200); the engine's single stream 1.14-1.20x per pair
// (benchmarks/engine.py --qgemm-ab-only), the same greedy tokens. From 4 rows on it is slower than exact (0.54-0.76x:
// 3-row tiles and the per-group tile update), and a row's arithmetic may not depend on its batch, hence opt-in.
#pragma once

constexpr int CHAINS = 4;
constexpr int FAST_TILE_ROWS = 3;  // 3 rows x 2 panels x 4 chains = 24 accumulators, 2 code vectors, 1 broadcast

// The codes of W[n0:n0+16, k] as floats, as the exact path expands them (a 16-entry permutexvar table in place of
// the mask and convert was slower: 1.10x instead of 1.29x over exact for one Q4_1 row).
template <bool Q4>
ALWAYS_INLINE __m512 codes_at(const uint8_t* codes, int k) {
  if (Q4) {
    const __m128i twice = _mm_castpd_si128(_mm_loaddup_pd(reinterpret_cast<const double*>(codes + static_cast<size_t>(k) * (P / 2))));
    const __m512i shifts = _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(twice), shifts), _mm512_set1_epi32(0x0F)));
  }
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(k) * P))));
}

// R rows of x against NW panels; `tile` (R x 16 NW, zeroed by the caller) accumulates y group by group;
// sums[r * lds + g] = sum of x[r, g G:(g + 1) G]. FROM_BUF: the codes come as floats from `buf` [K][16 NW]
// (expanded once for many rows), else straight from the panels; the same values either way.
template <int R, int NW, bool Q4, bool OFFS, bool FROM_BUF>
void fast_rows(const float* x, int64_t ldx, const float* sums, int64_t lds, const PanelRef* pr, const float* buf,
               int K, int G, float* tile, int64_t ldt) {
  for (int g = 0; g < K / G; ++g) {
    if (!FROM_BUF) {
#pragma GCC unroll 2
      for (int j = 0; j < NW; ++j) prefetch_group<Q4, OFFS>(pr[j], g, G);
    }
    __m512 acc[R][NW][CHAINS];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
        for (int c = 0; c < CHAINS; ++c) acc[r][j][c] = _mm512_setzero_ps();
    for (int k0 = g * G; k0 < (g + 1) * G; k0 += CHAINS) {
#pragma GCC unroll 4
      for (int c = 0; c < CHAINS; ++c) {
        const int k = k0 + c;
        __m512 q[NW];
#pragma GCC unroll 2
        for (int j = 0; j < NW; ++j)
          q[j] = FROM_BUF ? _mm512_load_ps(buf + (static_cast<size_t>(k) * NW + j) * P) : codes_at<Q4>(pr[j].codes, k);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
#pragma GCC unroll 2
          for (int j = 0; j < NW; ++j) acc[r][j][c] = _mm512_fmadd_ps(xv, q[j], acc[r][j][c]);
        }
      }
    }
#pragma GCC unroll 2
    for (int j = 0; j < NW; ++j) {
      const __m512 d = _mm512_loadu_ps(pr[j].scales + g * P);
      const __m512 m = OFFS ? _mm512_loadu_ps(pr[j].offsets + g * P) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[r][j][0], acc[r][j][1]), _mm512_add_ps(acc[r][j][2], acc[r][j][3]));
        float* at = tile + r * ldt + j * P;
        __m512 y = _mm512_fmadd_ps(d, s, _mm512_loadu_ps(at));
        if (OFFS) y = _mm512_fmadd_ps(m, _mm512_set1_ps(sums[r * lds + g]), y);
        _mm512_storeu_ps(at, y);
      }
    }
  }
}

// fast_rows<rows> for the count (1..R) given at run time.
template <int R, int NW, bool Q4, bool OFFS, bool FROM_BUF>
void fast_tail(int rows, const float* x, int64_t ldx, const float* sums, int64_t lds, const PanelRef* pr,
               const float* buf, int K, int G, float* tile, int64_t ldt) {
  if constexpr (R > 0) {
    if (rows == R) return fast_rows<R, NW, Q4, OFFS, FROM_BUF>(x, ldx, sums, lds, pr, buf, K, G, tile, ldt);
    fast_tail<R - 1, NW, Q4, OFFS, FROM_BUF>(rows, x, ldx, sums, lds, pr, buf, K, G, tile, ldt);
  }
}

template <int NW, bool Q4, bool OFFS>
void fast_panels_times_rows(const float* x, int64_t M, int K, int G, const float* sums, const PanelRef* pr, float* buf,
                            float* tile, int64_t ldt) {
  const int64_t lds = K / G;
  const bool from_buf = M > FAST_TILE_ROWS;
  if (from_buf)
    for (int k = 0; k < K; ++k)
#pragma GCC unroll 2
      for (int j = 0; j < NW; ++j) _mm512_store_ps(buf + (static_cast<size_t>(k) * NW + j) * P, codes_at<Q4>(pr[j].codes, k));
  for (int64_t m = 0; m < M; m += FAST_TILE_ROWS) {
    const int rows = static_cast<int>(std::min<int64_t>(FAST_TILE_ROWS, M - m));
    for (int r = 0; r < rows; ++r) std::fill(tile + (m + r) * ldt, tile + (m + r) * ldt + NW * P, 0.0f);
    if (from_buf)
      fast_tail<FAST_TILE_ROWS, NW, Q4, OFFS, true>(rows, x + m * K, K, sums + m * lds, lds, pr, buf, K, G, tile + m * ldt, ldt);
    else
      fast_tail<FAST_TILE_ROWS, NW, Q4, OFFS, false>(rows, x + m * K, K, sums + m * lds, lds, pr, buf, K, G, tile + m * ldt, ldt);
  }
}

template <bool Q4, bool OFFS>
void fast_unit_times_rows(const float* x, int64_t M, int K, int G, const float* sums, const PanelRef* pr, int npanels,
                          float* buf, float* tile, int64_t ldt) {
  if (npanels == 2) fast_panels_times_rows<2, Q4, OFFS>(x, M, K, G, sums, pr, buf, tile, ldt);
  else fast_panels_times_rows<1, Q4, OFFS>(x, M, K, G, sums, pr, buf, tile, ldt);
}
