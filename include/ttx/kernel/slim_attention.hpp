// Slim attention at run time (SPEC.md §1): prefill and decode of one self-attention layer whose
// weights came from rewrite::slim_attention, over a one-row-per-token cache:
//   KCache (CacheForm::keys), VCache (CacheForm::values), XCache (CacheForm::inputs).
//
// Decode, ScoreOrder::weights_first (the default; reads the cache once, in the streaming kernels):
//   keys:   U = S K (h x w) by kernel::decode_weighted_keys, head_i = U_i W_KV[:, g(i)] by
//           kernel::decode_heads_from_weighted
//   values: Qt_i = q_i W_VK[:, g(i)]^T, U = S V by kernel::decode_weighted_rows, head_i = U_i[g(i)]
//   inputs: Qt_i = q_i W_K[:, g(i)]^T,  U = S X by kernel::decode_weighted_rows, head_i = U_i
//   W_V[:, g(i)] by kernel::decode_heads_from_weighted
// ScoreOrder::values_first rebuilds K and V for every cached row (V = K W_KV, ...) and runs
// ordinary attention: 2 n w e extra operations per step, only sensible for tiny n, and an
// independent cross-check of the default order. Prefill always goes values first (V for the
// prompt is computed once from the cached rows) with a causal mask.
//
// Everything runs in float on float weights (SlimAttention<float>); the cache type T is float,
// double, Eigen::bfloat16 or Eigen::half. Scratch lives in a SlimWorkspace the caller keeps, so a
// decode step allocates nothing once the workspace has seen the shape.
#pragma once

#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <vector>

#include "ttx/cache/k_cache.hpp"
#include "ttx/cache/row_cache.hpp"
#include "ttx/cache/v_cache.hpp"
#include "ttx/cache/x_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/softmax.hpp"
#include "ttx/core/types.hpp"
#include "ttx/kernel/decode.hpp"
#include "ttx/rewrite/slim.hpp"

namespace ttx::kernel {

/// The order of the decode step's products.
enum class ScoreOrder {
  weights_first,  ///< S K (or S X) in one streaming pass, then the small per-head maps (default)
  values_first    ///< V = K W_KV (etc.) for every cached row, then ordinary attention (tiny n)
};

/// Additive score bias for prefill: bias(head, query_position, key_position), added to the scaled
/// score (T5 relative bias, ALiBi, masks with -inf). Empty = none.
using ScoreBiasFn = std::function<double(Index head, Index query_pos, Index key_pos)>;

struct SlimDecodeOptions {
  ScoreOrder order = ScoreOrder::weights_first;
  int threads = 0;  ///< passed to the streaming kernel: 0 = all hardware threads
  Index tile = 0;   ///< keys per tile, 0 = kernel's choice
  /// Optional additive score bias, h x n row-major float, n = cached rows including the new
  /// token (the caller owns it; it must hold h * n values).
  const float* score_bias = nullptr;
};

/// Scratch for the slim kernels, reused across steps and layers (one per thread of callers).
/// Buffers grow on first use; reserve() sizes them up front.
class SlimWorkspace {
 public:
  enum Slot { q, rows, u, qt, heads, stored, keys, values, scores, slots };

  /// Sizes every buffer for `slim` with caches of up to `capacity` rows; with
  /// ScoreOrder::values_first also the n-sized ones (capacity x (w + 2e) floats).
  void reserve(const rewrite::SlimAttention<float>& slim, Index capacity,
               ScoreOrder order = ScoreOrder::weights_first) {
    const auto& s = slim.shape;
    const std::size_t w = static_cast<std::size_t>(slim.cached_width),
                      h = static_cast<std::size_t>(s.heads),
                      eq = static_cast<std::size_t>(s.q_width()),
                      e = static_cast<std::size_t>(s.kv_width()),
                      n = static_cast<std::size_t>(capacity);
    buffer(q, eq);
    buffer(rows, w);
    buffer(u, h * w);
    buffer(qt, h * w);
    buffer(heads, eq);
    if (order == ScoreOrder::values_first) {
      buffer(stored, n * w);
      buffer(keys, n * e);
      buffer(values, n * e);
      buffer(scores, n);
    }
    trig(static_cast<std::size_t>(slim.rope.pairs()));
  }
  /// A buffer of at least `count` floats (contents unspecified); grows, never shrinks.
  float* buffer(Slot slot, std::size_t count) {
    auto& b = buf_[slot];
    if (b.size() < count) b.resize(count);
    return b.data();
  }
  /// cos and sin for `pairs` rotary pairs (2 * pairs floats).
  float* trig(std::size_t pairs) { return buffer_trig(2 * pairs); }
  /// Bytes currently held.
  std::size_t bytes() const {
    std::size_t total = trig_.size() * sizeof(float);
    for (const auto& b : buf_) total += b.size() * sizeof(float);
    return total;
  }

 private:
  float* buffer_trig(std::size_t count) {
    if (trig_.size() < count) trig_.resize(count);
    return trig_.data();
  }
  std::vector<float> buf_[slots];
  std::vector<float> trig_;
};

namespace detail {

using rewrite::CacheForm;
using rewrite::SlimAttention;

/// Rotates the first `heads` head segments (width dk) of `row` at position `pos`: the float
/// cos/sin of pos * inv_freq formed once in double, as ttx::rope_rotate_head forms them.
inline void rotate_row(float* row, Index heads, Index dk, const RopeSpec& spec,
                       const std::vector<double>& freqs, double pos, int sign, float* cs) {
  const Index pairs = spec.pairs();
  for (Index j = 0; j < pairs; ++j) {
    const double angle = pos * freqs[static_cast<size_t>(j)];
    cs[2 * j] = static_cast<float>(std::cos(angle));
    cs[2 * j + 1] = static_cast<float>(sign * std::sin(angle));
  }
  for (Index g = 0; g < heads; ++g) {
    float* x = row + g * dk;
    for (Index j = 0; j < pairs; ++j) {
      const auto [a, b] = spec.pair(j);
      const float c = cs[2 * j], s = cs[2 * j + 1];
      const float xa = x[a], xb = x[b];
      x[a] = xa * c - xb * s;
      x[b] = xa * s + xb * c;
    }
  }
}

using RowMap = Eigen::Map<RowMatrix<float>>;
using VecMap = Eigen::Map<RowVector<float>>;

inline void check_layer(const char* fn, const SlimAttention<float>& slim, CacheForm form,
                        const AttentionShape& cache_shape, Index cache_width) {
  slim.validate(fn);
  ttx::detail::require(slim.form == form, ErrorKind::shape, fn, "slim.form expected ",
                       rewrite::name(form), " for this cache type, got ", rewrite::name(slim.form));
  ttx::detail::require(cache_shape == slim.shape, ErrorKind::shape, fn,
                       "cache.shape() expected the slim layer's shape (d ", slim.shape.d,
                       ", heads ", slim.shape.heads, ", kv_heads ", slim.shape.kv_heads,
                       ", head_dim ", slim.shape.head_dim, "), got (d ", cache_shape.d, ", heads ",
                       cache_shape.heads, ", kv_heads ", cache_shape.kv_heads, ", head_dim ",
                       cache_shape.head_dim, ")");
  ttx::detail::check_dim(fn, "cache.width() (= slim.cached_width)", slim.cached_width, cache_width);
}

template <class T>
void check_room(const char* fn, const RowCache<T>& rows, Index count) {
  if (rows.size() + count > rows.capacity())
    ttx::detail::raise(
        ErrorKind::capacity,
        ttx::detail::concat("ttx::", fn, ": cache capacity expected >= ", rows.size() + count,
                            " rows (", rows.size(), " cached + ", count, " new), got capacity ",
                            rows.capacity()));
}

/// Q (p x e_q) = X wq + bq, rotated at positions first_pos + r.
inline void project_queries(const Eigen::Ref<const RowMatrix<float>>& X,
                            const SlimAttention<float>& slim, Index first_pos, RowMap Q,
                            SlimWorkspace& ws) {
  Q.noalias() = X * slim.wq;
  if (slim.bq.size()) Q.rowwise() += slim.bq;
  if (!slim.rope.enabled()) return;
  float* cs = ws.trig(static_cast<std::size_t>(slim.rope.pairs()));
  for (Index r = 0; r < Q.rows(); ++r)
    rotate_row(Q.row(r).data(), slim.shape.heads, slim.shape.head_dim, slim.rope, slim.rope_freqs,
               static_cast<double>(first_pos + r), +1, cs);
}

/// The rows to cache for X (p x d): X cache_proj + cache_bias (rotated keys when asked).
inline void project_rows(const Eigen::Ref<const RowMatrix<float>>& X,
                         const SlimAttention<float>& slim, KeyStorage storage, Index first_pos,
                         RowMap C, SlimWorkspace& ws) {
  C.noalias() = X * slim.cache_proj;
  if (slim.cache_bias.size()) C.rowwise() += slim.cache_bias;
  if (!(slim.rope.enabled() && storage == KeyStorage::rotated)) return;
  float* cs = ws.trig(static_cast<std::size_t>(slim.rope.pairs()));
  for (Index r = 0; r < C.rows(); ++r)
    rotate_row(C.row(r).data(), slim.shape.kv_heads, slim.shape.head_dim, slim.rope,
               slim.rope_freqs, static_cast<double>(first_pos + r), +1, cs);
}

/// Score keys Ks (n x e, rotated) and value rows Vs (n x e, without the folded constant) for
/// every cached row: the "values first" reconstruction.
template <class T>
void reconstruct(const RowCache<T>& rows, const SlimAttention<float>& slim, KeyStorage storage,
                 RowMap Ks, RowMap Vs, SlimWorkspace& ws) {
  const Index n = rows.size(), w = rows.width(), e = slim.shape.kv_width();
  RowMap C(ws.buffer(SlimWorkspace::stored, static_cast<std::size_t>(n * w)), n, w);
  C = rows.view().template cast<float>();
  if (slim.form == CacheForm::keys) {
    Ks = C.leftCols(e);
    if (slim.rope.enabled()) {
      float* cs = ws.trig(static_cast<std::size_t>(slim.rope.pairs()));
      const bool raw = storage == KeyStorage::raw;
      for (Index j = 0; j < n; ++j)  // raw: rotate the score keys; rotated: un-rotate the values'
        rotate_row(raw ? Ks.row(j).data() : C.row(j).data(), slim.shape.kv_heads,
                   slim.shape.head_dim, slim.rope, slim.rope_freqs, static_cast<double>(j),
                   raw ? +1 : -1, cs);
    }
    Vs.noalias() = C * slim.value_map;
  } else {
    Ks.noalias() = C * slim.query_map;
    if (slim.form == CacheForm::values)
      Vs = C.leftCols(e);
    else
      Vs.noalias() = C * slim.value_map;
  }
}

/// Causal attention of Q (p x e_q, rows at positions n - p ...) over Ks, Vs (n x e): H (p x e_q).
template <class Bias>
void attend(const RowMap& Q, const RowMap& Ks, const RowMap& Vs, const SlimAttention<float>& slim,
            const Bias& bias, RowMap H, SlimWorkspace& ws) {
  const auto& s = slim.shape;
  const Index p = Q.rows(), n = Ks.rows(), dk = s.head_dim, first = n - p;
  RowMap S(ws.buffer(SlimWorkspace::scores, static_cast<std::size_t>(p * n)), p, n);
  const float scale = static_cast<float>(slim.scale);
  for (Index i = 0; i < s.heads; ++i) {
    const Index g = s.kv_head_of(i);
    S.noalias() = Q.middleCols(i * dk, dk) * Ks.middleCols(g * dk, dk).transpose();
    S *= scale;
    for (Index r = 0; r < p; ++r) {
      const Index pos = first + r;
      for (Index j = 0; j < n; ++j) {
        if (j > pos)
          S(r, j) = -std::numeric_limits<float>::infinity();
        else
          S(r, j) += bias(i, pos, j);
      }
      stable_softmax(S.row(r));
    }
    H.middleCols(i * dk, dk).noalias() = S * Vs.middleCols(g * dk, dk);
  }
}

/// Y = H wo + bo.
inline void project_out(const RowMap& H, const SlimAttention<float>& slim,
                        Eigen::Ref<RowMatrix<float>> Y) {
  Y.noalias() = H * slim.wo;
  if (slim.bo.size()) Y.rowwise() += slim.bo;
}

/// Appends the projected rows of X (p tokens) to `rows` and attends values first, causally.
template <class T, class Bias>
void values_first(const char* fn, const Eigen::Ref<const RowMatrix<float>>& X,
                  const SlimAttention<float>& slim, RowCache<T>& rows, KeyStorage storage,
                  Eigen::Ref<RowMatrix<float>> Y, SlimWorkspace& ws, const Bias& bias) {
  const auto& s = slim.shape;
  const Index p = X.rows(), n0 = rows.size(), n = n0 + p, e = s.kv_width(), w = rows.width();
  RowMap Q(ws.buffer(SlimWorkspace::q, static_cast<std::size_t>(p * s.q_width())), p, s.q_width());
  project_queries(X, slim, n0, Q, ws);
  if (slim.form == CacheForm::inputs) {
    rows.append(X);
  } else {
    RowMap C(ws.buffer(SlimWorkspace::rows, static_cast<std::size_t>(p * w)), p, w);
    project_rows(X, slim, storage, n0, C, ws);
    rows.append(C);
  }
  try {
    RowMap Ks(ws.buffer(SlimWorkspace::keys, static_cast<std::size_t>(n * e)), n, e);
    RowMap Vs(ws.buffer(SlimWorkspace::values, static_cast<std::size_t>(n * e)), n, e);
    reconstruct(rows, slim, storage, Ks, Vs, ws);
    RowMap H(ws.buffer(SlimWorkspace::heads, static_cast<std::size_t>(p * s.q_width())), p,
             s.q_width());
    attend(Q, Ks, Vs, slim, bias, H, ws);
    project_out(H, slim, Y);
  } catch (...) {
    rows.truncate(n0);
    throw;
  }
  (void)fn;
}

template <class T>
void prefill(const char* fn, const Eigen::Ref<const RowMatrix<float>>& X,
             const SlimAttention<float>& slim, RowCache<T>& rows, KeyStorage storage,
             Eigen::Ref<RowMatrix<float>> Y, SlimWorkspace& ws, const ScoreBiasFn& bias) {
  ttx::detail::check_dim(fn, "X.cols() (= d)", slim.shape.d, X.cols());
  ttx::detail::require(X.rows() > 0, ErrorKind::shape, fn,
                       "X.rows() (prompt tokens) expected > 0, got ", X.rows());
  ttx::detail::check_shape(fn, "Y", Y, X.rows(), slim.shape.d);
  check_room(fn, rows, X.rows());
  if (bias)
    values_first(fn, X, slim, rows, storage, Y, ws,
                 [&](Index h, Index qp, Index kp) { return static_cast<float>(bias(h, qp, kp)); });
  else
    values_first(fn, X, slim, rows, storage, Y, ws, [](Index, Index, Index) { return 0.0f; });
}

template <class T>
void decode(const char* fn, const Eigen::Ref<const RowVector<float>>& x,
            const SlimAttention<float>& slim, RowCache<T>& rows, KeyStorage storage,
            Eigen::Ref<RowVector<float>> y, SlimWorkspace& ws, const SlimDecodeOptions& opt) {
  const auto& s = slim.shape;
  ttx::detail::check_dim(fn, "x.cols() (= d)", s.d, x.cols());
  ttx::detail::check_dim(fn, "y.cols() (= d)", s.d, y.cols());
  ttx::detail::require(opt.threads >= 0, ErrorKind::shape, fn, "opt.threads expected >= 0, got ",
                       opt.threads);
  ttx::detail::require(opt.tile >= 0, ErrorKind::shape, fn, "opt.tile expected >= 0, got ",
                       opt.tile);
  check_room(fn, rows, 1);
  const Index n0 = rows.size(), n = n0 + 1;
  const Eigen::Ref<const RowMatrix<float>> X(x);
  Eigen::Map<RowMatrix<float>> Y(y.data(), 1, s.d);
  if (opt.order == ScoreOrder::values_first) {
    const float* b = opt.score_bias;
    if (b)
      values_first(fn, X, slim, rows, storage, Y, ws,
                   [&](Index h, Index, Index kp) { return b[h * n + kp]; });
    else
      values_first(fn, X, slim, rows, storage, Y, ws, [](Index, Index, Index) { return 0.0f; });
    return;
  }
  const Index dk = s.head_dim, w = rows.width(), h = s.heads, G = s.group();
  RowMap Q(ws.buffer(SlimWorkspace::q, static_cast<std::size_t>(s.q_width())), 1, s.q_width());
  project_queries(X, slim, n0, Q, ws);
  if (slim.form == CacheForm::inputs) {
    rows.append(x);
  } else {
    RowMap C(ws.buffer(SlimWorkspace::rows, static_cast<std::size_t>(w)), 1, w);
    project_rows(X, slim, storage, n0, C, ws);
    rows.append(C);
  }
  try {
    DecodeOptions dopt;
    dopt.scale = slim.scale;
    dopt.threads = opt.threads;
    dopt.tile = opt.tile;
    dopt.score_bias = opt.score_bias;
    RowMap U(ws.buffer(SlimWorkspace::u, static_cast<std::size_t>(h * w)), h, w);
    // heads as an h x dk matrix: row i is head i, and its storage is concat(head_i) (1 x e_q).
    RowMap H(ws.buffer(SlimWorkspace::heads, static_cast<std::size_t>(s.q_width())), h, dk);
    if (slim.form == CacheForm::keys) {
      if (slim.rope.enabled()) {
        dopt.rope = &slim.rope;
        dopt.rotation = storage == KeyStorage::raw ? KeyRotation::rotate_on_read
                                                   : KeyRotation::unrotate_on_read;
      }
      decode_weighted_keys(Eigen::Map<const RowVector<float>>(Q.data(), s.q_width()), rows, s, dopt,
                           U);
    } else {
      // Qt_i = q_i M[:, g(i)]^T, the query heads of one KV head together (M read once).
      const Eigen::Map<const RowMatrix<float>> Qh(Q.data(), h, dk);
      RowMap Qt(ws.buffer(SlimWorkspace::qt, static_cast<std::size_t>(h * w)), h, w);
      for (Index g = 0; g < s.kv_heads; ++g)
        Qt.middleRows(g * G, G).noalias() =
            Qh.middleRows(g * G, G) * slim.query_map.middleCols(g * dk, dk).transpose();
      decode_weighted_rows(Qt, rows, dopt, U);
    }
    if (slim.form == CacheForm::values) {
      for (Index i = 0; i < h; ++i) H.row(i) = U.row(i).segment(s.kv_head_of(i) * dk, dk);
    } else {
      decode_heads_from_weighted(U, slim.value_map, s, opt.threads, H);
    }
    const RowMap Hflat(H.data(), 1, s.q_width());
    project_out(Hflat, slim, Y);
  } catch (...) {
    rows.truncate(n0);
    throw;
  }
}

}  // namespace detail

/// Prefill, CacheForm::keys: appends the keys of the p tokens X (p x d, layer input rows, at
/// positions cache.size()...) to `cache` (raw or rotated per cache.storage()), rebuilds
/// V = K W_KV once for every cached row, attends causally, Y (p x d) = concat(heads) W_O + c*.
/// Preconditions: slim.form == keys, cache.shape() == slim.shape, cache.width() ==
/// slim.cached_width, room for p rows (else CapacityError, cache unchanged).
///   ttx::KCache<float> cache(slim.shape, 4096, ttx::KeyStorage::raw, slim.cached_width);
///   ttx::kernel::SlimWorkspace ws;
///   ttx::kernel::slim_prefill(prompt, slim, cache, Y, ws);   // prompt: p x d
template <class T>
void slim_prefill(Eigen::Ref<const RowMatrix<float>> X, const rewrite::SlimAttention<float>& slim,
                  KCache<T>& cache, Eigen::Ref<RowMatrix<float>> Y, SlimWorkspace& ws,
                  const ScoreBiasFn& bias = {}) {
  const char* fn = "kernel::slim_prefill";
  detail::check_layer(fn, slim, rewrite::CacheForm::keys, cache.shape(), cache.width());
  detail::prefill(fn, X, slim, cache.keys(), cache.storage(), Y, ws, bias);
}

/// Prefill, CacheForm::values: caches V (or V*) rows, scores use K = V W_VK. As above.
///   ttx::VCache<float> cache(slim.shape, 4096, slim.cached_width);
///   ttx::kernel::slim_prefill(prompt, slim, cache, Y, ws);
template <class T>
void slim_prefill(Eigen::Ref<const RowMatrix<float>> X, const rewrite::SlimAttention<float>& slim,
                  VCache<T>& cache, Eigen::Ref<RowMatrix<float>> Y, SlimWorkspace& ws,
                  const ScoreBiasFn& bias = {}) {
  const char* fn = "kernel::slim_prefill";
  detail::check_layer(fn, slim, rewrite::CacheForm::values, cache.shape(), cache.width());
  detail::prefill(fn, X, slim, cache.values(), KeyStorage::raw, Y, ws, bias);
}

/// Prefill, CacheForm::inputs: caches the input rows X themselves; K = X W_K, V = X W_V. As above.
///   ttx::XCache<bf16> cache(slim.shape, 4096);
///   ttx::kernel::slim_prefill(prompt, slim, cache, Y, ws);
template <class T>
void slim_prefill(Eigen::Ref<const RowMatrix<float>> X, const rewrite::SlimAttention<float>& slim,
                  XCache<T>& cache, Eigen::Ref<RowMatrix<float>> Y, SlimWorkspace& ws,
                  const ScoreBiasFn& bias = {}) {
  const char* fn = "kernel::slim_prefill";
  detail::check_layer(fn, slim, rewrite::CacheForm::inputs, cache.shape(), cache.width());
  detail::prefill(fn, X, slim, cache.inputs(), KeyStorage::raw, Y, ws, bias);
}

/// Decode one token, CacheForm::keys: x (1 x d) at position n-1 = cache.size(); appends its key
/// row, then (weights_first) U = S K over all n rows in one streaming pass, RoPE applied on read
/// (raw keys rotated for the scores, or rotated keys un-rotated for the sum, per cache.storage()),
/// head_i = U_i W_KV[:, g(i)], y (1 x d) = concat(heads) W_O + c*. opt.score_bias: h x n.
/// Preconditions as slim_prefill, plus room for one row. Allocates nothing after the first call
/// with this workspace and shape (for values_first: after ws.reserve(slim, capacity, order)).
///   for (int t = 0; t < steps; ++t) ttx::kernel::slim_decode(x, slim, cache, y, ws);
template <class T>
void slim_decode(Eigen::Ref<const RowVector<float>> x, const rewrite::SlimAttention<float>& slim,
                 KCache<T>& cache, Eigen::Ref<RowVector<float>> y, SlimWorkspace& ws,
                 const SlimDecodeOptions& opt = {}) {
  const char* fn = "kernel::slim_decode";
  detail::check_layer(fn, slim, rewrite::CacheForm::keys, cache.shape(), cache.width());
  detail::decode(fn, x, slim, cache.keys(), cache.storage(), y, ws, opt);
}

/// Decode one token, CacheForm::values: Qt_i = q_i W_VK[:, g(i)]^T (1 x w), U = S V in one pass,
/// head_i = U_i[:, g(i) columns]. No RoPE. Otherwise as above.
///   ttx::kernel::slim_decode(x, slim, vcache, y, ws);
template <class T>
void slim_decode(Eigen::Ref<const RowVector<float>> x, const rewrite::SlimAttention<float>& slim,
                 VCache<T>& cache, Eigen::Ref<RowVector<float>> y, SlimWorkspace& ws,
                 const SlimDecodeOptions& opt = {}) {
  const char* fn = "kernel::slim_decode";
  detail::check_layer(fn, slim, rewrite::CacheForm::values, cache.shape(), cache.width());
  detail::decode(fn, x, slim, cache.values(), KeyStorage::raw, y, ws, opt);
}

/// Decode one token, CacheForm::inputs: Qt_i = q_i W_K[:, g(i)]^T (1 x d), U = S X in one pass,
/// head_i = U_i W_V[:, g(i)]. No RoPE; additive position bias via opt.score_bias (h x n).
///   ttx::kernel::slim_decode(x, slim, xcache, y, ws);
template <class T>
void slim_decode(Eigen::Ref<const RowVector<float>> x, const rewrite::SlimAttention<float>& slim,
                 XCache<T>& cache, Eigen::Ref<RowVector<float>> y, SlimWorkspace& ws,
                 const SlimDecodeOptions& opt = {}) {
  const char* fn = "kernel::slim_decode";
  detail::check_layer(fn, slim, rewrite::CacheForm::inputs, cache.shape(), cache.width());
  detail::decode(fn, x, slim, cache.inputs(), KeyStorage::raw, y, ws, opt);
}

}  // namespace ttx::kernel
