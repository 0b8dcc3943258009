// Runtime of the first-layer table (SPEC.md §4): for a batch of token ids, gather their table rows
// [residual | q | k | v] (rewrite/first_layer.hpp), rotate q and k by RoPE at their positions,
// write k and v into the caller's cache in place (KVCache<T>; or keys only, raw or rotated, into
// slim attention's KCache<T> or any RowCache<T> of width e), and hand the rotated q and the
// residual to attention.
// Layer 1's output is then residual + attention(q, cache) W_O + b_O (serial blocks continue with
// their FFN; for parallel blocks the residual already holds x + ffn(norm2(x))).
//
// The vanilla "computed" path (first_layer_compute) does the same from the embedding and layer 1's
// weights, through rewrite::compute_first_layer_rows, the table builder's own kernel: with a float
// table built with TableCompute::working, both paths write bitwise identical outputs.
#pragma once

#include <cmath>
#include <vector>

#include "ttx/cache/k_cache.hpp"
#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/row_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/key_storage.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/types.hpp"
#include "ttx/rewrite/first_layer.hpp"

namespace ttx {
namespace detail {

/// Destinations of one batch: q and residual (float, caller's), k and v rows (cache storage).
template <class TC>
struct FlSink {
  float* q = nullptr;  ///< row r at q + r * ldq
  Index ldq = 0;
  float* residual = nullptr;  ///< row r at residual + r * ldr
  Index ldr = 0;
  TC* k = nullptr;  ///< n x e, contiguous rows
  TC* v = nullptr;  ///< n x e, contiguous rows, or null (keys-only cache)
  bool rotate_k = true;
};

inline void fl_check_outputs(const char* fn, const rewrite::FirstLayerLayout& L, Index n,
                             const Eigen::Ref<RowMatrix<float>>& q,
                             const Eigen::Ref<RowMatrix<float>>& residual) {
  check_shape(fn, "q", q, n, L.q_width);
  check_shape(fn, "residual", residual, n, L.d);
}

inline void fl_check_ids(const char* fn, const std::vector<int>& ids, Index vocab) {
  for (size_t r = 0; r < ids.size(); ++r)
    if (ids[r] < 0 || ids[r] >= vocab)
      raise(ErrorKind::shape,
            concat("ttx::", fn, ": ids[", r, "] expected in [0, ", vocab, "), got ", ids[r]));
}

template <class TC>
inline bool fl_overflowed(TC stored, float source) {
  if constexpr (std::is_same_v<TC, float> || std::is_same_v<TC, double>) {
    (void)stored;
    (void)source;
    return false;
  } else {
    return std::isinf(static_cast<float>(stored)) && std::isfinite(source);
  }
}

/// Rotates `heads` heads of width head_dim in x by the per-pair (cos, sin) of one position.
inline void fl_rotate(float* x, Index heads, Index head_dim, const RopeSpec& rope, const float* c,
                      const float* s) {
  for (Index h = 0; h < heads; ++h) {
    float* y = x + h * head_dim;
    for (Index j = 0; j < rope.pairs(); ++j) {
      const auto [a, b] = rope.pair(j);
      const float xa = y[a], xb = y[b];
      y[a] = xa * c[j] - xb * s[j];
      y[b] = xa * s[j] + xb * c[j];
    }
  }
}

/// Finishes n rows (source scalar S, row r at rows[r]) at positions start + r: residual and q to
/// the caller, rotated q, k (rotated unless raw) and v to the cache rows. NumericalError when a
/// value overflows the cache type (the callers then roll the cache back).
template <class S, class TC>
void fl_finish(const char* fn, const std::vector<const S*>& rows,
               const rewrite::FirstLayerLayout& L, const AttentionConfig& attn, Index start,
               FlSink<TC>& out) {
  const AttentionShape& s = attn.shape;
  const RopeSpec& rope = attn.rope;
  const bool rot = rope.enabled();
  const std::vector<double> freqs = rot ? rope.frequencies() : std::vector<double>();
  std::vector<float> c(freqs.size()), sn(freqs.size()), k(static_cast<size_t>(L.kv_width));
  for (size_t r = 0; r < rows.size(); ++r) {
    const Index ri = static_cast<Index>(r);
    const S* row = rows[r];
    float* rr = out.residual + ri * out.ldr;
    for (Index i = 0; i < L.d; ++i) rr[i] = static_cast<float>(row[L.residual_offset() + i]);
    float* qr = out.q + ri * out.ldq;
    for (Index i = 0; i < L.q_width; ++i) qr[i] = static_cast<float>(row[L.q_offset() + i]);
    for (Index i = 0; i < L.kv_width; ++i)
      k[static_cast<size_t>(i)] = static_cast<float>(row[L.k_offset() + i]);
    if (rot) {
      // Same angles and float cos/sin as ttx::rope_rotate_head (formed in double, then rounded).
      const double pos = static_cast<double>(start + ri);
      for (size_t j = 0; j < freqs.size(); ++j) {
        c[j] = static_cast<float>(std::cos(pos * freqs[j]));
        sn[j] = static_cast<float>(std::sin(pos * freqs[j]));
      }
      fl_rotate(qr, s.heads, s.head_dim, rope, c.data(), sn.data());
      if (out.rotate_k) fl_rotate(k.data(), s.kv_heads, s.head_dim, rope, c.data(), sn.data());
    }
    TC* kr = out.k + ri * L.kv_width;
    for (Index i = 0; i < L.kv_width; ++i) {
      kr[i] = static_cast<TC>(k[static_cast<size_t>(i)]);
      if (fl_overflowed(kr[i], k[static_cast<size_t>(i)]))
        raise(ErrorKind::numerical,
              concat("ttx::", fn, ": key of batch row ", r, ", column ", i, " = ",
                     k[static_cast<size_t>(i)], " overflows ", type_name<TC>()));
    }
    if (out.v) {
      TC* vr = out.v + ri * L.kv_width;
      for (Index i = 0; i < L.kv_width; ++i) {
        const float x = static_cast<float>(row[L.v_offset() + i]);
        vr[i] = static_cast<TC>(x);
        if (fl_overflowed(vr[i], x))
          raise(ErrorKind::numerical, concat("ttx::", fn, ": value of batch row ", r, ", column ",
                                             i, " = ", x, " overflows ", type_name<TC>()));
      }
    }
  }
}

/// The cache must have the table's (or layer's) attention shape.
inline void fl_check_cache_shape(const char* fn, const AttentionShape& shape,
                                 const AttentionShape& got) {
  if (got != shape)
    raise(ErrorKind::shape,
          concat("ttx::", fn, ": cache.shape() expected {d=", shape.d, ", heads=", shape.heads,
                 ", kv_heads=", shape.kv_heads, ", head_dim=", shape.head_dim, "}, got {d=", got.d,
                 ", heads=", got.heads, ", kv_heads=", got.kv_heads, ", head_dim=", got.head_dim,
                 "}"));
}

/// Claims n rows of a KV cache, runs `finish` into them, rolls back on any error.
template <class TC, class Finish>
void fl_into_kv(const char* fn, const AttentionShape& shape, Index n, KVCache<TC>& cache,
                Eigen::Ref<RowMatrix<float>>& q, Eigen::Ref<RowMatrix<float>>& residual,
                Finish&& finish) {
  fl_check_cache_shape(fn, shape, cache.shape());
  if (cache.size() + n > cache.capacity())
    raise(ErrorKind::capacity,
          concat("ttx::", fn, ": cache capacity expected >= ", cache.size() + n, " rows (",
                 cache.size(), " cached + ", n, " new), got capacity ", cache.capacity()));
  const Index start = cache.size();
  FlSink<TC> sink{q.data(), q.outerStride(), residual.data(), residual.outerStride()};
  sink.k = cache.keys().extend(n).data();
  sink.v = cache.values().extend(n).data();
  try {
    finish(start, sink);
  } catch (...) {
    cache.keys().truncate(start);
    cache.values().truncate(start);
    throw;
  }
}

template <class TC, class Finish>
void fl_into_keys(const char* fn, const AttentionShape& shape, Index n, RowCache<TC>& keys,
                  KeyStorage form, Eigen::Ref<RowMatrix<float>>& q,
                  Eigen::Ref<RowMatrix<float>>& residual, Finish&& finish) {
  check_dim(fn, "keys.width() (= e = kv_heads * head_dim)", shape.kv_width(), keys.width());
  const Index start = keys.size();
  FlSink<TC> sink{q.data(), q.outerStride(), residual.data(), residual.outerStride()};
  sink.k = keys.extend(n).data();  // CapacityError before anything is written
  sink.rotate_k = form == KeyStorage::rotated;
  try {
    finish(start, sink);
  } catch (...) {
    keys.truncate(start);
    throw;
  }
}

/// A slim KCache as a keys-only destination: its shape must be the table's, its width e (a
/// completed GQA basis of width d would need K* = X W_K* in the table instead of K).
template <class TC>
KeyStorage fl_kcache_form(const char* fn, const AttentionShape& shape, const KCache<TC>& cache) {
  fl_check_cache_shape(fn, shape, cache.shape());
  require(cache.width() == shape.kv_width(), ErrorKind::unsupported, fn,
          concat("cache.width() expected e = ", shape.kv_width(), ", got ", cache.width(),
                 ": a completed-basis KCache holds K* = X W_K*, which the first-layer table does "
                 "not store"));
  return cache.storage();
}

template <class TT>
std::vector<const TT*> fl_table_rows(const rewrite::FirstLayerTable<TT>& t,
                                     const std::vector<int>& ids) {
  std::vector<const TT*> rows(ids.size());
  for (size_t r = 0; r < ids.size(); ++r) rows[r] = t.rows.row(ids[r]).data();
  return rows;
}

template <class TT>
void fl_check_table(const char* fn, const rewrite::FirstLayerTable<TT>& t,
                    const std::vector<int>& ids, const Eigen::Ref<RowMatrix<float>>& q,
                    const Eigen::Ref<RowMatrix<float>>& residual) {
  check_dim(fn, "table.rows.cols() (= table.layout.width())", t.layout.width(), t.rows.cols());
  check_dim(fn, "table.layout (= layout of table.attn.shape)", t.layout.width(),
            rewrite::FirstLayerLayout::of(t.attn.shape).width());
  fl_check_ids(fn, ids, t.vocab());
  fl_check_outputs(fn, t.layout, static_cast<Index>(ids.size()), q, residual);
}

/// The computed path's rows: checks the inputs, then rows [residual | q | k | v] of `ids` in float
/// (rewrite::compute_first_layer_rows) into `buf`; returns a pointer to each row.
template <class TW>
std::vector<const float*> fl_compute_rows(const char* fn, const RowMatrix<TW>& embedding,
                                          const BlockWeights<TW>& block, const BlockConfig& cfg,
                                          const std::vector<int>& ids,
                                          const Eigen::Ref<RowMatrix<float>>& q,
                                          const Eigen::Ref<RowMatrix<float>>& residual, int threads,
                                          RowMatrix<float>& buf) {
  check_first_layer(fn, embedding, block, cfg);
  const auto L = rewrite::FirstLayerLayout::of(cfg.attn.shape);
  fl_check_ids(fn, ids, embedding.rows());
  const Index n = static_cast<Index>(ids.size());
  fl_check_outputs(fn, L, n, q, residual);
  buf.resize(n, L.width());
  rewrite::compute_first_layer_rows<float>(embedding, block, cfg, ids.data(), n, buf, threads);
  std::vector<const float*> rows(ids.size());
  for (Index r = 0; r < n; ++r) rows[static_cast<size_t>(r)] = buf.row(r).data();
  return rows;
}

}  // namespace detail

namespace kernel {

/// Table path into a vanilla KV cache. For each r: row = table.rows.row(ids[r]) at position
/// p = cache.size() + r; q.row(r) = RoPE_p(row.q), residual.row(r) = row.residual, and
/// RoPE_p(row.k), row.v are appended to `cache` (written in place via extend). Shapes: q n x e_q,
/// residual n x d (float, caller's); cache.shape() == table.attn.shape. Errors: ShapeError for
/// ids outside [0, vocab) or bad shapes, CapacityError when n rows do not fit, NumericalError when
/// a value overflows TC; the cache is unchanged after any error. Example:
///   ttx::KVCache<ttx::bf16> cache(shape, 4096);
///   ttx::kernel::first_layer_lookup(table, {17, 4, 99}, cache, q, residual);
template <class TT, class TC>
void first_layer_lookup(const rewrite::FirstLayerTable<TT>& table, const std::vector<int>& ids,
                        KVCache<TC>& cache, Eigen::Ref<RowMatrix<float>> q,
                        Eigen::Ref<RowMatrix<float>> residual) {
  const char* fn = "kernel::first_layer_lookup";
  detail::fl_check_table(fn, table, ids, q, residual);
  const auto rows = detail::fl_table_rows(table, ids);
  detail::fl_into_kv(fn, table.attn.shape, static_cast<Index>(ids.size()), cache, q, residual,
                     [&](Index start, detail::FlSink<TC>& sink) {
                       detail::fl_finish(fn, rows, table.layout, table.attn, start, sink);
                     });
}

/// Table path into a keys-only cache (any RowCache<TC> of width e, e.g. for slim attention):
/// appends RoPE_p(row.k) (KeyStorage::rotated) or row.k (KeyStorage::raw) at p = keys.size() + r; q
/// and residual as above; V is not produced (a K-only cache recomputes it). Same errors.
template <class TT, class TC>
void first_layer_lookup(const rewrite::FirstLayerTable<TT>& table, const std::vector<int>& ids,
                        RowCache<TC>& keys, KeyStorage form, Eigen::Ref<RowMatrix<float>> q,
                        Eigen::Ref<RowMatrix<float>> residual) {
  const char* fn = "kernel::first_layer_lookup";
  detail::fl_check_table(fn, table, ids, q, residual);
  const auto rows = detail::fl_table_rows(table, ids);
  detail::fl_into_keys(fn, table.attn.shape, static_cast<Index>(ids.size()), keys, form, q,
                       residual, [&](Index start, detail::FlSink<TC>& sink) {
                         detail::fl_finish(fn, rows, table.layout, table.attn, start, sink);
                       });
}

/// Table path into slim attention's KCache (keys only, raw or rotated as cache.storage() says):
/// the keys-only lookup above with the cache's own convention. UnsupportedError for a
/// completed-basis KCache (width d != e).
template <class TT, class TC>
void first_layer_lookup(const rewrite::FirstLayerTable<TT>& table, const std::vector<int>& ids,
                        KCache<TC>& cache, Eigen::Ref<RowMatrix<float>> q,
                        Eigen::Ref<RowMatrix<float>> residual) {
  const KeyStorage form =
      detail::fl_kcache_form("kernel::first_layer_lookup", table.attn.shape, cache);
  first_layer_lookup(table, ids, cache.keys(), form, q, residual);
}

/// Table path without a cache, at explicit positions (a batch of different sequences): row r at
/// positions[r]; q, k (rotated), v and residual are written to the caller's float matrices
/// (n x e_q, n x e, n x e, n x d).
template <class TT>
void first_layer_lookup(const rewrite::FirstLayerTable<TT>& table, const std::vector<int>& ids,
                        const std::vector<Index>& positions, Eigen::Ref<RowMatrix<float>> q,
                        Eigen::Ref<RowMatrix<float>> k, Eigen::Ref<RowMatrix<float>> v,
                        Eigen::Ref<RowMatrix<float>> residual) {
  const char* fn = "kernel::first_layer_lookup";
  detail::fl_check_table(fn, table, ids, q, residual);
  const Index n = static_cast<Index>(ids.size());
  detail::check_dim(fn, "positions.size() (= ids.size())", n, static_cast<Index>(positions.size()));
  detail::check_shape(fn, "k", k, n, table.layout.kv_width);
  detail::check_shape(fn, "v", v, n, table.layout.kv_width);
  // k and v rows go through a contiguous scratch (the Refs may be strided views).
  RowMatrix<float> kk(n, table.layout.kv_width), vv(n, table.layout.kv_width);
  for (Index r = 0; r < n; ++r) {
    detail::require(positions[static_cast<size_t>(r)] >= 0, ErrorKind::shape, fn, "positions[", r,
                    "] expected >= 0, got ", positions[static_cast<size_t>(r)]);
    const std::vector<const TT*> one{table.rows.row(ids[static_cast<size_t>(r)]).data()};
    detail::FlSink<float> sink{q.row(r).data(),  0,   residual.row(r).data(), 0, kk.row(r).data(),
                               vv.row(r).data(), true};
    detail::fl_finish(fn, one, table.layout, table.attn, positions[static_cast<size_t>(r)], sink);
  }
  k = kk;
  v = vv;
}

/// Vanilla computed path into a KV cache: the same outputs as first_layer_lookup, computed from
/// the embedding (vocab x d) and layer 1's weights with rewrite::compute_first_layer_rows (norm,
/// Q/K/V projections, for parallel blocks the FFN) in float. Bitwise equal to the lookup of a float
/// table built with TableCompute::working from the same weights. threads: 0 = all OpenMP threads.
template <class TW, class TC>
void first_layer_compute(const RowMatrix<TW>& embedding, const BlockWeights<TW>& block,
                         const BlockConfig& cfg, const std::vector<int>& ids, KVCache<TC>& cache,
                         Eigen::Ref<RowMatrix<float>> q, Eigen::Ref<RowMatrix<float>> residual,
                         int threads = 0) {
  const char* fn = "kernel::first_layer_compute";
  RowMatrix<float> buf;
  const auto rows =
      detail::fl_compute_rows(fn, embedding, block, cfg, ids, q, residual, threads, buf);
  const auto L = rewrite::FirstLayerLayout::of(cfg.attn.shape);
  const Index n = static_cast<Index>(ids.size());
  detail::fl_into_kv(fn, cfg.attn.shape, n, cache, q, residual,
                     [&](Index start, detail::FlSink<TC>& sink) {
                       detail::fl_finish(fn, rows, L, cfg.attn, start, sink);
                     });
}

/// Vanilla computed path into a keys-only cache (see the keys-only first_layer_lookup).
template <class TW, class TC>
void first_layer_compute(const RowMatrix<TW>& embedding, const BlockWeights<TW>& block,
                         const BlockConfig& cfg, const std::vector<int>& ids, RowCache<TC>& keys,
                         KeyStorage form, Eigen::Ref<RowMatrix<float>> q,
                         Eigen::Ref<RowMatrix<float>> residual, int threads = 0) {
  const char* fn = "kernel::first_layer_compute";
  RowMatrix<float> buf;
  const auto rows =
      detail::fl_compute_rows(fn, embedding, block, cfg, ids, q, residual, threads, buf);
  const auto L = rewrite::FirstLayerLayout::of(cfg.attn.shape);
  const Index n = static_cast<Index>(ids.size());
  detail::fl_into_keys(fn, cfg.attn.shape, n, keys, form, q, residual,
                       [&](Index start, detail::FlSink<TC>& sink) {
                         detail::fl_finish(fn, rows, L, cfg.attn, start, sink);
                       });
}

/// Vanilla computed path into slim attention's KCache (see the KCache first_layer_lookup).
template <class TW, class TC>
void first_layer_compute(const RowMatrix<TW>& embedding, const BlockWeights<TW>& block,
                         const BlockConfig& cfg, const std::vector<int>& ids, KCache<TC>& cache,
                         Eigen::Ref<RowMatrix<float>> q, Eigen::Ref<RowMatrix<float>> residual,
                         int threads = 0) {
  const KeyStorage form =
      detail::fl_kcache_form("kernel::first_layer_compute", cfg.attn.shape, cache);
  first_layer_compute(embedding, block, cfg, ids, cache.keys(), form, q, residual, threads);
}

}  // namespace kernel
}  // namespace ttx
