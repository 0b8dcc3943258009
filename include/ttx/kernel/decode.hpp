// Streaming decode kernels: one new query token against n cached rows (SPEC.md §1).
//   decode_vanilla        head_i = softmax(scale q_i K_g(i)^T + bias_i) V_g(i)      (KV cache)
//   decode_weighted_keys  U = S K, S_i = softmax(scale q_i K_g(i)^T + bias_i)       (slim K cache)
//   decode_weighted_rows  U = S X, S_i = softmax(scale Qt_i X^T + bias_i)           (X / encoder
//   cache)
//   decode_heads_from_weighted  head_i = U_i W[:, g(i)]  (slim's second half: W = W_KV or W_V)
// Cache row j is the token at position j.
//
// How (PERF-NOTES.md): the cache is streamed once. Threads take contiguous key ranges; each walks
// its range in tiles of a few hundred keys sized for L2. Per tile it computes every head's scores
// from the tile (token-major rows hold all heads contiguously; raw keys are rotated in registers
// when asked, detail/rotated_keys.hpp), updates an online (running-max) softmax, and accumulates
// the tile's P (h x tile) * K (tile x w) with a register-blocked AVX-512 kernel while the tile is
// still in cache (keys cached rotated are first un-rotated into a float buffer for it). Partial
// results merge with a log-sum-exp rescale at the end.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/row_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/softmax.hpp"
#include "ttx/core/types.hpp"
#include "ttx/kernel/detail/decode_simd.hpp"
#include "ttx/kernel/detail/rope_table.hpp"
#include "ttx/kernel/detail/rotated_keys.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ttx::kernel {

/// How cached keys relate to the keys the scores and the weighted sum need.
enum class KeyRotation {
  none,            ///< keys used as stored (no RoPE, or vanilla's already-rotated keys)
  rotate_on_read,  ///< cache holds raw keys: scores rotate key j by +j*theta, the sum uses raw keys
  unrotate_on_read,  ///< cache holds rotated keys: scores use them, the sum un-rotates by -j*theta
};

struct DecodeOptions {
  double scale = 0;                ///< score scale; 0 -> 1/sqrt(head_dim)
  const RopeSpec* rope = nullptr;  ///< required by rotate/unrotate (first r dims of each KV head)
  KeyRotation rotation = KeyRotation::none;
  int threads = 0;                    ///< 0 -> all hardware threads (OpenMP), 1 -> single thread
  Index tile = 0;                     ///< keys per tile, 0 -> auto (sized for L1/L2)
  const float* score_bias = nullptr;  ///< optional additive bias, h x n row-major (-inf allowed)
};

namespace detail {

/// shape.validate(fn), without its message formatting unless something is wrong.
inline void check_shape_valid(const char* fn, const AttentionShape& s) {
  if (!(s.d > 0 && s.heads > 0 && s.head_dim > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0))
    s.validate(fn);
}

inline void check_rotation(const char* fn, const DecodeOptions& opt, Index head_dim) {
  if (opt.rotation == KeyRotation::none) return;
  ttx::detail::require(
      opt.rope != nullptr, ErrorKind::shape, fn,
      "opt.rope expected a RopeSpec for rotate_on_read/unrotate_on_read, got nullptr");
  const RopeSpec& r = *opt.rope;
  if (!(r.rotary_dim >= 0 && r.rotary_dim % 2 == 0 && r.rotary_dim <= head_dim &&
        (r.inv_freq.empty() ? r.base > 0 : static_cast<Index>(r.inv_freq.size()) == r.pairs())))
    r.validate(fn, head_dim);
}

inline void check_common(const char* fn, Index n, const DecodeOptions& opt) {
  ttx::detail::require(n > 0, ErrorKind::shape, fn,
                       "cache size expected > 0 rows, got 0 (decode needs a key)");
  ttx::detail::require(opt.tile >= 0, ErrorKind::shape, fn, "opt.tile expected >= 0, got ",
                       opt.tile);
  ttx::detail::require(opt.threads >= 0, ErrorKind::shape, fn, "opt.threads expected >= 0, got ",
                       opt.threads);
}

/// What one streaming pass computes. Scores: query head i (at q + i*q_ld, L values) belongs to
/// group g = i / hg and is dotted with columns [g*L, (g+1)*L) of the score rows. Sums: with
/// per_group, group g's heads weight columns [g*L, (g+1)*L) of the value rows (vanilla);
/// otherwise every head weights all sum_cols columns of the key rows (slim, inputs form).
struct Stream {
  Index n = 0, heads = 0;
  const float* q = nullptr;
  Index q_ld = 0, groups = 0, hg = 0, L = 0;
  float scale = 1;
  const float* bias = nullptr;               ///< heads x n
  KeyRotation rotation = KeyRotation::none;  ///< none when RoPE rotates nothing (rotary_dim 0)
  const RopeTable* rope = nullptr;           ///< set whenever rotation is not none
  Index head_dim = 0, rot_cols = 0;          ///< rotation acts on whole heads within [0, rot_cols)
  bool per_group = false;
  Index sum_cols = 0;  ///< output values per head

  /// Slim's K cache read as cached: all-heads sums over the score rows (not the inputs form,
  /// where scores use whole rows), no RoPE. The prefetch split and the 64 KB tile apply here.
  bool slim_keys_as_cached() const {
    return !per_group && rotation == KeyRotation::none && L < sum_cols;
  }
};

/// Per-thread working memory, kept between calls so the hot path does not allocate.
struct Scratch {
  std::vector<float, Eigen::aligned_allocator<float>> S;  // aligned for Eigen's vectorised exp
  std::vector<float> R, C, m, l, alpha;                   // R: a tile's un-rotated keys
  std::vector<float> heads;  // decode_heads_from_weighted's partial heads
  RotatedKeysScratch rotated;
};
inline Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}
template <class V>
inline void grow(V& v, Index size) {
  if (static_cast<Index>(v.size()) < size) v.resize(static_cast<size_t>(size));
}

/// One thread's pass over keys [lo, hi): C (heads x sum_cols) = sum_j exp(s_ij - m_i) row_j,
/// l_i = sum_j exp(s_ij - m_i), m_i the running max (-inf while every score is masked).
template <class T>
void stream_range(const Stream& s, const T* K, Index ldk, const T* V, Index ldv, Index lo, Index hi,
                  Index B, Scratch& sc) {
  const Index h = s.heads, oc = s.sum_cols;
  const Index ldS = (B + 15) / 16 * 16;  // 64-byte aligned head rows
  grow(sc.S, h * ldS);
  grow(sc.C, h * oc);
  grow(sc.m, h);
  grow(sc.l, h);
  grow(sc.alpha, h);
  const bool unrotating = s.rotation == KeyRotation::unrotate_on_read;
  if (unrotating) grow(sc.R, B * s.rot_cols);
  // Slim and the inputs form read one array twice per tile, scores then sum. The product
  // prefetches the next tile, except that for slim keys used as cached with few heads (h <= 4:
  // few operations per byte, the stream is memory-bound) the score pass takes the first rows of
  // it: twice its share of the operations, L / (L + w) (a score term costs about twice a product
  // term: reductions, 4-key blocks). Measured against all by the product (n 16384, alternating
  // builds): f32 MHA h 2-4 0.69-0.96x the time on 1 and 2 threads (one run of 12: 1.09x), bf16
  // 0.80-1.07x; with h 6-8 the split measured 1.03-1.15x on one thread. Vanilla's score pass
  // prefetches all of the next tile's keys (below).
  const Index score_rows = s.per_group ? B
                           : s.slim_keys_as_cached() && h <= 4
                               ? std::min(B, 2 * B * s.L / (s.L + oc))
                               : 0;
  float* C = sc.C.data();
  float* S = sc.S.data();
  std::fill(C, C + h * oc, 0.0f);
  std::fill(sc.m.data(), sc.m.data() + h, -std::numeric_limits<float>::infinity());
  std::fill(sc.l.data(), sc.l.data() + h, 0.0f);
  for (Index j0 = lo; j0 < hi; j0 += B) {
    const Index b = std::min(B, hi - j0);
    const T* Kt = K + j0 * ldk;
    // The next (full) tile is prefetched into L2 while this one computes, by the passes over
    // this tile, so that requests go out during the whole tile (see score_rows above).
    // Vanilla: its keys by the score pass, its values by the product. With both issued by the
    // product the stream idled through each score pass; measured against that (n 16384, 320 MB
    // cycle, alternating builds): bf16 MHA 0.56-0.97x the time on one thread (head_dim 64:
    // 0.56-0.86x), 0.65-1.01x on two; f32 0.84-1.06x (two threads 0.64-1.08x); GQA 0.60-0.89x.
    // Keys un-rotated into R first: by that pass (the product then reads R, not the cache).
    const bool next_full = j0 + 2 * B <= hi;
    const T* Kn = next_full ? Kt + B * ldk : nullptr;
    if (unrotating)  // the tile's first rot_cols columns, un-rotated (-j theta) for the sum
      rotate_rows(Kt, ldk, b, *s.rope, j0, -1.0f, s.rot_cols / s.head_dim, s.head_dim, sc.R.data(),
                  s.rot_cols, Kn, sc.rotated);
    // Scores, head-major (S[i * ldS + jj]); rows past b and the padding stay -inf so the softmax
    // statistics and the vectorised exp can run over whole, aligned rows.
    if (s.rotation == KeyRotation::rotate_on_read)
      tile_scores_rotated(s.q, s.q_ld, s.groups, s.hg, Kt, ldk, s.L, b, S, ldS, *s.rope, j0, 1.0f,
                          sc.rotated);
    else
      tile_scores(s.q, s.q_ld, s.groups, s.hg, Kt, ldk, s.L, b, S, ldS,
                  Kn ? reinterpret_cast<const char*>(Kn) : nullptr,
                  score_rows * ldk * static_cast<Index>(sizeof(T)));
    for (Index i = 0; i < h; ++i) {
      float* Si = S + i * ldS;
      std::fill(Si + b, Si + ldS, -std::numeric_limits<float>::infinity());
      Eigen::Map<Eigen::ArrayXf, Eigen::AlignedMax> a(Si, ldS);
      Eigen::Map<Eigen::ArrayXf> live(Si, b);
      live *= s.scale;
      if (s.bias) live += Eigen::Map<const Eigen::ArrayXf>(s.bias + i * s.n + j0, b);
      const float m_new = std::max(sc.m[static_cast<size_t>(i)], live.maxCoeff());
      // Until some score is finite, subtract 0: exp(-inf) = 0 keeps C and l at zero (no NaN).
      const float m_use = m_new == -std::numeric_limits<float>::infinity() ? 0.0f : m_new;
      const float alpha = std::exp(sc.m[static_cast<size_t>(i)] - m_use);
      a = (a - m_use).exp();
      sc.l[static_cast<size_t>(i)] = sc.l[static_cast<size_t>(i)] * alpha + a.sum();
      sc.m[static_cast<size_t>(i)] = m_new;
      sc.alpha[static_cast<size_t>(i)] = alpha;
    }
    const float* alpha = sc.alpha.data();
    // The product's prefetch goes slab by slab, or for MHA in address order (the heads' slices of
    // a row are far apart there).
    const T* Vn = next_full && s.per_group ? V + (j0 + B) * ldv : nullptr;
    if (s.per_group && s.hg == 1) {  // MHA: every head has its own key and value segment
      tile_product_heads(S, ldS, h, b, V + j0 * ldv, ldv, s.L, C, oc, alpha, Vn);
    } else if (s.per_group) {
      for (Index g = 0; g < s.groups; ++g)
        tile_product(S + g * s.hg * ldS, ldS, s.hg, b, V + j0 * ldv + g * s.L, ldv, s.L,
                     C + g * s.hg * oc, oc, alpha + g * s.hg, Vn ? Vn + g * s.L : Vn);
    } else if (unrotating) {
      tile_product(S, ldS, h, b, sc.R.data(), s.rot_cols, s.rot_cols, C, oc, alpha);
      if (oc > s.rot_cols)
        tile_product(S, ldS, h, b, Kt + s.rot_cols, ldk, oc - s.rot_cols, C + s.rot_cols, oc,
                     alpha);
    } else {
      tile_product(S, ldS, h, b, Kt, ldk, oc, C, oc, alpha, Kn, score_rows);
    }
  }
}

inline int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

/// Keys per tile: opt.tile, or automatic. The tile is read twice (scores, then the weighted sum),
/// and every tile rescales and rewrites the accumulator C (acc_rows x row values).
/// - ~192 KB of rows keeps the tile in L2 while the next one is prefetched: the stream (vanilla,
///   acc_rows 0, C small).
/// - For the all-heads sums (slim, inputs form; acc_rows = h) C is h x w, as large as 2h key rows
///   of traffic, so a tile needs >= 8h keys to keep that under a quarter (measured, f32 n 16384 2
///   threads: h 32 tile 16 -> 256 went 55 -> 25 ms; h 16, 16 -> 128: 13.7 -> 6.5 ms).
/// - When those 8h keys fit in L1 (48 KB), a tile of 8h keys (at least 16 KB) beats the L2 tile:
///   the score pass reads L1 at ~1.7x its speed from L2 (f32 h 4 dk 128: 49 against 82 cycles per
///   4 keys and head). Measured against the L2 tile (same process, n 16384, 192 MB flush before
///   each call, median of 25, 1 and 2 threads): h 4 head_dim 64 bf16 0.72-0.88x, f32 0.79-0.98x;
///   h 2 and h 6 (bf16) 0.72-1.04x; h 4 head_dim 128 bf16 0.95-0.97x. Where they do not fit
///   (h 4 head_dim 128 f32, h >= 8) the smaller tile measured 0.93-1.05x, so the L2 tile stays.
///   Since session 10's prefetch schedule (stream_range), slim's float keys used as cached take
///   the 8h-key tile up to 64 KB (l1_bytes; 320 MB cycle, alternating, n 4096-32768): f32 h 4
///   head_dim 128 (tile 96 -> 32) 0.86-0.96x the time on 1 and 2 threads, h 5 head_dim 64
///   (160 -> 48) 0.92-0.98x; bf16 tiles of 49-64 KB measured 0.96-1.03x at n 16384 (h 5
///   head_dim 128, h 7 and h 8 head_dim 64), so 48 KB there.
/// - Un-rotating writes each key's rotated columns again, as floats (buffer_bytes per row), and
///   the product reads that buffer: the L2 tile counts it, and its floor is 4h keys. Measured
///   against the rule without it (same process, n 16384, head_dim 128, 2 threads, flushed, median
///   of 15): f32 h 4 (tile 96 -> 48) 0.84x the time, f32 h 8 (64 -> 32) 0.82x, bf16 h 8 (96 -> 32)
///   0.92x; bf16 h 4 keeps its L1 tile of 32.
/// Then no larger than one tile per thread needs.
inline Index resolve_tile(Index requested, Index row_bytes, Index acc_rows, Index n, int threads,
                          Index buffer_bytes = 0, Index l1_bytes = Index(48) << 10) {
  if (requested > 0) return requested;
  const Index bytes = std::max<Index>(1, row_bytes);
  const bool l1_tile = acc_rows > 0 && 8 * acc_rows * bytes <= l1_bytes;
  const Index cache_rows =
      l1_tile ? (Index(16) << 10) / bytes : (Index(192) << 10) / (bytes + buffer_bytes);
  const Index floor = (l1_tile || buffer_bytes == 0 ? 8 : 4) * acc_rows;
  const Index per_thread = (n + threads - 1) / std::max(1, threads);
  const Index rows = std::min(std::max(cache_rows, floor), per_thread);
  return std::clamp<Index>((rows + 15) / 16 * 16, 16, 512);
}

struct Partial {
  const float *C = nullptr, *m = nullptr, *l = nullptr;
};

/// Runs the pass over all n keys on up to `threads` threads and writes head i's normalised
/// result (sum_cols values) to out + i * out_ld.
template <class T>
void run_stream(const Stream& s, const T* K, Index ldk, const T* V, Index ldv, Index B, int threads,
                float* out, Index out_ld) {
  const Index tiles = (s.n + B - 1) / B;
  const int nt = static_cast<int>(std::min<Index>(threads, tiles));
  const Index h = s.heads, oc = s.sum_cols;
  Partial parts[64];
  int used = 1;
  if (nt <= 1) {
    Scratch& sc = thread_scratch();
    stream_range(s, K, ldk, V, ldv, 0, s.n, B, sc);
    parts[0] = {sc.C.data(), sc.m.data(), sc.l.data()};
  } else {
#ifdef _OPENMP
    const int want = std::min(nt, 64);
#pragma omp parallel num_threads(want)
    {
      const int t = omp_get_thread_num(), count = omp_get_num_threads();
      const Index lo = tiles * t / count * B, hi = std::min(s.n, tiles * (t + 1) / count * B);
      Scratch& sc = thread_scratch();
      stream_range(s, K, ldk, V, ldv, lo, hi, B, sc);
      parts[t] = {sc.C.data(), sc.m.data(), sc.l.data()};
      if (t == 0) used = count;
    }
#endif
  }
  // Log-sum-exp merge: out_i = sum_t e^(m_ti - M_i) C_ti / sum_t e^(m_ti - M_i) l_ti.
  for (Index i = 0; i < h; ++i) {
    float M = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < used; ++t) M = std::max(M, parts[t].m[i]);
    Eigen::Map<Eigen::RowVectorXf> o(out + i * out_ld, oc);
    if (M ==
        -std::numeric_limits<float>::infinity()) {  // every key masked: zeros, as stable_softmax
      o.setZero();
      continue;
    }
    float denom = 0;
    o.setZero();
    for (int t = 0; t < used; ++t) {
      const float w = std::exp(parts[t].m[i] - M);
      denom += w * parts[t].l[i];
      o += w * Eigen::Map<const Eigen::RowVectorXf>(parts[t].C + i * oc, oc);
    }
    o /= denom;
  }
}

/// The score half of a Stream: `heads` queries at q (q_ld apart) in `groups` groups of hg, each
/// dotted with L columns of its group's key segment.
inline Stream score_stream(Index n, Index heads, const float* q, Index q_ld, Index groups, Index L,
                           float scale, const float* bias) {
  Stream s;
  s.n = n;
  s.heads = heads;
  s.q = q;
  s.q_ld = q_ld;
  s.groups = groups;
  s.hg = heads / groups;
  s.L = L;
  s.scale = scale;
  s.bias = bias;
  return s;
}

/// All-heads sum over the rows themselves (slim K cache, X / encoder cache): U (heads x w) = S
/// rows. Writes U in place when its rows are contiguous, else through one temporary.
template <class T>
void run_all_heads(const Stream& s, const T* rows, Index w, const DecodeOptions& opt,
                   Eigen::Ref<RowMatrix<float>> U) {
  const int threads = resolve_threads(opt.threads);
  const bool unrotating = s.rotation == KeyRotation::unrotate_on_read;
  const bool slim_float_as_cached = sizeof(T) == sizeof(float) && s.slim_keys_as_cached();
  const Index B = resolve_tile(opt.tile, w * static_cast<Index>(sizeof(T)), s.heads, s.n, threads,
                               unrotating ? s.rot_cols * static_cast<Index>(sizeof(float)) : 0,
                               Index(slim_float_as_cached ? 64 : 48) << 10);
  if (U.outerStride() == w) {
    run_stream(s, rows, w, rows, w, B, threads, U.data(), w);
  } else {
    RowMatrix<float> tmp(s.heads, w);
    run_stream(s, rows, w, rows, w, B, threads, tmp.data(), w);
    U = tmp;
  }
}

}  // namespace detail

/// Vanilla decode over a KV cache: out (1 x h*dk) = concat_i softmax(scale q_i K_g(i)^T + bias_i)
/// V_g(i), g(i) = shape.kv_head_of(i); MHA, GQA, MQA. q (1 x h*dk) is the projected, rotated query;
/// cache keys are used as stored (opt.rotation must be none: a KV cache holds rotated keys).
/// opt.score_bias, if given, is h x n row-major (n = cache.size()).
/// Example: kernel::decode_vanilla(q, cache, shape, {}, out);
template <class T>
void decode_vanilla(Eigen::Ref<const RowVector<float>> q, const KVCache<T>& cache,
                    const AttentionShape& shape, const DecodeOptions& opt,
                    Eigen::Ref<RowVector<float>> out) {
  const char* fn = "kernel::decode_vanilla";
  detail::check_shape_valid(fn, shape);
  ttx::detail::require(cache.shape() == shape, ErrorKind::shape, fn,
                       "cache.shape() expected the shape argument (heads ", shape.heads,
                       ", kv_heads ", shape.kv_heads, ", head_dim ", shape.head_dim,
                       "), got heads ", cache.shape().heads, ", kv_heads ", cache.shape().kv_heads,
                       ", head_dim ", cache.shape().head_dim);
  detail::check_common(fn, cache.size(), opt);
  ttx::detail::check_dim(fn, "q.cols() (= heads*head_dim)", shape.q_width(), q.cols());
  ttx::detail::check_dim(fn, "out.cols() (= heads*head_dim)", shape.q_width(), out.cols());
  ttx::detail::require(opt.rotation == KeyRotation::none, ErrorKind::shape, fn,
                       "opt.rotation expected KeyRotation::none (a KV cache holds rotated keys)");
  const Index e = shape.kv_width(), dk = shape.head_dim;
  detail::Stream s = detail::score_stream(
      cache.size(), shape.heads, q.data(), dk, shape.kv_heads, dk,
      static_cast<float>(opt.scale != 0 ? opt.scale : shape.default_scale()), opt.score_bias);
  s.per_group = true;
  s.sum_cols = dk;
  const int threads = detail::resolve_threads(opt.threads);
  const Index B =
      detail::resolve_tile(opt.tile, 2 * e * static_cast<Index>(sizeof(T)), 0, s.n, threads);
  detail::run_stream(s, cache.keys().data(), e, cache.values().data(), e, B, threads, out.data(),
                     dk);
}

/// Slim attention's core (SPEC.md §1, option 2): U (h x w) = S K with
/// S_i = softmax(scale q_i K[:, g(i)*dk:(g(i)+1)*dk]^T + bias_i) over the n cached rows K (n x w),
/// w = keys.width() >= e = shape.kv_width(). Scores use head g(i)'s columns within the first e;
/// the weighted sum uses all w columns, (un-)rotated per opt.rotation (first e columns only).
/// Then head_i = U_i W_KV,i. q is 1 x h*dk (projected, biased, rotated); opt.score_bias h x n.
/// Example: kernel::decode_weighted_keys(q, kcache, shape, {0, &rope, rotate_on_read}, U);
template <class T>
void decode_weighted_keys(Eigen::Ref<const RowVector<float>> q, const RowCache<T>& keys,
                          const AttentionShape& shape, const DecodeOptions& opt,
                          Eigen::Ref<RowMatrix<float>> U) {
  const char* fn = "kernel::decode_weighted_keys";
  detail::check_shape_valid(fn, shape);
  detail::check_common(fn, keys.size(), opt);
  detail::check_rotation(fn, opt, shape.head_dim);
  const Index e = shape.kv_width(), w = keys.width(), dk = shape.head_dim;
  ttx::detail::require(w >= e, ErrorKind::shape, fn, "keys.width() expected >= kv_width=", e,
                       ", got ", w);
  ttx::detail::check_dim(fn, "q.cols() (= heads*head_dim)", shape.q_width(), q.cols());
  ttx::detail::check_shape(fn, "U", U, shape.heads, w);
  detail::Stream s = detail::score_stream(
      keys.size(), shape.heads, q.data(), dk, shape.kv_heads, dk,
      static_cast<float>(opt.scale != 0 ? opt.scale : shape.default_scale()), opt.score_bias);
  s.head_dim = dk;
  s.rot_cols = e;
  s.sum_cols = w;
  if (opt.rotation != KeyRotation::none && opt.rope->rotary_dim > 0) {
    s.rotation = opt.rotation;
    detail::RopeTable& table = detail::thread_rope_table();
    table.prepare(*opt.rope, s.n);
    s.rope = &table;
  }
  detail::run_all_heads(s, keys.data(), w, opt, U);
}

/// Inputs form (X cache, shared encoder cache; SPEC.md §1): per-head queries Qt (h x w) against
/// cached rows X (n x w): S_i = softmax(scale Qt_i X^T + bias_i), U (h x w) = S X. No RoPE
/// (opt.rotation must be none). opt.scale must be given (nonzero): there is no head_dim to default
/// from, so pass the model's 1/sqrt(d_k) (or 1 when it is folded into Qt). opt.score_bias h x n.
/// Example: kernel::decode_weighted_rows(Qt, xcache, {1.0 / std::sqrt(dk)}, U);
template <class T>
void decode_weighted_rows(Eigen::Ref<const RowMatrix<float>> Qt, const RowCache<T>& rows,
                          const DecodeOptions& opt, Eigen::Ref<RowMatrix<float>> U) {
  const char* fn = "kernel::decode_weighted_rows";
  detail::check_common(fn, rows.size(), opt);
  ttx::detail::require(opt.rotation == KeyRotation::none, ErrorKind::shape, fn,
                       "opt.rotation expected KeyRotation::none (the inputs form has no RoPE)");
  ttx::detail::require(
      opt.scale != 0, ErrorKind::shape, fn,
      "opt.scale expected nonzero (no head_dim to default from: pass 1/sqrt(head_dim), or "
      "1 when folded into Qt), got 0");
  const Index w = rows.width();
  ttx::detail::check_dim(fn, "Qt.cols() (= rows.width())", w, Qt.cols());
  ttx::detail::require(Qt.rows() > 0, ErrorKind::shape, fn,
                       "Qt.rows() (= heads) expected > 0, got ", Qt.rows());
  ttx::detail::check_shape(fn, "U", U, Qt.rows(), w);
  detail::Stream s = detail::score_stream(rows.size(), Qt.rows(), Qt.data(), Qt.outerStride(), 1, w,
                                          static_cast<float>(opt.scale), opt.score_bias);
  s.sum_cols = w;
  detail::run_all_heads(s, rows.data(), w, opt, U);
}

/// Slim attention's second half for one token (SPEC.md §1): head_i = U_i W[:, g(i)*dk, (g(i)+1)*dk)
/// into row i of H (h x dk), for U (h x w) from decode_weighted_keys (W = W_KV) or, in the inputs
/// form, from decode_weighted_rows (W = W_V); W is w x e (e = shape.kv_width()). `threads` as in
/// DecodeOptions. From 1 MB of W on, the threads split W's rows: each streams one contiguous block
/// of W into its own partial heads, summed at the end in thread order. Measured as slim decode plus
/// this product (f32 K cache, n 16384, dk 128, 2 threads, same process): 0.96-0.97x the time with
/// the product on one thread at W 1-4 MB (h 4-8), 1.03x at 256 KB (h 2), hence the threshold.
/// Example: kernel::decode_weighted_keys(q, kcache, shape, opt, U);
///          kernel::decode_heads_from_weighted(U, slim.value_map, shape, opt.threads, H);
inline void decode_heads_from_weighted(Eigen::Ref<const RowMatrix<float>> U,
                                       Eigen::Ref<const RowMatrix<float>> W,
                                       const AttentionShape& shape, int threads,
                                       Eigen::Ref<RowMatrix<float>> H) {
  const char* fn = "kernel::decode_heads_from_weighted";
  detail::check_shape_valid(fn, shape);
  const Index h = shape.heads, dk = shape.head_dim, G = shape.group(), w = W.rows();
  ttx::detail::check_shape(fn, "W", W, w, shape.kv_width());
  ttx::detail::check_shape(fn, "U", U, h, w);
  ttx::detail::check_shape(fn, "H", H, h, dk);
  ttx::detail::require(threads >= 0, ErrorKind::shape, fn, "threads expected >= 0, got ", threads);
  // Rows [r0, r1) of W into O (h x dk): one product per KV group.
  auto rows = [&](Index r0, Index r1, auto&& O) {
    for (Index g = 0; g < shape.kv_heads; ++g)
      O.middleRows(g * G, G).noalias() =
          U.block(g * G, r0, G, r1 - r0) * W.block(r0, g * dk, r1 - r0, dk);
  };
  const bool large = static_cast<double>(W.size()) * sizeof(float) >= double(1 << 20);
  const int nt = large ? static_cast<int>(std::min<Index>(
                             {detail::resolve_threads(threads), 64, std::max<Index>(1, w / 64)}))
                       : 1;
  if (nt <= 1) return rows(0, w, H);
#ifdef _OPENMP
  const float* parts[64] = {};
  int used = 1;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), count = omp_get_num_threads();
    auto& buf = detail::thread_scratch().heads;
    detail::grow(buf, h * dk);
    Eigen::Map<RowMatrix<float>> part(buf.data(), h, dk);
    rows(w * t / count, w * (t + 1) / count, part);
    parts[t] = buf.data();
    if (t == 0) used = count;
  }
  H = Eigen::Map<const RowMatrix<float>>(parts[0], h, dk);
  for (int t = 1; t < used; ++t) H += Eigen::Map<const RowMatrix<float>>(parts[t], h, dk);
#endif
}

}  // namespace ttx::kernel
