// Shared by the slim-attention runtime tests: one layer run three ways on the same inputs -- the
// reference oracle in double, the vanilla layer at the cache's storage precision (KVCache<T> and
// kernel::decode_vanilla), and the slim layer -- and the SPEC.md §5 rule between them.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "support/random.hpp"
#include "support/tolerance.hpp"
#include "ttx/kernel/decode.hpp"
#include "ttx/kernel/slim_attention.hpp"
#include "ttx/reference/attention.hpp"

namespace ttx::slim_test {

using kernel::ScoreOrder;
using rewrite::CacheForm;

struct Case {
  AttentionShape shape;
  RopeSpec rope;
  test::BiasOptions bias;
  CacheForm form = CacheForm::keys;
  KeyStorage storage = KeyStorage::raw;
  Index prompt = 5;  ///< 0: no prefill, the first decode step meets an empty cache
  Index steps = 16;
  /// 0 < chunk < prompt: the prompt is prefilled in two calls, rows [0, chunk) then
  /// [chunk, prompt) (the second on a non-empty cache); 0: one call.
  Index chunk = 0;
  ScoreOrder order = ScoreOrder::weights_first;
  bool position_bias = false;
  double scale = 0;
  const char* label = "";
};

/// A T5/ALiBi-like additive bias that depends on head, query and key position.
inline double position_bias(Index h, Index q, Index k) {
  return -0.05 * static_cast<double>(h + 1) * static_cast<double>(q - k) +
         0.1 * std::sin(static_cast<double>(k));
}

/// The prefill calls for a prompt of p rows: [0, chunk) and [chunk, p) when 0 < chunk < p, else
/// [0, p) (none when p = 0), as (first row, row count).
inline std::vector<std::pair<Index, Index>> prefill_chunks(Index p, Index chunk) {
  if (p == 0) return {};
  if (chunk > 0 && chunk < p) return {{0, chunk}, {chunk, p - chunk}};
  return {{0, p}};
}

/// Vanilla layer at storage precision T: float projections (the reference ops in float), rotated
/// keys and values in a KVCache<T>; prefill (in the same chunks as the slim run) attends the
/// rounded cache rows with the reference attend in float, decode steps use
/// kernel::decode_vanilla.
template <class T>
RowMatrix<float> run_vanilla(const reference::AttentionWeights<float>& w,
                             const AttentionConfig& cfg, const RowMatrix<float>& X, Index p,
                             const reference::ScoreBias& bias, Index chunk = 0) {
  const AttentionShape& s = cfg.shape;
  KVCache<T> cache(s, X.rows());
  RowMatrix<float> Y(X.rows(), s.d);
  for (const auto& [first, count] : prefill_chunks(p, chunk)) {
    const RowMatrix<float> Xp = X.middleRows(first, count);
    const RowMatrix<float> Q = reference::rope<float>(reference::linear<float>(Xp, w.wq, w.bq),
                                                      s.heads, s.head_dim, cfg.rope, first);
    cache.append(reference::rope<float>(reference::linear<float>(Xp, w.wk, w.bk), s.kv_heads,
                                        s.head_dim, cfg.rope, first),
                 reference::linear<float>(Xp, w.wv, w.bv));
    const RowMatrix<float> Kc = cache.keys().view().template cast<float>();
    const RowMatrix<float> Vc = cache.values().view().template cast<float>();
    Y.middleRows(first, count) = reference::linear<float>(
        reference::attend<float>(Q, Kc, Vc, s, cfg.effective_scale(), true, first, bias), w.wo,
        w.bo);
  }
  std::vector<float> bias_buf;
  for (Index r = p; r < X.rows(); ++r) {
    const RowMatrix<float> x = X.row(r);
    const RowMatrix<float> q = reference::rope<float>(reference::linear<float>(x, w.wq, w.bq),
                                                      s.heads, s.head_dim, cfg.rope, r);
    cache.append(reference::rope<float>(reference::linear<float>(x, w.wk, w.bk), s.kv_heads,
                                        s.head_dim, cfg.rope, r),
                 reference::linear<float>(x, w.wv, w.bv));
    kernel::DecodeOptions opt;
    opt.scale = cfg.effective_scale();
    if (bias) {
      bias_buf.resize(static_cast<size_t>(s.heads * (r + 1)));
      for (Index h = 0; h < s.heads; ++h)
        for (Index j = 0; j <= r; ++j)
          bias_buf[static_cast<size_t>(h * (r + 1) + j)] = static_cast<float>(bias(h, r, j));
      opt.score_bias = bias_buf.data();
    }
    RowVector<float> heads(s.q_width());
    kernel::decode_vanilla<T>(q, cache, s, opt, heads);
    Y.row(r) = reference::linear<float>(RowMatrix<float>(heads), w.wo, w.bo);
  }
  return Y;
}

/// Prefill p rows of X (in prefill_chunks(p, chunk)), then decode the rest one token at a time,
/// through the slim layer.
template <class Cache>
RowMatrix<float> drive(const rewrite::SlimAttention<float>& slim, Cache& cache,
                       const RowMatrix<float>& X, Index p, ScoreOrder order,
                       const reference::ScoreBias& bias, kernel::SlimWorkspace& ws,
                       Index chunk = 0) {
  const AttentionShape& s = slim.shape;
  RowMatrix<float> Y(X.rows(), s.d);
  for (const auto& [first, count] : prefill_chunks(p, chunk)) {
    RowMatrix<float> Yp(count, s.d);
    kernel::slim_prefill(X.middleRows(first, count), slim, cache, Yp, ws, bias);
    EXPECT_EQ(cache.size(), first + count);
    Y.middleRows(first, count) = Yp;
  }
  std::vector<float> bias_buf;
  kernel::SlimDecodeOptions opt;
  opt.order = order;
  RowVector<float> y(s.d);
  for (Index r = p; r < X.rows(); ++r) {
    if (bias) {
      bias_buf.resize(static_cast<size_t>(s.heads * (r + 1)));
      for (Index h = 0; h < s.heads; ++h)
        for (Index j = 0; j <= r; ++j)
          bias_buf[static_cast<size_t>(h * (r + 1) + j)] = static_cast<float>(bias(h, r, j));
      opt.score_bias = bias_buf.data();
    }
    kernel::slim_decode(X.row(r), slim, cache, y, ws, opt);
    Y.row(r) = y;
  }
  EXPECT_EQ(cache.size(), X.rows());
  return Y;
}

template <class T>
RowMatrix<float> run_slim(const rewrite::SlimAttention<float>& slim, KeyStorage storage,
                          const RowMatrix<float>& X, Index p, ScoreOrder order,
                          const reference::ScoreBias& bias, Index chunk = 0) {
  kernel::SlimWorkspace ws;
  if (slim.form == CacheForm::keys) {
    KCache<T> cache(slim.shape, X.rows(), storage, slim.cached_width);
    return drive(slim, cache, X, p, order, bias, ws, chunk);
  }
  if (slim.form == CacheForm::values) {
    VCache<T> cache(slim.shape, X.rows(), slim.cached_width);
    return drive(slim, cache, X, p, order, bias, ws, chunk);
  }
  XCache<T> cache(slim.shape, X.rows());
  return drive(slim, cache, X, p, order, bias, ws, chunk);
}

/// The §5 tolerance for a slim form: factor 2 times the error gain of the inverse (how much the
/// rounding of the cached rows and of W_KV grows when V is recomputed), never below 2.
inline test::Tolerance slim_tolerance(const rewrite::SlimReport& r) {
  test::Tolerance tol;
  tol.factor = 2.0 * std::max(1.0, r.error_gain);
  tol.floor = test::roundoff_floor<float>();
  tol.why = detail::concat(rewrite::name(r.form), " (", rewrite::name(r.basis),
                           "): factor 2 x error gain ", r.error_gain,
                           " = ||W_C|| ||M|| / (sqrt(w) ||W_target||), measured cond ",
                           r.cond_estimate, "; floor 4 float roundoffs (float arithmetic)");
  return tol;
}

struct Outcome {
  RowMatrix<double> ref;
  RowMatrix<float> vanilla, slim;
  rewrite::SlimReport report;
};

template <class T>
Outcome run_case(const Case& st, std::uint64_t seed) {
  test::Rng rng(seed);
  AttentionConfig cfg{st.shape, st.scale, st.rope};
  const auto wd = test::random_attention<double>(st.shape, rng, st.bias);
  const RowMatrix<double> Xd =
      test::random_matrix<double>(st.prompt + st.steps, st.shape.d, 1.0, rng);
  const reference::ScoreBias bias =
      st.position_bias ? reference::ScoreBias(position_bias) : reference::ScoreBias();
  Outcome o;
  // Reference in double: prefill (in the same chunks), then one row at a time (as the runtime
  // does).
  reference::KVCache<double> rc;
  o.ref.resize(Xd.rows(), st.shape.d);
  for (const auto& [first, count] : prefill_chunks(st.prompt, st.chunk))
    o.ref.middleRows(first, count) =
        reference::self_attention<double>(Xd.middleRows(first, count), wd, cfg, rc, bias);
  for (Index r = st.prompt; r < Xd.rows(); ++r)
    o.ref.row(r) = reference::self_attention<double>(Xd.row(r), wd, cfg, rc, bias);
  const RowMatrix<float> X = Xd.cast<float>();
  o.vanilla = run_vanilla<T>(test::cast<float>(wd), cfg, X, st.prompt, bias, st.chunk);
  rewrite::SlimOptions opt;
  opt.form = st.form;
  const auto slim = rewrite::slim_attention<float, T>(wd, cfg, opt);
  o.report = slim.report;
  o.slim = run_slim<T>(slim, st.storage, X, st.prompt, st.order, bias, st.chunk);
  return o;
}

/// within_rule, after requiring every value of both paths to be finite (the rule alone passes
/// when both errors are infinite).
template <class C, class B, class R>
::testing::AssertionResult rule(const Eigen::MatrixBase<C>& candidate,
                                const Eigen::MatrixBase<B>& baseline,
                                const Eigen::MatrixBase<R>& ref, const test::Tolerance& tol,
                                const char* type) {
  if (!candidate.allFinite()) return ::testing::AssertionFailure() << "slim output is not finite";
  if (!baseline.allFinite())
    return ::testing::AssertionFailure() << "vanilla baseline output is not finite";
  return test::within_rule(candidate, baseline, ref, tol, type);
}

template <class T>
void check(const Case& st, std::uint64_t seed = 1) {
  const Outcome o = run_case<T>(st, seed);
  const auto verdict = rule(o.slim, o.vanilla, o.ref, slim_tolerance(o.report), type_name<T>());
  EXPECT_TRUE(verdict) << st.label;
  if (std::getenv("TTX_VERBOSE")) std::printf("%s: %s\n", st.label, verdict.message());
}

}  // namespace ttx::slim_test
