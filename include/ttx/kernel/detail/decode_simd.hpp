// The two inner loops of the streaming decode kernels, for float, bfloat16 and half storage with
// float accumulation: a group of query heads dotted with one key segment, and the tile product
// C (rows x cols) = alpha .* C + P (rows x B) * K (B x cols). An AVX-512 version (register-blocked,
// keys converted to float in registers) and a portable one (any compiler, the sanitizer build).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ttx/core/types.hpp"
#include "ttx/kernel/detail/prefetch.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TTX_DECODE_AVX512 1
#include <immintrin.h>
#endif

namespace ttx::kernel::detail {

/// Storage value -> float (exact for float, bfloat16 and half).
template <class T>
inline float to_float(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, bf16>) {
    // bfloat16 is the high half of a float: widen by a shift (no rounding involved).
    std::uint16_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
  } else {
    return static_cast<float>(x);
  }
}

#ifdef TTX_DECODE_AVX512

inline __mmask16 tail_mask(Index count) {
  return count >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
}

/// 16 storage values (masked lanes read as 0) as floats.
template <class T>
inline __m512 load16(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (std::is_same_v<T, double>) {
    // Double storage (tests, oracles): two 8-lane loads narrowed to float, as to_float does.
    const __m256 lo = _mm512_cvtpd_ps(_mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p));
    const __m256 hi = _mm512_cvtpd_ps(_mm512_maskz_loadu_pd(static_cast<__mmask8>(m >> 8), p + 8));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  } else {
    static_assert(std::is_same_v<T, f16>, "decode kernels read float, double, bf16 or half");
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
}
template <class T>
inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (std::is_same_v<T, double>) {
    return load16(p, __mmask16(0xFFFF));
  } else {
    static_assert(std::is_same_v<T, f16>, "decode kernels read float, double, bf16 or half");
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

/// Keeps loaded key vectors in registers: without this GCC folds the load into every FMA that
/// uses it (MR loads per vector instead of one), which measured 2.5x slower.
template <int NV>
inline void pin(__m512 (&kv)[NV]) {
  for (int v = 0; v < NV; ++v) __asm__("" : "+v"(kv[v]));
}

/// out[t * os] = dot(q + t * q_ld, k) over L values, for up to 4 query heads sharing the key.
template <int G, class T>
inline void dots_block(const float* q, Index q_ld, const T* k, Index L, float* out, Index os) {
  __m512 acc[G];
  for (int t = 0; t < G; ++t) acc[t] = _mm512_setzero_ps();
  Index c = 0;
  for (; c + 16 <= L; c += 16) {
    const __m512 kv = load16(k + c);
    for (int t = 0; t < G; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_loadu_ps(q + t * q_ld + c), kv, acc[t]);
  }
  if (c < L) {
    const __mmask16 m = tail_mask(L - c);
    const __m512 kv = load16(k + c, m);
    for (int t = 0; t < G; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + t * q_ld + c), kv, acc[t]);
  }
  for (int t = 0; t < G; ++t) out[t * os] = _mm512_reduce_add_ps(acc[t]);
}

/// f(std::integral_constant<int, G>{}) with G = min(4, count), count >= 1: the kernels below
/// work on blocks of up to four heads, with the block size a compile-time constant.
template <class F>
inline void with_block_of_4(Index count, F&& f) {
  switch (std::min<Index>(4, count)) {
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    default:
      return f(std::integral_constant<int, 1>{});
  }
}

/// Dots of `hg` query heads (q + t*q_ld, each L long) with one key segment k (L values).
template <class T>
inline void group_dots(const float* q, Index q_ld, Index hg, const T* k, Index L, float* out,
                       Index os) {
  for (Index t = 0; t < hg; t += 4)
    with_block_of_4(hg - t, [&](auto G) {
      dots_block<decltype(G)::value>(q + t * q_ld, q_ld, k, L, out + t * os, os);
    });
}

/// The four horizontal sums of a, b, c, d (16 lanes each), in that order: a shuffle tree that
/// costs about a third of four separate reductions. The zero-masking forms with an all-ones mask
/// are the same instructions as the plain ones; GCC 12 implements the plain ones with a
/// self-initialised "undefined" operand that -Wall (-Winit-self) reports once this is inlined into
/// the score kernel.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  constexpr __mmask16 all = 0xFFFF;
  const __m512 ab = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(all, a, b, 0x44),
                                  _mm512_maskz_shuffle_f32x4(all, a, b, 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(all, c, d, 0x44),
                                  _mm512_maskz_shuffle_f32x4(all, c, d, 0xEE));
  // 128-bit lanes: a, b, c, d partial sums (4 floats each)
  const __m512 u = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(all, ab, cd, 0x88),
                                 _mm512_maskz_shuffle_f32x4(all, ab, cd, 0xDD));
  const __m512 v = _mm512_add_ps(u, _mm512_maskz_permute_ps(all, u, 0xB1));  // swap neighbours
  const __m512 w = _mm512_add_ps(v, _mm512_maskz_permute_ps(all, v, 0x4E));  // swap pairs
  const __m512i idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
  return _mm512_maskz_extractf32x4_ps(0xF, _mm512_maskz_permutexvar_ps(all, idx, w), 0);
}

/// G heads of one group (queries q + t * q_ld, t < G) against four key rows k[0..3], L values
/// each: S[t * ldS + r] = dot(q_t, k_r). Each key vector is loaded once for the G heads; the four
/// sums of a head share one reduction tree.
template <int G, class T>
inline void dots_4keys(const float* q, Index q_ld, const T* const (&k)[4], Index L, __mmask16 tail,
                       float* S, Index ldS) {
  __m512 a[G][4];
  for (int t = 0; t < G; ++t)
    for (int r = 0; r < 4; ++r) a[t][r] = _mm512_setzero_ps();
  Index c = 0;
  for (; c + 16 <= L; c += 16) {
    __m512 kv[4];
    for (int r = 0; r < 4; ++r) kv[r] = load16(k[r] + c);
    for (int t = 0; t < G; ++t) {
      const __m512 qv = _mm512_loadu_ps(q + t * q_ld + c);
      for (int r = 0; r < 4; ++r) a[t][r] = _mm512_fmadd_ps(qv, kv[r], a[t][r]);
    }
  }
  if (c < L) {
    __m512 kv[4];
    for (int r = 0; r < 4; ++r) kv[r] = load16(k[r] + c, tail);
    for (int t = 0; t < G; ++t) {
      const __m512 qv = _mm512_maskz_loadu_ps(tail, q + t * q_ld + c);
      for (int r = 0; r < 4; ++r) a[t][r] = _mm512_fmadd_ps(qv, kv[r], a[t][r]);
    }
  }
  for (int t = 0; t < G; ++t) _mm_storeu_ps(S + t * ldS, hsum4(a[t][0], a[t][1], a[t][2], a[t][3]));
}

/// S[i * ldS + jj] = dot(q_i, row jj's columns [g(i) * L, (g(i) + 1) * L)) for every head i
/// (g(i) = i / hg) and tile row jj < b; rows are `ld` apart. pf (may be null): pf_len bytes
/// prefetched into L2 in address order, spread evenly over the 4-key blocks (see stream_range).
/// Four rows at a time against up to four heads of their group: a group's key segment is read once
/// per four heads, not once per head. Measured against one head at a time (same sums, bitwise; same
/// process, 2 threads): the inputs form (all heads share the rows) 0.58-0.63x the time (h 6 w 384 n
/// 1500, h 16 w 1024 n 4096, h 8 w 512 n 16384), vanilla GQA n 16384 with 4-8 heads per group f32
/// 0.65-0.94x, with 2 (h 32, kv 16) 1.03x; bf16 0.85-0.97x.
template <class T>
inline void tile_scores(const float* q, Index q_ld, Index groups, Index hg, const T* rows, Index ld,
                        Index L, Index b, float* S, Index ldS, const char* pf = nullptr,
                        Index pf_len = 0) {
  const __mmask16 tail = tail_mask(L % 16);
  const LineShares share(pf_len, groups * (b / 4));  // one share per 4-key block
  Index blk = 0;                                     // 4-key blocks done
  for (Index g = 0; g < groups; ++g) {
    const float* qg = q + g * hg * q_ld;
    float* Sg = S + g * hg * ldS;
    Index jj = 0;
    for (; jj + 4 <= b; jj += 4, ++blk) {
      if (pf) prefetch_l2(pf, share.begin(blk), share.end(blk));
      const T* k0 = rows + jj * ld + g * L;
      const T* const k[4] = {k0, k0 + ld, k0 + 2 * ld, k0 + 3 * ld};
      for (Index t = 0; t < hg; t += 4)
        with_block_of_4(hg - t, [&](auto G) {
          dots_4keys<decltype(G)::value>(qg + t * q_ld, q_ld, k, L, tail, Sg + t * ldS + jj, ldS);
        });
    }
    for (; jj < b; ++jj) group_dots(qg, q_ld, hg, rows + jj * ld + g * L, L, Sg + jj, ldS);
  }
}

/// Register block: MR rows of C times NV vectors of 16 columns, accumulated over B keys, then
/// C = alpha .* C + acc. The last vector is masked by `last` (all ones when full).
/// pf (may be null): the same columns of the next tile (ld ldk), its rows from pf_from on
/// prefetched into L2 row by row so the next tile streams in from memory while this one computes
/// (rows before pf_from are the score pass's share, see stream_range).
/// Out of line, as micro_bf16x64: inlined into the (large) stream loop, GCC kept the accumulators
/// in memory and stored all of them on every key (slim bf16 h 8 took 2.3x the time after an
/// unrelated edit changed GCC's inlining choice).
template <int MR, int NV, class T, bool Full = false>
[[gnu::noinline]] void micro(const float* P, Index ldp, Index B, const T* K, Index ldk, float* C,
                             Index ldc, const float* alpha, __mmask16 last, const T* pf,
                             Index pf_from) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  constexpr int kLine = static_cast<int>(64 / sizeof(T));  // values per cache line
  for (Index j = 0; j < B; ++j) {
    const T* krow = K + j * ldk;
    if (pf && j >= pf_from)
      for (int v = 0; v < 16 * NV; v += kLine)
        _mm_prefetch(reinterpret_cast<const char*>(pf + j * ldk + v), _MM_HINT_T1);
    __m512 kv[NV];
    for (int v = 0; v < NV - 1; ++v) kv[v] = load16(krow + 16 * v);
    // Masked loads cost ~3x a plain load on this core (measured): only the true tail uses one.
    kv[NV - 1] = Full ? load16(krow + 16 * (NV - 1)) : load16(krow + 16 * (NV - 1), last);
    pin(kv);
    for (int i = 0; i < MR; ++i) {
      const __m512 p = _mm512_set1_ps(P[i * ldp + j]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(p, kv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    const __m512 a = _mm512_set1_ps(alpha[i]);
    float* c = C + i * ldc;
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
      const __m512 old = _mm512_maskz_loadu_ps(m, c + 16 * v);
      _mm512_mask_storeu_ps(c + 16 * v, m, _mm512_fmadd_ps(a, old, acc[i][v]));
    }
  }
}

/// 64 storage values as four float vectors. bfloat16 is the high half of a float, so interleaving
/// zero words below it (unpacklo/hi) widens 32 keys in 2 shuffles instead of 2 widening moves and
/// 2 shifts per 16; the unpacks permute columns within 128-bit lanes, which store64 undoes. Other
/// types load in column order.
template <class T>
inline void load64(const T* p, __m512 (&kv)[4]) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 32);
    kv[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, x0));  // cols 0-3, 8-11, 16-19, 24-27
    kv[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, x0));  // cols 4-7, 12-15, ...
    kv[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, x1));
    kv[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, x1));
  } else {
    for (int v = 0; v < 4; ++v) kv[v] = load16(p + 16 * v);
  }
}

/// c (64 floats) = a * c + acc, with acc in load64's column order.
template <class T>
inline void store64(float* c, __m512 a, const __m512 (&acc)[4]) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512i lo = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i hi =
        _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
    for (int half = 0; half < 2; ++half) {
      const __m512 u = acc[2 * half], w = acc[2 * half + 1];
      float* ch = c + 32 * half;
      _mm512_storeu_ps(ch,
                       _mm512_fmadd_ps(a, _mm512_loadu_ps(ch), _mm512_permutex2var_ps(u, lo, w)));
      _mm512_storeu_ps(
          ch + 16, _mm512_fmadd_ps(a, _mm512_loadu_ps(ch + 16), _mm512_permutex2var_ps(u, hi, w)));
    }
  } else {
    for (int v = 0; v < 4; ++v)
      _mm512_storeu_ps(c + 16 * v, _mm512_fmadd_ps(a, _mm512_loadu_ps(c + 16 * v), acc[v]));
  }
}

/// micro<MR, 4> for bfloat16 keys over a full 64-column slab, widened by load64's unpacks.
template <int MR>
[[gnu::noinline]] void micro_bf16x64(const float* P, Index ldp, Index B, const bf16* K, Index ldk,
                                     float* C, Index ldc, const float* alpha, const bf16* pf,
                                     Index pf_from) {
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_ps();
  for (Index j = 0; j < B; ++j) {
    const bf16* krow = K + j * ldk;
    // 64 bfloat16 keys span two cache lines: prefetch both.
    if (pf && j >= pf_from) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + j * ldk), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(pf + j * ldk + 32), _MM_HINT_T1);
    }
    __m512 kv[4];
    load64(krow, kv);
    pin(kv);
    for (int i = 0; i < MR; ++i) {
      const __m512 p = _mm512_set1_ps(P[i * ldp + j]);
      for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_fmadd_ps(p, kv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) store64<bf16>(C + i * ldc, _mm512_set1_ps(alpha[i]), acc[i]);
}

/// MR heads, each weighting its own 64 key columns (vanilla MHA: head i's values start i * koff
/// columns further): C_i (C + i * ldc, 64 values) = alpha_i C_i + P_i (1 x B) * K_i (B x 64).
/// One head alone is FMA-latency-bound (4 accumulator chains); MR heads give 4 MR chains.
/// Key step j prefetches bytes [j * pf_step, (j + 1) * pf_step) of [pf, pf + pf_len), the last
/// step all that is left, so a caller can spread a contiguous region over its calls in address
/// order.
template <int MR, class T>
inline void micro_heads64(const float* P, Index ldp, Index B, const T* K, Index ldk, Index koff,
                          float* C, Index ldc, const float* alpha, const char* pf, Index pf_step,
                          Index pf_len) {
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_ps();
  for (Index j = 0; j < B; ++j) {
    if (pf) prefetch_l2(pf, j * pf_step, j + 1 == B ? pf_len : std::min(pf_len, (j + 1) * pf_step));
    const T* krow = K + j * ldk;
    for (int i = 0; i < MR; ++i) {
      __m512 kv[4];
      load64(krow + i * koff, kv);
      const __m512 p = _mm512_set1_ps(P[i * ldp + j]);
      for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_fmadd_ps(p, kv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) store64<T>(C + i * ldc, _mm512_set1_ps(alpha[i]), acc[i]);
}

/// micro<MR, NV> over the last `rest` columns (1 <= NV <= MaxNV <= 4 vectors, the last one
/// masked; rest <= 16 MaxNV). Prefetch addresses step by whole cache lines from the first column,
/// so they stay within the row even when the last vector is partial.
template <int MR, int MaxNV, class T>
inline void micro_rest(const float* P, Index ldp, Index B, const T* K, Index ldk, Index rest,
                       float* C, Index ldc, const float* alpha, const T* pf, Index pf_from) {
  if (rest <= 0) return;
  const Index nv = (rest + 15) / 16;
  const __mmask16 last = tail_mask(rest - 16 * (nv - 1));
  switch (nv) {
    case 1:
      return micro<MR, 1>(P, ldp, B, K, ldk, C, ldc, alpha, last, pf, pf_from);
    case 2:
      return micro<MR, 2>(P, ldp, B, K, ldk, C, ldc, alpha, last, pf, pf_from);
    case 3:
      return micro<MR, 3>(P, ldp, B, K, ldk, C, ldc, alpha, last, pf, pf_from);
    default:  // nv == 4; the 48-column kernel's tail never gets here, nor instantiates micro<MR, 4>
      if constexpr (MaxNV == 4)
        return micro<MR, 4>(P, ldp, B, K, ldk, C, ldc, alpha, last, pf, pf_from);
  }
}

template <int MR, class T>
inline void micro_cols(const float* P, Index ldp, Index B, const T* K, Index ldk, Index cols,
                       float* C, Index ldc, const float* alpha, const T* pf, Index pf_from) {
  auto at = [](const T* p, Index c) { return p ? p + c : p; };
  Index c = 0;
  for (; c + 64 <= cols; c += 64) {
    if constexpr (std::is_same_v<T, bf16>)
      micro_bf16x64<MR>(P, ldp, B, K + c, ldk, C + c, ldc, alpha, at(pf, c), pf_from);
    else
      micro<MR, 4, T, true>(P, ldp, B, K + c, ldk, C + c, ldc, alpha, __mmask16(0xFFFF), at(pf, c),
                            pf_from);
  }
  micro_rest<MR, 4>(P, ldp, B, K + c, ldk, cols - c, C + c, ldc, alpha, at(pf, c), pf_from);
}

/// micro<MR, 3> over 48-column slabs, then the fewer than 48 columns left.
template <int MR, class T>
inline void micro_cols48(const float* P, Index ldp, Index B, const T* K, Index ldk, Index cols,
                         float* C, Index ldc, const float* alpha, const T* pf, Index pf_from) {
  auto at = [](const T* p, Index c) { return p ? p + c : p; };
  Index c = 0;
  for (; c + 48 <= cols; c += 48)
    micro<MR, 3, T, true>(P, ldp, B, K + c, ldk, C + c, ldc, alpha, __mmask16(0xFFFF), at(pf, c),
                          pf_from);
  micro_rest<MR, 3>(P, ldp, B, K + c, ldk, cols - c, C + c, ldc, alpha, at(pf, c), pf_from);
}

template <class T>
inline void micro_rows(Index mr, const float* P, Index ldp, Index B, const T* K, Index ldk,
                       Index cols, float* C, Index ldc, const float* alpha, const T* pf,
                       Index pf_from) {
  switch (mr) {
    case 6:
      return micro_cols<6>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
    case 5:
      return micro_cols<5>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
    case 4:
      return micro_cols<4>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
    case 3:
      return micro_cols<3>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
    case 2:
      return micro_cols<2>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
    default:
      return micro_cols<1>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
  }
}

/// C (rows x cols, ld ldc) = alpha .* C + P (rows x B, ld ldp) * K (B x cols, ld ldk).
/// pf: optional next-tile rows (B x cols, ld ldk), prefetched from row pf_from on while computing.
template <class T>
inline void tile_product(const float* P, Index ldp, Index rows, Index B, const T* K, Index ldk,
                         Index cols, float* C, Index ldc, const float* alpha, const T* pf = nullptr,
                         Index pf_from = 0) {
  // Seven or eight rows of float keys: one block over 48-column slabs (24 accumulators + 3 key
  // vectors) reads each key row of the tile once instead of twice (4 + 4 rows over 64 columns;
  // a 64-column slab of 4 KB-strided rows does not stay in L1 for the second block). Measured,
  // same process, f32 n 16384 dk 128 2 threads: h 8 2.1-2.3 -> 1.7-1.9 ms (0.79-0.84x), dk 64
  // 0.90x, h 7 0.82x (dk 64: 0.93x); as 2 or 4 such blocks at h 16 / 32 only 0.95-0.98x, and for
  // bfloat16 and half keys not faster than their 64-column kernels, so only here.
  if constexpr (std::is_same_v<T, float>) {
    if (rows == 8) return micro_cols48<8>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
    if (rows == 7) return micro_cols48<7>(P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
  }
  // Row blocks of at most 6 (24 accumulators + 4 key vectors fit the 32 registers), as even as
  // possible: h = 10 runs as 5 + 5 rather than 6 + 4.
  const Index blocks = (rows + 5) / 6;
  if (blocks == 1) return micro_rows(rows, P, ldp, B, K, ldk, cols, C, ldc, alpha, pf, pf_from);
  // Several row blocks: 64-column slabs outermost, so every block after the first re-reads a
  // recent slab (B x 64 keys, in L1 when the row stride does not alias, else in L2) instead of the
  // whole tile (measured 3-4% at h = 8 before the 8-row kernel above).
  for (Index c = 0; c < cols; c += 64) {
    const Index cw = std::min<Index>(64, cols - c);
    for (Index blk = 0, i = 0; blk < blocks; ++blk) {
      const Index mr = (rows - i) / (blocks - blk) + ((rows - i) % (blocks - blk) != 0);
      // The first block prefetches the next tile's slab.
      micro_rows(mr, P + i * ldp, ldp, B, K + c, ldk, cw, C + i * ldc + c, ldc, alpha + i,
                 blk == 0 && pf ? pf + c : nullptr, pf_from);
      i += mr;
    }
  }
}

/// One head per key segment (vanilla MHA): head i's row C_i (C + i * ldc, L values) = alpha_i C_i +
/// P_i (1 x B) * K[:, [i * L, (i + 1) * L)). next (may be null): the next tile's B rows of ldk
/// values, contiguous, prefetched into L2 in address order, spread evenly over the kernel calls.
/// Measured against the per-head tile_product with its slab-order prefetch (same process, n 16384,
/// dk 128, 2 threads): bfloat16 h 8-32 0.78-0.85x the time, float 0.90-0.97x; the kernel then reads
/// at 0.8-1.0 of a plain sequential read's rate. Heads run in blocks of four (16 independent
/// accumulator chains).
template <class T>
inline void tile_product_heads(const float* P, Index ldp, Index heads, Index B, const T* K,
                               Index ldk, Index L, float* C, Index ldc, const float* alpha,
                               const T* next) {
  const Index full = L / 64 * 64;
  if (full == 0) {  // heads narrower than one slab: per head, with tile_product's own prefetch
    for (Index i = 0; i < heads; ++i)
      tile_product(P + i * ldp, ldp, 1, B, K + i * L, ldk, L, C + i * ldc, ldc, alpha + i,
                   next ? next + i * L : next);
    return;
  }
  const LineShares share(B * ldk * static_cast<Index>(sizeof(T)), (heads + 3) / 4 * (full / 64));
  const Index step = spread_step_bytes(share.per, B);  // whole lines per key step
  const char* pf = reinterpret_cast<const char*>(next);
  Index call = 0;
  for (Index i = 0; i < heads; i += 4)
    for (Index c = 0; c < full; c += 64, ++call) {
      const Index off = share.begin(call), len = share.end(call) - off;
      with_block_of_4(heads - i, [&](auto G) {
        micro_heads64<decltype(G)::value>(P + i * ldp, ldp, B, K + i * L + c, ldk, L,
                                          C + i * ldc + c, ldc, alpha + i, pf ? pf + off : pf, step,
                                          len);
      });
    }
  for (Index i = 0; full < L && i < heads; ++i)  // columns past the last slab (already prefetched)
    tile_product(P + i * ldp, ldp, 1, B, K + i * L + full, ldk, L - full, C + i * ldc + full, ldc,
                 alpha + i);
}

#else  // portable

template <class T>
inline void group_dots(const float* q, Index q_ld, Index hg, const T* k, Index L, float* out,
                       Index os) {
  // 16 partial sums, as the SIMD path keeps: a single running sum loses accuracy with L, and
  // large scores turn score error into output error.
  for (Index t = 0; t < hg; ++t) {
    const float* qt = q + t * q_ld;
    float acc[16] = {};
    for (Index c = 0; c < L; ++c) acc[c % 16] += qt[c] * to_float(k[c]);
    for (int w = 8; w > 0; w /= 2)
      for (int x = 0; x < w; ++x) acc[x] += acc[x + w];
    out[t * os] = acc[0];
  }
}

template <class T>
inline void tile_scores(const float* q, Index q_ld, Index groups, Index hg, const T* rows, Index ld,
                        Index L, Index b, float* S, Index ldS, const char* /*pf*/ = nullptr,
                        Index /*pf_len*/ = 0) {
  for (Index jj = 0; jj < b; ++jj)
    for (Index g = 0; g < groups; ++g)
      group_dots(q + g * hg * q_ld, q_ld, hg, rows + jj * ld + g * L, L, S + g * hg * ldS + jj,
                 ldS);
}

template <class T>
inline void tile_product(const float* P, Index ldp, Index rows, Index B, const T* K, Index ldk,
                         Index cols, float* C, Index ldc, const float* alpha,
                         const T* /*pf*/ = nullptr, Index /*pf_from*/ = 0) {
  for (Index i = 0; i < rows; ++i) {
    float* c = C + i * ldc;
    for (Index x = 0; x < cols; ++x) c[x] *= alpha[i];
    const float* p = P + i * ldp;
    for (Index j = 0; j < B; ++j) {
      const T* krow = K + j * ldk;
      const float pj = p[j];
      for (Index x = 0; x < cols; ++x) c[x] += pj * to_float(krow[x]);
    }
  }
}

template <class T>
inline void tile_product_heads(const float* P, Index ldp, Index heads, Index B, const T* K,
                               Index ldk, Index L, float* C, Index ldc, const float* alpha,
                               const T* /*next*/) {
  for (Index i = 0; i < heads; ++i)
    tile_product(P + i * ldp, ldp, 1, B, K + i * L, ldk, L, C + i * ldc, ldc, alpha + i);
}

#endif

}  // namespace ttx::kernel::detail
