// y = x W^T + b for fp32 activations x [M, K] and weights W kept in their GGUF block-quantized form.
//
// W is stored in panels of P = 16 output rows. For each k, a panel holds the 16 codes of W[n0:n0+16, k]: 4-bit
// codes two to a byte (output j in the low nibble of byte j, output j + 8 in its high nibble) or one byte each
// (signed, or unsigned with offsets); every group of G = 32 (or 16) k's has 16 scales and, where the format has
// them, 16 offsets: W[n, k] = scale * code + offset, computed in fp32 exactly as the GGUF reference does (a
// multiply, then an add; -ffp-contract=off keeps them apart). Units of panels are expanded to fp32 into a small
// buffer that every row of x is multiplied against (for up to 4 rows the expansion is fused into the multiply
// instead). Each output is one chain of FMAs over k = 0..K-1, the same whatever M is, so a row's result does not
// depend on its batch mates; and the same in the AVX2 and the AVX-512 build (qgemm_avx2.h, qgemm_avx512.h: which
// one a build holds follows its compiler flags; kernels/__init__.py builds one module per instruction set).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int P = 16;

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

struct PanelRef {
  const uint8_t* codes;   // [K][16] bytes or [K][8] nibble pairs
  const float* scales;    // [K / G][16]
  const float* offsets;   // like scales, or null
};

// The weights of group g + PREFETCH_GROUPS of a panel, asked for while group g is multiplied (past the panel's end,
// the next panel's): a decode step streams every weight from memory once, and the hardware prefetcher alone left a
// single row waiting on it (all linears of SmolLM2-135M for one row: 11.7 ms of CPU time without, 6.8 ms with, on
// an AMD EPYC with AVX-512). Only loads are moved: the arithmetic, and so every result, is unchanged.
constexpr int PREFETCH_GROUPS = 4;

template <bool Q4, bool OFFS>
ALWAYS_INLINE void prefetch_group(const PanelRef& pr, int g, int G) {
  constexpr int bytes = Q4 ? P / 2 : P;
  const uint8_t* ahead = pr.codes + static_cast<size_t>(g + PREFETCH_GROUPS) * G * bytes;
  for (int line = 0; line < G * bytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(pr.scales + (g + PREFETCH_GROUPS) * P), _MM_HINT_T0);
  if (OFFS) _mm_prefetch(reinterpret_cast<const char*>(pr.offsets + (g + PREFETCH_GROUPS) * P), _MM_HINT_T0);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "qgemm_avx512.h"
#else
#include "qgemm_avx2.h"
#endif

}  // namespace

at::Tensor block_quant_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                              const at::Tensor& offsets, const c10::optional<at::Tensor>& bias, int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(codes.dim() == 3 && codes.is_contiguous() && codes.size(0) * P >= out_features, "codes: [panels, K, bytes]");
  const int64_t M = x.size(0), panels = codes.size(0);
  const int K = static_cast<int>(x.size(1));
  const bool q4 = codes.size(2) == P / 2, offs = offsets.numel() > 0;
  TORCH_CHECK(codes.size(1) == K && (q4 || codes.size(2) == P), "codes do not match x's K");
  TORCH_CHECK(scales.dim() == 3 && scales.is_contiguous() && scales.size(0) == panels && scales.size(2) == P &&
              scales.size(1) > 0 && K % scales.size(1) == 0, "scales: [panels, K/G, 16]");
  const int G = K / static_cast<int>(scales.size(1));
  TORCH_CHECK(G == 16 || G == 32, "scales: one per 16 or 32 k's");
  TORCH_CHECK(!offs || (offsets.is_contiguous() && offsets.sizes() == scales.sizes()), "offsets: like scales");
  TORCH_CHECK(offs || !q4, "4-bit codes need offsets");
  auto out = at::empty({M, out_features}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* op = offs ? offsets.data_ptr<float>() : nullptr;
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = out.data_ptr<float>();
  const int64_t panel_codes = codes.size(1) * codes.size(2), panel_scales = scales.size(1) * P;
  const int64_t units = (panels + UNIT - 1) / UNIT;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> storage(static_cast<size_t>(K) * UNIT * P + 16 + static_cast<size_t>(M) * UNIT * P);
    float* buf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
    float* tile = buf + static_cast<size_t>(K) * UNIT * P;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t p0 = u * UNIT, n0 = p0 * P;
      const int npanels = static_cast<int>(std::min<int64_t>(UNIT, panels - p0));
      const int64_t width = std::min<int64_t>(npanels * P, out_features - n0);
      PanelRef pr[UNIT];
      for (int j = 0; j < npanels; ++j)
        pr[j] = {cp + (p0 + j) * panel_codes, sp + (p0 + j) * panel_scales, op ? op + (p0 + j) * panel_scales : nullptr};
      const bool direct = width == npanels * P;  // whole panels land in the output directly
      float* dst = direct ? yp + n0 : tile;
      const int64_t ldt = direct ? out_features : npanels * P;
      if (q4) unit_times_rows<true, true>(xp, M, K, G, pr, npanels, buf, dst, ldt);
      else if (offs) unit_times_rows<false, true>(xp, M, K, G, pr, npanels, buf, dst, ldt);
      else unit_times_rows<false, false>(xp, M, K, G, pr, npanels, buf, dst, ldt);
      for (int64_t m = 0; m < M; ++m) {
        float* row = yp + m * out_features + n0;
        if (!direct) std::copy(tile + m * ldt, tile + m * ldt + width, row);
        if (bp) for (int64_t j = 0; j < width; ++j) row[j] += bp[n0 + j];
      }
    }
  });
  return out;
}
