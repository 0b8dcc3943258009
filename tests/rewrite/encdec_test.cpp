// ttx-test-labels: encdec
// The encoder–decoder weight transforms (rewrite/encdec.hpp), evaluated in double with plain
// Eigen formulas (no runtime kernel) against reference::cross_attention / self_attention: the
// identities themselves, their reports, and their errors.
#include "ttx/rewrite/encdec.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/encdec_random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/attention.hpp"

namespace ttx {
namespace {

using test::Rng;

// Softmax rows of an h x n score matrix (double).
RowMatrix<double> softmax_rows(RowMatrix<double> S) {
  for (Index i = 0; i < S.rows(); ++i) {
    RowVector<double> r = S.row(i);
    stable_softmax(r);
    S.row(i) = r;
  }
  return S;
}

// Inputs form on rows R: q~_i = q_i W_K,g^T; s_i = softmax(q~_i R^T + bias_i); head_i = s_i R
// W_V,g.
RowMatrix<double> eval_inputs(const RowMatrix<double>& x, const rewrite::InputsAttention<double>& w,
                              const RowMatrix<double>& R, const RowMatrix<double>& bias) {
  const AttentionShape& s = w.shape;
  const Index dk = s.head_dim;
  RowVector<double> q = x * w.wq;
  if (w.bq.size()) q += w.bq;
  RowMatrix<double> S(s.heads, R.rows());
  for (Index i = 0; i < s.heads; ++i)
    S.row(i) = q.segment(i * dk, dk) * w.wk.middleCols(s.kv_head_of(i) * dk, dk).transpose() *
               R.transpose();
  if (bias.size()) S += bias;
  const RowMatrix<double> U = softmax_rows(S) * R;
  RowVector<double> heads(s.q_width());
  for (Index i = 0; i < s.heads; ++i)
    heads.segment(i * dk, dk) = U.row(i) * w.wv.middleCols(s.kv_head_of(i) * dk, dk);
  return heads * w.wo + w.bo;
}

RowMatrix<double> eval_keys(const RowMatrix<double>& x, const rewrite::KeysAttention<double>& w,
                            const RowMatrix<double>& K) {
  const AttentionShape& s = w.shape;
  const Index dk = s.head_dim;
  RowVector<double> q = x * w.wq;
  if (w.bq.size()) q += w.bq;
  RowMatrix<double> S(s.heads, K.rows());
  for (Index i = 0; i < s.heads; ++i)
    S.row(i) = q.segment(i * dk, dk) * K.middleCols(s.kv_head_of(i) * dk, dk).transpose();
  const RowMatrix<double> U = softmax_rows(S) * K;
  RowVector<double> heads(s.q_width());
  for (Index i = 0; i < s.heads; ++i)
    heads.segment(i * dk, dk) = U.row(i) * w.wkv.middleCols(s.kv_head_of(i) * dk, dk);
  return heads * w.wo + w.bo;
}

// Exact in real arithmetic: in double, within a few hundred units of roundoff (times cond(W_K)
// where an inverse is involved).
double bound(double cond = 1.0) {
  return 256.0 * cond * unit_roundoff<double>();
}

TEST(EncDecRewrite, SharedEncoderCacheMhaGqaMqaWithAllBiasesAndPositionBias) {
  for (const AttentionShape s : {AttentionShape{48, 6, 6, 8}, AttentionShape{48, 6, 2, 8},
                                 AttentionShape{48, 6, 1, 8}, AttentionShape{16, 4, 4, 64}}) {
    Rng rng(10 + s.kv_heads + s.head_dim);
    const auto w = test::random_attention<double>(s, rng, test::BiasOptions::all());
    for (double scale : {0.0, 1.0}) {
      const AttentionConfig cfg{s, scale, RopeSpec::none()};
      const RowMatrix<double> E = test::random_matrix<double>(37, s.d, 1.0, rng);
      const RowMatrix<double> x = test::random_matrix<double>(1, s.d, 1.0, rng);
      const RowMatrix<double> B = test::random_matrix<double>(s.heads, 37, 1.0, rng);
      const RowMatrix<double> ref = reference::cross_attention<double>(
          x, E, w, cfg, [&](Index h, Index, Index k) { return B(h, k); });
      const auto r = rewrite::inputs_attention<double>(w, cfg);
      EXPECT_EQ(r.row_width, s.d);
      EXPECT_TRUE(test::close_to(eval_inputs(x, r, E, B), ref, bound(), "double roundoff", "f64"))
          << "h_kv=" << s.kv_heads << " d_k=" << s.head_dim << " scale=" << scale;
    }
  }
}

TEST(EncDecRewrite, SelfXCacheEqualsCausalSelfAttention) {
  const AttentionShape s{32, 4, 4, 8};
  Rng rng(3);
  const auto w = test::random_attention<double>(s, rng, test::BiasOptions::whisper());
  const AttentionConfig cfg{s, 0.0, RopeSpec::none()};
  const RowMatrix<double> X = test::random_matrix<double>(9, s.d, 1.0, rng);
  reference::KVCache<double> cache;
  const RowMatrix<double> ref = reference::self_attention<double>(X, w, cfg, cache);
  const auto r = rewrite::inputs_attention<double>(w, cfg);
  for (Index t = 0; t < X.rows(); ++t)  // a decode step sees every cached row, its own included
    EXPECT_TRUE(test::close_to(eval_inputs(X.row(t), r, X.topRows(t + 1), {}), ref.row(t), bound(),
                               "double roundoff", "f64"))
        << "token " << t;
}

TEST(EncDecRewrite, CrossKeysOnlyAndReport) {
  const AttentionShape s{48, 6, 6, 8};
  Rng rng(4);
  const auto w = test::random_attention<double>(s, rng, test::BiasOptions::all());
  const AttentionConfig cfg{s, 0.0, RopeSpec::none()};
  const RowMatrix<double> E = test::random_matrix<double>(29, s.d, 1.0, rng);
  const RowMatrix<double> x = test::random_matrix<double>(1, s.d, 1.0, rng);
  const RowMatrix<double> ref = reference::cross_attention<double>(x, E, w, cfg);
  const auto r = rewrite::keys_attention<double>(w, cfg);
  EXPECT_GT(r.report.cond_estimate, 1.0);
  EXPECT_LT(r.report.residual, 1e3 * unit_roundoff<double>());
  EXPECT_NEAR(r.max_abs_wkv, r.wkv.cwiseAbs().maxCoeff(), 0.0);
  EXPECT_TRUE((w.wk * r.wkv - w.wv).norm() / w.wv.norm() < 1e3 * unit_roundoff<double>());
  const RowMatrix<double> K = E * r.wk;  // the cache holds K without b_K
  EXPECT_TRUE(test::close_to(eval_keys(x, r, K), ref, bound(r.report.cond_estimate),
                             "double roundoff x cond " + std::to_string(r.report.cond_estimate),
                             "f64"));
}

TEST(EncDecRewrite, HybridEveryLayerOnLayerZerosKeys) {
  const AttentionShape s{40, 5, 5, 8};
  Rng rng(5);
  std::vector<reference::AttentionWeights<double>> ws;
  for (int l = 0; l < 4; ++l)
    ws.push_back(test::random_attention<double>(s, rng, test::BiasOptions::all()));
  std::vector<const AttentionWeights<double>*> wp;
  for (const auto& w : ws) wp.push_back(&w);
  const std::vector<AttentionConfig> cfg(4, AttentionConfig{s, 0.0, RopeSpec::none()});
  const auto h = rewrite::hybrid_cross<double>(wp, cfg);
  ASSERT_EQ(h.rest.size(), 3u);
  ASSERT_EQ(h.reports.size(), 3u);
  const RowMatrix<double> E = test::random_matrix<double>(23, s.d, 1.0, rng);
  const RowMatrix<double> x = test::random_matrix<double>(1, s.d, 1.0, rng);
  const RowMatrix<double> K1 = E * h.first.wk;
  const double c = h.first.report.cond_estimate;
  EXPECT_TRUE(test::close_to(eval_keys(x, h.first, K1),
                             reference::cross_attention<double>(x, E, ws[0], cfg[0]), bound(c),
                             "double roundoff x cond(W_K1)", "f64"));
  for (size_t l = 1; l < 4; ++l) {
    EXPECT_EQ(h.rest[l - 1].row_width, s.kv_width());
    EXPECT_LT(h.reports[l - 1].residual, 1e3 * unit_roundoff<double>());
    EXPECT_TRUE(test::close_to(eval_inputs(x, h.rest[l - 1], K1, {}),
                               reference::cross_attention<double>(x, E, ws[l], cfg[l]), bound(c),
                               "double roundoff x cond(W_K1)", "f64"))
        << "layer " << l;
  }
}

using test::expect_error_containing;

TEST(EncDecRewrite, Errors) {
  Rng rng(6);
  const AttentionShape gqa{48, 6, 2, 8};
  const auto wg = test::random_attention<double>(gqa, rng);
  EXPECT_THROW(rewrite::keys_attention<float>(wg, {gqa, 0, {}}), UnsupportedError);
  expect_error_containing(
      [&] {
        rewrite::keys_attention<float>(wg, {gqa, 0, {}});
      },
      "kv_width expected d=48, got 16");
  // Singular W_K.
  const AttentionShape s{16, 2, 2, 8};
  auto w = test::random_attention<double>(s, rng);
  w.wk.col(3).setZero();
  EXPECT_THROW(rewrite::keys_attention<float>(w, {s, 0, {}}), NumericalError);
  expect_error_containing(
      [&] {
        rewrite::keys_attention<float>(w, {s, 0, {}});
      },
      "W_K is singular");
  // RoPE: the inputs form needs raw projections.
  const auto wr = test::random_attention<double>(s, rng);
  AttentionConfig rope{s, 0, RopeSpec::full(8, RopeLayout::half_split)};
  EXPECT_THROW(rewrite::inputs_attention<float>(wr, rope), UnsupportedError);
  expect_error_containing([&] { rewrite::inputs_attention<float>(wr, rope); },
                          "rope expected disabled");
  // Wrong weight shapes.
  auto bad = wr;
  bad.wv.resize(16, 15);
  expect_error_containing(
      [&] {
        rewrite::inputs_attention<float>(bad, {s, 0, {}});
      },
      "wv expected 16x16, got 16x15");
  // Whole decoder: layer count mismatch, GQA cross with the keys form.
  auto c = test::whisper_config(32, 4, 3, 16, 8);
  auto wd = test::random_encdec<double>(c, 64, rng, true);
  wd.blocks.pop_back();
  expect_error_containing([&] { rewrite::plan_encdec_decoder<float>(c, wd, {}); },
                          "blocks.size() (= layers) expected 3, got 2");
  const auto cg = test::whisper_config(32, 4, 2, 16, 8, /*kv_heads=*/2);
  const auto wgd = test::random_encdec<double>(cg, 64, rng, true);
  EXPECT_NO_THROW(rewrite::plan_encdec_decoder<float>(
      cg, wgd, {rewrite::SelfForm::inputs, rewrite::CrossForm::shared_encoder}));
  expect_error_containing(
      [&] {
        rewrite::plan_encdec_decoder<float>(
            cg, wgd, {rewrite::SelfForm::inputs, rewrite::CrossForm::hybrid});
      },
      "use inputs_attention, the shared encoder cache");
  std::vector<const AttentionWeights<double>*> none;
  expect_error_containing([&] { rewrite::hybrid_cross<float>(none, {}); },
                          "layers expected >= 1, got 0");
}

TEST(EncDecRewrite, PlanReportsConditionOnlyWhereAnInverseIsUsed) {
  Rng rng(7);
  const auto c = test::whisper_config(32, 4, 3, 16, 8);
  const auto w = test::random_encdec<double>(c, 64, rng, true);
  using rewrite::CrossForm;
  using rewrite::SelfForm;
  const auto shared =
      rewrite::plan_encdec_decoder<float>(c, w, {SelfForm::inputs, CrossForm::shared_encoder});
  EXPECT_TRUE(shared.reports.empty());
  EXPECT_EQ(shared.max_cond, 1.0);
  const auto keys = rewrite::plan_encdec_decoder<float>(c, w, {SelfForm::inputs, CrossForm::keys});
  EXPECT_EQ(keys.reports.size(), 3u);
  const auto hybrid = rewrite::plan_encdec_decoder<float>(c, w, {SelfForm::kv, CrossForm::hybrid});
  EXPECT_EQ(hybrid.reports.size(), 3u);
  EXPECT_GT(hybrid.max_cond, 1.0);
  // Folding: the shared form's output bias is bo + bv W_O (Whisper has a v bias).
  const RowVector<double> bo =
      w.blocks[1].cross_attn.bo + w.blocks[1].cross_attn.bv * w.blocks[1].cross_attn.wo;
  EXPECT_TRUE(test::close_to(shared.layers[1].cross_inputs.bo, bo, 1e-6, "float storage", "f32"));
}

}  // namespace
}  // namespace ttx
