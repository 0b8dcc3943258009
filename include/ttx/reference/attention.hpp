// Reference attention (SPEC.md §0): head_i = softmax(scale * q_i K_i^T + bias_i) V_i, output
// concat(heads) W_O + c. MHA, GQA, MQA; causal prefill; decode against a growing KV cache;
// configurable scale; optional additive score bias; q/k/v/o biases; RoPE on Q and K.
#pragma once

#include <functional>
#include <limits>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/softmax.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"
#include "ttx/reference/linear.hpp"
#include "ttx/reference/rope.hpp"

namespace ttx::reference {

using ttx::AttentionConfig;
using ttx::AttentionWeights;

/// Additive score bias: bias(head, query_position, key_position). Empty = none.
using ScoreBias = std::function<double(Index head, Index query_pos, Index key_pos)>;

/// The reference KV cache: rotated keys and values of every past token, grown by appending.
template <class T>
struct KVCache {
  RowMatrix<T> k, v;  ///< n x e each
  Index size() const { return k.rows(); }
};

template <class T>
void check_attention_weights(const char* fn, const AttentionWeights<T>& w,
                             const AttentionShape& s) {
  s.validate(fn);
  detail::check_shape(fn, "wq", w.wq, s.d, s.q_width());
  detail::check_shape(fn, "wk", w.wk, s.d, s.kv_width());
  detail::check_shape(fn, "wv", w.wv, s.d, s.kv_width());
  detail::check_shape(fn, "wo", w.wo, s.q_width(), s.d);
  if (w.bq.size()) detail::check_dim(fn, "bq.size()", s.q_width(), w.bq.size());
  if (w.bk.size()) detail::check_dim(fn, "bk.size()", s.kv_width(), w.bk.size());
  if (w.bv.size()) detail::check_dim(fn, "bv.size()", s.kv_width(), w.bv.size());
  if (w.bo.size()) detail::check_dim(fn, "bo.size()", s.d, w.bo.size());
}

/// Core of attention on projected rows: Q (nq x e_q), K and V (nk x e). Query row r sits at
/// position q_start + r; with `causal`, it sees keys at positions <= its own (key row j is at
/// position j). Returns concat(heads) (nq x e_q), before W_O.
template <class T>
RowMatrix<T> attend(const RowMatrix<T>& Q, const RowMatrix<T>& K, const RowMatrix<T>& V,
                    const AttentionShape& s, double scale, bool causal, Index q_start,
                    const ScoreBias& bias = {}) {
  const char* fn = "reference::attend";
  detail::check_dim(fn, "Q.cols()", s.q_width(), Q.cols());
  detail::check_dim(fn, "K.cols()", s.kv_width(), K.cols());
  detail::check_shape(fn, "V", V, K.rows(), s.kv_width());
  const Index nq = Q.rows(), nk = K.rows(), dk = s.head_dim;
  RowMatrix<T> out(nq, s.q_width());
  for (Index h = 0; h < s.heads; ++h) {
    const Index g = s.kv_head_of(h);
    const auto Kh = K.middleCols(g * dk, dk);
    const auto Vh = V.middleCols(g * dk, dk);
    for (Index r = 0; r < nq; ++r) {
      const Index pos = q_start + r;
      RowVector<T> scores = (Q.row(r).segment(h * dk, dk) * Kh.transpose()) * T(scale);
      for (Index j = 0; j < nk; ++j) {
        if (bias) scores(j) += T(bias(h, pos, j));
        if (causal && j > pos) scores(j) = -std::numeric_limits<T>::infinity();
      }
      stable_softmax(scores);
      out.row(r).segment(h * dk, dk) = scores * Vh;
    }
  }
  return out;
}

/// Self-attention of n new tokens X (n x d) at positions cache.size() ... : projects, rotates Q
/// and K, appends K and V to the cache, attends causally over the whole cache, projects out.
/// Prefill is n = p; a decode step is n = 1.
template <class T>
RowMatrix<T> self_attention(const RowMatrix<T>& X, const AttentionWeights<T>& w,
                            const AttentionConfig& cfg, KVCache<T>& cache,
                            const ScoreBias& bias = {}) {
  const char* fn = "reference::self_attention";
  const AttentionShape& s = cfg.shape;
  check_attention_weights(fn, w, s);
  cfg.rope.validate(fn, s.head_dim);
  detail::check_dim(fn, "X.cols()", s.d, X.cols());
  const Index start = cache.size();
  // A cache filled for another shape (or a k/v pair of unequal length) would otherwise be copied
  // into rows of the wrong width: an Eigen assert in debug builds, memory corruption under NDEBUG.
  if (cache.k.size() != 0 || cache.v.size() != 0) {
    detail::check_shape(fn, "cache.k", cache.k, start, s.kv_width());
    detail::check_shape(fn, "cache.v", cache.v, start, s.kv_width());
  }
  RowMatrix<T> Q = rope<T>(linear<T>(X, w.wq, w.bq), s.heads, s.head_dim, cfg.rope, start);
  RowMatrix<T> K = rope<T>(linear<T>(X, w.wk, w.bk), s.kv_heads, s.head_dim, cfg.rope, start);
  RowMatrix<T> V = linear<T>(X, w.wv, w.bv);
  RowMatrix<T> k(start + X.rows(), s.kv_width()), v(start + X.rows(), s.kv_width());
  // Not `k << cache.k, K`: Eigen's comma initializer asserts on the empty (0x0) cache of the
  // first call in builds with assertions on.
  if (start > 0) {
    k.topRows(start) = cache.k;
    v.topRows(start) = cache.v;
  }
  k.bottomRows(X.rows()) = K;
  v.bottomRows(X.rows()) = V;
  cache.k.swap(k);
  cache.v.swap(v);
  const RowMatrix<T> heads =
      attend<T>(Q, cache.k, cache.v, s, cfg.effective_scale(), /*causal=*/true, start, bias);
  return linear<T>(heads, w.wo, w.bo);
}

/// Cross-attention of X (n x d) to encoder output E (p x d): K and V from E, no mask, no RoPE.
template <class T>
RowMatrix<T> cross_attention(const RowMatrix<T>& X, const RowMatrix<T>& E,
                             const AttentionWeights<T>& w, const AttentionConfig& cfg,
                             const ScoreBias& bias = {}) {
  const char* fn = "reference::cross_attention";
  const AttentionShape& s = cfg.shape;
  check_attention_weights(fn, w, s);
  detail::check_dim(fn, "X.cols()", s.d, X.cols());
  detail::check_dim(fn, "E.cols()", s.d, E.cols());
  const RowMatrix<T> Q = linear<T>(X, w.wq, w.bq);
  const RowMatrix<T> K = linear<T>(E, w.wk, w.bk);
  const RowMatrix<T> V = linear<T>(E, w.wv, w.bv);
  const RowMatrix<T> heads =
      attend<T>(Q, K, V, s, cfg.effective_scale(), /*causal=*/false, 0, bias);
  return linear<T>(heads, w.wo, w.bo);
}

}  // namespace ttx::reference
