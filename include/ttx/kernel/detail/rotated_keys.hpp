// RoPE applied to cached keys as the decode kernels read them (positions j0, j0 + 1, ...):
// - tile_scores_rotated: S[i, j] = q_i . R((j0 + j) theta) k_j for keys cached raw, each key
//   rotated in registers, so no rotated copy of the tile is written and read back;
// - rotate_rows: a tile's keys (un-)rotated into a float buffer, for the weighted sum over keys
//   cached rotated.
// cos/sin come from RopeTable::at_lanes, once per key for all its heads.
#pragma once

#include <algorithm>
#include <vector>

#include "ttx/core/rope.hpp"
#include "ttx/core/types.hpp"
#include "ttx/kernel/detail/decode_simd.hpp"
#include "ttx/kernel/detail/rope_table.hpp"

namespace ttx::kernel::detail {

/// Per-thread working memory: cos/sin lanes (four keys, blocked; or one key) and, without
/// AVX-512, the rotated keys of a block.
struct RotatedKeysScratch {
  std::vector<float, Eigen::aligned_allocator<float>> cs;  // 64-byte aligned: aligned loads
  std::vector<float> c, s, rows;
};

#ifdef TTX_DECODE_AVX512

/// G heads (queries q + t * q_ld) against four key rows k + x * ld (x < 4), L values each, whose
/// first r are rotated by the lanes in `cs`: S[t * ldS + x] = dot(q_t, rotated key x). cs holds,
/// per 16 lanes, c then s of key 0, then of key 1, ... (128 floats per step; rotated_lanes_4):
/// one pointer with constant offsets, which keeps the loop's pointers in registers.
template <int G, bool Interleaved, class T>
inline void dots_4keys_rotated(const float* q, Index q_ld, const T* k, Index ld, Index L, Index r,
                               const float* cs, float* S, Index ldS) {
  // Two accumulator sets for one or two heads: the chains of dependent FMAs, not the FMA count,
  // bound a block of four keys otherwise.
  constexpr int A = G <= 2 ? 2 : 1;
  __m512 a[A][G][4];
#pragma GCC unroll 4
  for (int u = 0; u < A; ++u)
#pragma GCC unroll 4
    for (int t = 0; t < G; ++t)
#pragma GCC unroll 4
      for (int x = 0; x < 4; ++x) a[u][t][x] = _mm512_setzero_ps();
  const T* const k1 = k + ld;
  const T* const k2 = k + 2 * ld;
  const T* const k3 = k + 3 * ld;
  auto key = [&](int x, Index v, __mmask16 m) {
    return load16((x == 0 ? k : x == 1 ? k1 : x == 2 ? k2 : k3) + v, m);
  };
  if constexpr (Interleaved) {
    // Pairs (2p, 2p + 1) lie in one vector: x c + swap(x) s with c = (c_p, c_p), s = (-s_p, s_p).
    // A masked tail reads zeros, which add nothing.
    for (Index v = 0; v < r; v += 16, cs += 128) {
      const __mmask16 m = tail_mask(r - v);
      __m512 qv[G];
#pragma GCC unroll 4
      for (int t = 0; t < G; ++t) qv[t] = _mm512_maskz_loadu_ps(m, q + t * q_ld + v);
#pragma GCC unroll 4
      for (int t = 0; t < G; ++t) __asm__("" : "+v"(qv[t]));
#pragma GCC unroll 4
      for (int x = 0; x < 4; ++x) {
        __m512 kv = key(x, v, m);
        __asm__("" : "+v"(kv));
        const __m512 sw = _mm512_maskz_permute_ps(0xFFFF, kv, 0xB1);  // see hsum4
        const __m512 rot = _mm512_fmadd_ps(kv, _mm512_load_ps(cs + 32 * x),
                                           _mm512_mul_ps(sw, _mm512_load_ps(cs + 32 * x + 16)));
#pragma GCC unroll 4
        for (int t = 0; t < G; ++t) a[0][t][x] = _mm512_fmadd_ps(qv[t], rot, a[0][t][x]);
      }
    }
  } else {
    // Pairs (p, p + r/2): both halves rotate together, 16 pairs per step.
    const Index h = r / 2;
    for (Index p = 0; p < h; p += 16, cs += 128) {
      const __mmask16 m = tail_mask(h - p);
      __m512 qa[G], qb[G];
#pragma GCC unroll 4
      for (int t = 0; t < G; ++t) {
        qa[t] = _mm512_maskz_loadu_ps(m, q + t * q_ld + p);
        qb[t] = _mm512_maskz_loadu_ps(m, q + t * q_ld + h + p);
      }
#pragma GCC unroll 4
      for (int t = 0; t < G; ++t) __asm__("" : "+v"(qa[t]), "+v"(qb[t]));
#pragma GCC unroll 4
      for (int x = 0; x < 4; ++x) {
        __m512 ka = key(x, p, m), kb = key(x, h + p, m);
        __m512 cv = _mm512_load_ps(cs + 32 * x), sv = _mm512_load_ps(cs + 32 * x + 16);
        __asm__("" : "+v"(ka), "+v"(kb), "+v"(cv), "+v"(sv));  // loaded once: see pin
        const __m512 ra = _mm512_fmsub_ps(ka, cv, _mm512_mul_ps(kb, sv));
        const __m512 rb = _mm512_fmadd_ps(ka, sv, _mm512_mul_ps(kb, cv));
#pragma GCC unroll 4
        for (int t = 0; t < G; ++t) {
          a[0][t][x] = _mm512_fmadd_ps(qa[t], ra, a[0][t][x]);
          a[A - 1][t][x] = _mm512_fmadd_ps(qb[t], rb, a[A - 1][t][x]);
        }
      }
    }
  }
  for (Index v = r; v < L; v += 16) {  // the unrotated rest of a partially rotated head
    const __mmask16 m = tail_mask(L - v);
#pragma GCC unroll 4
    for (int x = 0; x < 4; ++x) {
      const __m512 kv = key(x, v, m);
#pragma GCC unroll 4
      for (int t = 0; t < G; ++t)
        a[0][t][x] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + t * q_ld + v), kv, a[0][t][x]);
    }
  }
  if constexpr (A == 2)
#pragma GCC unroll 4
    for (int t = 0; t < G; ++t)
#pragma GCC unroll 4
      for (int x = 0; x < 4; ++x) a[0][t][x] = _mm512_add_ps(a[0][t][x], a[1][t][x]);
#pragma GCC unroll 4
  for (int t = 0; t < G; ++t)
    _mm_storeu_ps(S + t * ldS, hsum4(a[0][t][0], a[0][t][1], a[0][t][2], a[0][t][3]));
}

/// sc.cs (as dots_4keys_rotated reads it) for the keys at positions m0 + x, x < count <= 4; keys
/// past count repeat the last one.
inline void rotated_lanes_4(const RopeTable& rope, Index m0, Index count, float sign,
                            RotatedKeysScratch& sc) {
  const Index steps = (rope.lanes() + 15) / 16;
  if (sc.cs.size() < static_cast<size_t>(steps * 128))
    sc.cs.resize(static_cast<size_t>(steps * 128));
  for (Index x = 0; x < 4; ++x)
    rope.at_lanes(m0 + std::min(x, count - 1), sign, sc.cs.data() + 32 * x,
                  sc.cs.data() + 32 * x + 16, 128);
}

#endif

/// out (count x groups*L floats, out_ld apart) = rows (ld apart) with every L-value segment's
/// first rope.rotary_dim() values rotated by sign * (m0 + x) theta (x the row). next (may be
/// null): `count` rows of the next tile (ld apart), prefetched into L2 row by row as this runs.
template <class T>
inline void rotate_rows(const T* rows, Index ld, Index count, const RopeTable& rope, Index m0,
                        float sign, Index groups, Index L, float* out, Index out_ld, const T* next,
                        RotatedKeysScratch& sc) {
  const Index r = rope.rotary_dim(), padded = (rope.lanes() + 15) / 16 * 16;
  if (sc.c.size() < static_cast<size_t>(padded)) {
    sc.c.resize(static_cast<size_t>(padded));
    sc.s.resize(static_cast<size_t>(padded));
  }
  const float* c = sc.c.data();
  const float* s = sc.s.data();
  const bool interleaved = rope.layout() == RopeLayout::interleaved;
  const Index row_bytes = ld * static_cast<Index>(sizeof(T));
  for (Index x = 0; x < count; ++x) {
#ifdef TTX_DECODE_AVX512
    if (next)
      for (Index o = 0; o < row_bytes; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(next + x * ld) + o, _MM_HINT_T1);
#else
    (void)next;
    (void)row_bytes;
#endif
    rope.at_lanes(m0 + x, sign, sc.c.data(), sc.s.data(), 16);
    for (Index g = 0; g < groups; ++g) {
      const T* k = rows + x * ld + g * L;
      float* o = out + x * out_ld + g * L;
#ifdef TTX_DECODE_AVX512
      if (interleaved) {
        for (Index v = 0; v < r; v += 16) {
          const __mmask16 m = tail_mask(r - v);
          const __m512 kv = load16(k + v, m);
          const __m512 sw = _mm512_maskz_permute_ps(0xFFFF, kv, 0xB1);  // see hsum4
          _mm512_mask_storeu_ps(o + v, m,
                                _mm512_fmadd_ps(kv, _mm512_loadu_ps(c + v),
                                                _mm512_mul_ps(sw, _mm512_loadu_ps(s + v))));
        }
      } else {
        const Index h = r / 2;
        for (Index p = 0; p < h; p += 16) {
          const __mmask16 m = tail_mask(h - p);
          const __m512 ka = load16(k + p, m), kb = load16(k + h + p, m);
          const __m512 cv = _mm512_loadu_ps(c + p), sv = _mm512_loadu_ps(s + p);
          _mm512_mask_storeu_ps(o + p, m, _mm512_fmsub_ps(ka, cv, _mm512_mul_ps(kb, sv)));
          _mm512_mask_storeu_ps(o + h + p, m, _mm512_fmadd_ps(ka, sv, _mm512_mul_ps(kb, cv)));
        }
      }
      for (Index v = r; v < L; v += 16) {
        const __mmask16 m = tail_mask(L - v);
        _mm512_mask_storeu_ps(o + v, m, load16(k + v, m));
      }
#else
      if (interleaved) {
        for (Index v = 0; v < r; ++v) o[v] = to_float(k[v]) * c[v] + to_float(k[v ^ 1]) * s[v];
      } else {
        const Index h = r / 2;
        for (Index p = 0; p < h; ++p) {
          const float a = to_float(k[p]), b = to_float(k[p + h]);
          o[p] = a * c[p] - b * s[p];
          o[p + h] = a * s[p] + b * c[p];
        }
      }
      for (Index v = r; v < L; ++v) o[v] = to_float(k[v]);
#endif
    }
  }
}

/// S[i * ldS + jj] = dot(q_i, key row jj's segment g(i) (columns [g L, (g + 1) L), g = i / hg)
/// rotated by sign * (j0 + jj) theta on its first rope.rotary_dim() values) for jj < b. Every
/// segment is one RoPE head (L = head_dim). Four keys at a time: their cos/sin lanes (shared by
/// all heads) are formed once, and each segment is loaded and rotated once for the up to four
/// query heads of its group. Writes S up to column round_up(b, 4) (the caller's padding).
template <class T>
inline void tile_scores_rotated(const float* q, Index q_ld, Index groups, Index hg, const T* rows,
                                Index ld, Index L, Index b, float* S, Index ldS,
                                const RopeTable& rope, Index j0, float sign,
                                RotatedKeysScratch& sc) {
  const Index w = groups * L;
#ifdef TTX_DECODE_AVX512
  const Index r = rope.rotary_dim();
  const bool interleaved = rope.layout() == RopeLayout::interleaved;
#endif
  for (Index jj = 0; jj < b; jj += 4) {
    const Index bb = std::min<Index>(4, b - jj);
#ifdef TTX_DECODE_AVX512
    rotated_lanes_4(rope, j0 + jj, bb, sign, sc);
    // The rows two blocks ahead, into L1. The next-tile prefetch of the product pass does not
    // bring the whole tile in ahead of this pass, and with ~3x the plain pass's instructions per
    // key the core keeps fewer misses in flight on its own. Measured against no prefetch here (n
    // 16384, 2 threads, flushed, median of 15; same process, then builds run back to back):
    // head_dim 128 f32 h 4 0.72-0.80x the time, h 8 0.93-1.0x, bf16 h 4 0.68-1.0x, h 8
    // 0.86-0.92x; head_dim 64 0.58-0.88x. 4 and 16 rows ahead about the same, 32 worse, into L2
    // (T1) less; the plain score pass gains little from it (f32 h 4 0.92x, h 8 1.0x).
    for (Index x = jj + 8; x < std::min(b, jj + 12); ++x)
      for (Index o = 0; o < w * static_cast<Index>(sizeof(T)); o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(rows + x * ld) + o, _MM_HINT_T0);
    // A short last block runs on a copy of its keys, the last repeated (their scores land in the
    // padding).
    const T* keys = rows + jj * ld;
    Index kld = ld;
    if (bb < 4) {
      static thread_local std::vector<T> tail;
      if (tail.size() < static_cast<size_t>(4 * w)) tail.resize(static_cast<size_t>(4 * w));
      T* copy = tail.data();
      for (Index x = 0; x < 4; ++x) std::copy_n(keys + std::min(x, bb - 1) * ld, w, copy + x * w);
      keys = copy;
      kld = w;
    }
    for (Index g = 0; g < groups; ++g) {
      const float* qg = q + g * hg * q_ld;
      float* Sg = S + g * hg * ldS + jj;
      for (Index t = 0; t < hg; t += 4)
        with_block_of_4(hg - t, [&](auto G) {
          constexpr int kG = decltype(G)::value;
          if (interleaved)
            dots_4keys_rotated<kG, true>(qg + t * q_ld, q_ld, keys + g * L, kld, L, r, sc.cs.data(),
                                         Sg + t * ldS, ldS);
          else
            dots_4keys_rotated<kG, false>(qg + t * q_ld, q_ld, keys + g * L, kld, L, r,
                                          sc.cs.data(), Sg + t * ldS, ldS);
        });
    }
#else
    // Portable: rotate the block's keys into a small buffer, then the plain dots.
    if (sc.rows.size() < static_cast<size_t>(4 * w)) sc.rows.resize(static_cast<size_t>(4 * w));
    rotate_rows(rows + jj * ld, ld, bb, rope, j0 + jj, sign, groups, L, sc.rows.data(), w,
                static_cast<const T*>(nullptr), sc);
    tile_scores(q, q_ld, groups, hg, sc.rows.data(), w, L, bb, S + jj, ldS);
#endif
  }
}

}  // namespace ttx::kernel::detail
