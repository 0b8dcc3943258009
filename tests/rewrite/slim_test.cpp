// ttx-test-labels: slim
// The offline slim-attention rewrite (SPEC.md §1), checked in double: the identities V = K W_KV,
// K = V W_VK and the bias fold hold on random inputs for every basis (square, right inverse,
// completed), the report says what was done, and every refusal is a clear error.
#include "ttx/rewrite/slim.hpp"

#include <gtest/gtest.h>

#include <Eigen/SVD>

#include <cmath>
#include <limits>
#include <string>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;
using rewrite::Basis;
using rewrite::CacheForm;

namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();

/// Expected relative error of the double-precision identity check: the LU / QR solve is
/// backward stable, so the reconstruction error is about d * eps * cond.
double double_bound(const rewrite::SlimReport& r, Index d) {
  return 8.0 * static_cast<double>(d) * kEps * std::max(1.0, r.cond_estimate);
}

std::string bound_why(const rewrite::SlimReport& r, Index d) {
  return detail::concat("8 d eps cond, d = ", d, ", cond = ", r.cond_estimate);
}

/// Runs the identity checks of one rewrite in double on random inputs X (n x d):
///  * the recomputed rows equal the projections up to a row constant, and that constant, expanded
///    to the query heads and pushed through W_O, is exactly the folded output bias change;
///  * for keys, the cached key columns are the keys (plus b_K under RoPE).
void check_identity(const reference::AttentionWeights<double>& w, const AttentionConfig& cfg,
                    const rewrite::SlimAttention<double>& slim, test::Rng& rng) {
  const AttentionShape& s = cfg.shape;
  const Index n = 5, e = s.kv_width(), dk = s.head_dim;
  const RowMatrix<double> X = test::random_matrix<double>(n, s.d, 1.0, rng);
  RowMatrix<double> K = X * w.wk, V = X * w.wv;
  if (w.bk.size()) K.rowwise() += w.bk;
  if (w.bv.size()) V.rowwise() += w.bv;
  RowMatrix<double> C = slim.form == CacheForm::inputs ? X : RowMatrix<double>(X * slim.cache_proj);
  if (slim.cache_bias.size()) C.rowwise() += slim.cache_bias;
  const rewrite::SlimReport& r = slim.report;
  // The row that must be constant: target minus what the runtime recomputes.
  RowMatrix<double> diff;
  if (slim.form == CacheForm::keys) {
    // Cached key columns are the keys (b_K kept under RoPE, dropped otherwise).
    RowMatrix<double> Kc = C.leftCols(e);
    if (!slim.cache_bias.size() && w.bk.size()) Kc.rowwise() += w.bk;
    EXPECT_TRUE(test::close_to(Kc, K, 16 * s.d * kEps, "same product, double", "f64"));
    diff = V - C * slim.value_map;
  } else if (slim.form == CacheForm::values) {
    RowMatrix<double> Vc = C.leftCols(e);
    if (w.bv.size()) Vc.rowwise() += w.bv;
    EXPECT_TRUE(test::close_to(Vc, V, 16 * s.d * kEps, "same product, double", "f64"));
    // Keys recomputed from the values up to a constant row (it drops out of the softmax).
    const RowMatrix<double> dk_rows = K - C * slim.query_map;
    const RowMatrix<double> spread = dk_rows.rowwise() - dk_rows.row(0);
    EXPECT_LE(spread.norm() / K.norm(), double_bound(r, s.d)) << bound_why(r, s.d);
    diff = V - C.leftCols(e);
  } else {
    EXPECT_TRUE(test::bitwise_equal(slim.query_map, w.wk));
    EXPECT_TRUE(test::bitwise_equal(slim.value_map, w.wv));
    diff = V - C * slim.value_map;
  }
  const RowMatrix<double> spread = diff.rowwise() - diff.row(0);
  EXPECT_LE(spread.norm() / V.norm(), double_bound(r, s.d)) << bound_why(r, s.d);
  // Folded output bias: bo* = bo + expand(constant) W_O.
  RowVector<double> expanded(s.q_width());
  for (Index i = 0; i < s.heads; ++i)
    expanded.segment(i * dk, dk) = diff.row(0).segment(s.kv_head_of(i) * dk, dk);
  RowVector<double> bo = expanded * w.wo;
  if (w.bo.size()) bo += w.bo;
  RowVector<double> got = slim.bo.size() ? slim.bo : RowVector<double>::Zero(s.d);
  // Relative to the size of what was folded (a head output row through W_O), so a fold of zero
  // is judged on the same scale as a fold of a real bias.
  const double scale = bo.norm() + V.norm() / std::sqrt(static_cast<double>(n)) * w.wo.norm() /
                                       std::sqrt(static_cast<double>(s.q_width()));
  EXPECT_LE((got - bo).norm() / scale, double_bound(r, s.d) + 1e-12) << bound_why(r, s.d);
  // The query side is untouched.
  EXPECT_TRUE(test::bitwise_equal(slim.wq, w.wq));
  EXPECT_TRUE(test::bitwise_equal(slim.wo, w.wo));
}

using test::error_text;

}  // namespace

TEST(SlimRewrite, SquareKeysIdentityAndReport) {
  test::Rng rng(11);
  for (bool rope : {false, true}) {
    AttentionConfig cfg{
        {48, 4, 4, 12}, 0.0, rope ? RopeSpec::full(12, RopeLayout::interleaved) : RopeSpec::none()};
    const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
    const auto slim = rewrite::slim_attention<double>(w, cfg);
    const auto& r = slim.report;
    EXPECT_EQ(r.basis, Basis::square);
    EXPECT_EQ(slim.cached_width, 48);
    EXPECT_GT(r.cond_estimate, 1.0);
    EXPECT_LE(r.residual, double_bound(r, 48)) << bound_why(r, 48);
    EXPECT_EQ(r.max_abs_transform, slim.value_map.cwiseAbs().maxCoeff());
    EXPECT_TRUE(r.representable);
    EXPECT_FALSE(r.ill_conditioned);
    // The error gain is the formula it claims to be.
    const double gain = w.wk.norm() * slim.value_map.norm() / (std::sqrt(48.0) * w.wv.norm());
    EXPECT_NEAR(r.error_gain, gain, 1e-12 * gain);
    // Without RoPE b_K leaves the cache; with RoPE it stays in the keys.
    EXPECT_EQ(slim.cache_bias.size(), rope ? 48 : 0);
    EXPECT_EQ(r.bytes_per_token_before, 2u * 48u * sizeof(double));
    EXPECT_EQ(r.bytes_per_token_after, 48u * sizeof(double));
    EXPECT_EQ(r.bytes_per_token_saved, static_cast<long long>(48 * sizeof(double)));
    EXPECT_TRUE(r.notes.empty()) << r.notes;
    check_identity(w, cfg, slim, rng);
  }
}

TEST(SlimRewrite, BiasesEachAloneFoldExactly) {
  test::Rng rng(12);
  const AttentionShape s{32, 4, 4, 8};
  for (int which = 0; which < 4; ++which)
    for (bool rope : {false, true}) {
      test::BiasOptions b;
      (which == 0 ? b.q : which == 1 ? b.k : which == 2 ? b.v : b.o) = true;
      AttentionConfig cfg{s, 0.0, rope ? RopeSpec::full(8, RopeLayout::half_split) : RopeSpec{}};
      const auto w = test::random_attention<double>(s, rng, b);
      const auto slim = rewrite::slim_attention<double>(w, cfg);
      EXPECT_EQ(slim.bq.size(), b.q ? 32 : 0);
      check_identity(w, cfg, slim, rng);
    }
}

TEST(SlimRewrite, RightInverseForWideKeys) {
  // e > d (T5, CodeGemma): W_KV = W_K^+ W_V is e x e, the cache holds the e-wide keys.
  test::Rng rng(13);
  for (bool rope : {false, true}) {
    AttentionConfig cfg{
        {24, 4, 4, 12}, 0.0, rope ? RopeSpec::full(12, RopeLayout::half_split) : RopeSpec::none()};
    const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
    const auto slim = rewrite::slim_attention<double>(w, cfg);
    EXPECT_EQ(slim.report.basis, Basis::right_inverse);
    EXPECT_EQ(slim.cached_width, 48);
    EXPECT_EQ(slim.value_map.rows(), 48);
    EXPECT_EQ(slim.value_map.cols(), 48);
    EXPECT_LE(slim.report.residual, double_bound(slim.report, 48));
    check_identity(w, cfg, slim, rng);
    // The inputs form needs d = 24 values per token instead of 2e = 96.
    if (!rope) {
      const auto x = rewrite::slim_attention<double>(w, cfg, {CacheForm::inputs});
      EXPECT_EQ(x.report.bytes_per_token_after, 24u * sizeof(double));
      EXPECT_EQ(x.report.bytes_per_token_saved, static_cast<long long>(72 * sizeof(double)));
      check_identity(w, cfg, x, rng);
    }
  }
}

TEST(SlimRewrite, CompletedBasisForGqa) {
  // d/2 < e < d: cache K* = X [W_K | W_extra] (width d), keys are its first e columns.
  test::Rng rng(14);
  for (bool rope : {false, true}) {
    // e = 24, d = 40: 2e/d = 1.2
    AttentionConfig cfg{
        {40, 6, 3, 8}, 0.0, rope ? RopeSpec::full(8, RopeLayout::interleaved) : RopeSpec::none()};
    const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
    const auto slim = rewrite::slim_attention<double>(w, cfg);
    const auto& r = slim.report;
    EXPECT_EQ(r.basis, Basis::completed);
    EXPECT_EQ(slim.cached_width, 40);
    EXPECT_TRUE(test::bitwise_equal(RowMatrix<double>(slim.cache_proj.leftCols(24)), w.wk));
    // The extra columns are orthogonal to W_K's columns and W_K* is no worse conditioned than W_K.
    const RowMatrix<double> cross = w.wk.transpose() * slim.cache_proj.rightCols(16);
    EXPECT_LE(cross.norm(), 1e-12 * w.wk.norm() * slim.cache_proj.rightCols(16).norm());
    Eigen::JacobiSVD<Eigen::MatrixXd> svk(w.wk), svs(slim.cache_proj);
    const double cond_k = svk.singularValues()(0) / svk.singularValues()(23);
    const double cond_s = svs.singularValues()(0) / svs.singularValues()(39);
    EXPECT_LE(cond_s, cond_k * (1 + 1e-9)) << "cond(W_K*) " << cond_s << " vs cond(W_K) " << cond_k;
    EXPECT_EQ(r.bytes_per_token_before, 48u * sizeof(double));
    EXPECT_EQ(r.bytes_per_token_after, 40u * sizeof(double));
    check_identity(w, cfg, slim, rng);
  }
}

TEST(SlimRewrite, ValuesForm) {
  test::Rng rng(15);
  for (const AttentionShape& s :
       {AttentionShape{32, 4, 4, 8}, AttentionShape{16, 4, 4, 8}, AttentionShape{40, 6, 3, 8}}) {
    AttentionConfig cfg{s, 0.0, RopeSpec::none()};
    const auto w = test::random_attention<double>(s, rng, test::BiasOptions::all());
    const auto slim = rewrite::slim_attention<double>(w, cfg, {CacheForm::values});
    EXPECT_EQ(slim.form, CacheForm::values);
    EXPECT_EQ(slim.cache_bias.size(), 0);
    EXPECT_EQ(slim.value_map.size(), 0);
    EXPECT_EQ(slim.query_map.rows(), slim.cached_width);
    check_identity(w, cfg, slim, rng);
  }
}

TEST(SlimRewrite, InputsFormAnyShape) {
  test::Rng rng(16);
  for (const AttentionShape& s : {AttentionShape{32, 4, 4, 8}, AttentionShape{32, 4, 1, 8}}) {
    AttentionConfig cfg{s, 0.0, RopeSpec::none()};
    const auto w = test::random_attention<double>(s, rng, test::BiasOptions::all());
    const auto slim = rewrite::slim_attention<double>(w, cfg, {CacheForm::inputs});
    EXPECT_EQ(slim.report.basis, Basis::identity);
    EXPECT_EQ(slim.report.cond_estimate, 1.0);
    EXPECT_EQ(slim.report.error_gain, 1.0);
    check_identity(w, cfg, slim, rng);
    if (s.kv_heads == 1) {  // MQA: 2e = 16 < d = 32, the X-cache costs memory, and says so
      EXPECT_LT(slim.report.bytes_per_token_saved, 0);
      EXPECT_NE(slim.report.notes.find("saves no cache memory"), std::string::npos)
          << slim.report.notes;
    }
  }
}

TEST(SlimRewrite, ByteAccountingInTheCacheType) {
  test::Rng rng(17);
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  const auto w = test::random_attention<double>(cfg.shape, rng);
  const auto slim = rewrite::slim_attention<float, bf16>(w, cfg);
  EXPECT_EQ(slim.report.weight_type, "f32");
  EXPECT_EQ(slim.report.cache_type, "bf16");
  EXPECT_EQ(slim.report.bytes_per_token_before, 2u * 32u * 2u);
  EXPECT_EQ(slim.report.bytes_per_token_after, 32u * 2u);
  EXPECT_EQ(slim.report.bytes_per_token_saved, 64);
  // Stored weights are the double results rounded once to float.
  const auto d = rewrite::slim_attention<double>(w, cfg);
  EXPECT_TRUE(test::bitwise_equal(slim.value_map, RowMatrix<float>(d.value_map.cast<float>())));
}

TEST(SlimRewrite, IllConditionedIsFlaggedOrRefused) {
  test::Rng rng(18);
  const Index d = 32;
  AttentionConfig cfg{{d, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto w = test::random_attention<double>(cfg.shape, rng);
  w.wk = test::with_singular_values(test::geometric_singular_values(d, 1e8), rng);
  rewrite::SlimOptions opt;
  opt.max_condition = 1e4;
  const auto slim = rewrite::slim_attention<double>(w, cfg, opt);
  EXPECT_TRUE(slim.report.ill_conditioned);
  EXPECT_GT(slim.report.cond_estimate, 1e7);  // the 1-norm estimate of a 2-norm cond of 1e8
  EXPECT_NE(slim.report.notes.find("condition number"), std::string::npos) << slim.report.notes;
  check_identity(w, cfg, slim, rng);  // still exact in double, within d eps cond
  opt.strict = true;
  const std::string msg = error_text([&] { rewrite::slim_attention<double>(w, cfg, opt); });
  EXPECT_NE(msg.find("above options.max_condition = 10000"), std::string::npos) << msg;
  EXPECT_THROW(rewrite::slim_attention<double>(w, cfg, opt), NumericalError);
  // The X-cache has no inverse: nothing to flag.
  const auto x = rewrite::slim_attention<double>(w, cfg, {CacheForm::inputs, 1e4, true});
  EXPECT_FALSE(x.report.ill_conditioned);
}

TEST(SlimRewrite, UnrepresentableInHalfIsFlaggedOrRefused) {
  test::Rng rng(19);
  const Index d = 16;
  AttentionConfig cfg{{d, 2, 2, 8}, 0.0, RopeSpec::none()};
  auto w = test::random_attention<double>(cfg.shape, rng);
  std::vector<double> sv = test::geometric_singular_values(d, 10.0);
  sv.back() = 1e-6;  // W_K^{-1} reaches 1e6 > 65504 = max half
  w.wk = test::with_singular_values(sv, rng);
  const auto slim = rewrite::slim_attention<f16>(w, cfg);
  EXPECT_GT(slim.report.max_abs_transform, max_finite<f16>());
  EXPECT_FALSE(slim.report.representable);
  EXPECT_NE(slim.report.notes.find("not representable in f16"), std::string::npos);
  rewrite::SlimOptions strict;
  strict.strict = true;
  EXPECT_TRUE(test::throws<NumericalError>(
      [&] { rewrite::slim_attention<f16>(w, cfg, strict); },
      {"rewrite::slim_attention", "a transformed weight is not representable in f16",
       "max finite 65504"}));
  EXPECT_TRUE(rewrite::slim_attention<float>(w, cfg, strict).report.representable);
}

TEST(SlimRewrite, SingularBasisIsAnError) {
  test::Rng rng(20);
  AttentionConfig cfg{{16, 2, 2, 8}, 0.0, RopeSpec::none()};
  auto w = test::random_attention<double>(cfg.shape, rng);
  w.wk.col(3) = w.wk.col(5);
  std::string msg = error_text([&] { rewrite::slim_attention<double>(w, cfg); });
  EXPECT_NE(msg.find("W_K is singular"), std::string::npos) << msg;
  EXPECT_THROW(rewrite::slim_attention<double>(w, cfg), NumericalError);
  // Values form: a singular W_V.
  w = test::random_attention<double>(cfg.shape, rng);
  w.wv.setZero();
  msg = error_text([&] { rewrite::slim_attention<double>(w, cfg, {CacheForm::values}); });
  EXPECT_NE(msg.find("W_V is singular"), std::string::npos) << msg;
  // Rank-deficient wide W_K (right inverse) and GQA W_K (completion).
  AttentionConfig wide{{8, 2, 2, 8}, 0.0, RopeSpec::none()};
  auto ww = test::random_attention<double>(wide.shape, rng);
  ww.wk.row(2) = ww.wk.row(6);
  msg = error_text([&] { rewrite::slim_attention<double>(ww, wide); });
  EXPECT_NE(msg.find("W_K (rows, for its right inverse) is singular"), std::string::npos) << msg;
  AttentionConfig gqa{{40, 6, 3, 8}, 0.0, RopeSpec::none()};
  auto wg = test::random_attention<double>(gqa.shape, rng);
  wg.wk.col(0) = wg.wk.col(1);
  msg = error_text([&] { rewrite::slim_attention<double>(wg, gqa); });
  EXPECT_NE(msg.find("W_K* = [W_K | W_extra] is singular"), std::string::npos) << msg;
}

TEST(SlimRewrite, NarrowKvIsUnsupportedWithTheNumbers) {
  test::Rng rng(21);
  AttentionConfig cfg{{64, 8, 2, 8}, 0.0, RopeSpec::none()};  // e = 16 <= d/2 = 32
  const auto w = test::random_attention<double>(cfg.shape, rng);
  for (CacheForm f : {CacheForm::keys, CacheForm::values}) {
    const std::string msg = error_text([&] { rewrite::slim_attention<float>(w, cfg, {f}); });
    EXPECT_NE(msg.find(std::string("no ") + rewrite::name(f) + " compression exists"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("e = kv_heads*head_dim = 16 <= d/2 = 32"), std::string::npos) << msg;
    EXPECT_NE(msg.find("CacheForm::inputs 64 (saves nothing)"), std::string::npos) << msg;
    EXPECT_THROW(rewrite::slim_attention<float>(w, cfg, {f}), UnsupportedError);
  }
  // e exactly d/2 is also no compression.
  AttentionConfig half{{32, 4, 2, 8}, 0.0, RopeSpec::none()};
  EXPECT_TRUE(test::throws<UnsupportedError>(
      [&] {
        rewrite::slim_attention<float>(test::random_attention<double>(half.shape, rng), half);
      },
      {"no CacheForm::keys compression exists", "e = kv_heads*head_dim = 16 <= d/2 = 16"}));
}

TEST(SlimRewrite, RopeOnlyWithKeys) {
  test::Rng rng(22);
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  const auto w = test::random_attention<double>(cfg.shape, rng);
  for (CacheForm f : {CacheForm::values, CacheForm::inputs}) {
    const std::string msg = error_text([&] { rewrite::slim_attention<float>(w, cfg, {f}); });
    EXPECT_NE(msg.find(std::string(rewrite::name(f)) + " does not support RoPE"), std::string::npos)
        << msg;
    EXPECT_THROW(rewrite::slim_attention<float>(w, cfg, {f}), UnsupportedError);
  }
}

TEST(SlimRewrite, BadShapesNameTheArgument) {
  test::Rng rng(23);
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto good = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
  auto expect = [&](reference::AttentionWeights<double> w, const std::string& what) {
    const std::string msg = error_text([&] { rewrite::slim_attention<float>(w, cfg); });
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_THROW(rewrite::slim_attention<float>(w, cfg), ShapeError);
  };
  auto w = good;
  w.wk = RowMatrix<double>::Zero(32, 16);
  expect(w, "w.wk expected 32x32, got 32x16");
  w = good;
  w.wv = RowMatrix<double>::Zero(31, 32);
  expect(w, "w.wv expected 32x32, got 31x32");
  w = good;
  w.wq = RowMatrix<double>::Zero(32, 8);
  expect(w, "w.wq expected 32x32, got 32x8");
  w = good;
  w.wo = RowMatrix<double>::Zero(8, 32);
  expect(w, "w.wo expected 32x32, got 8x32");
  w = good;
  w.bk = RowVector<double>::Zero(3);
  expect(w, "w.bk.size() expected 32, got 3");
  w = good;
  w.bv = RowVector<double>::Zero(3);
  expect(w, "w.bv.size() expected 32, got 3");
  w = good;
  w.bo = RowVector<double>::Zero(3);
  expect(w, "w.bo.size() expected 32, got 3");
  w = good;
  w.bq = RowVector<double>::Zero(3);
  expect(w, "w.bq.size() expected 32, got 3");
  rewrite::SlimOptions opt;
  opt.max_condition = -1;
  EXPECT_NE(error_text([&] {
              rewrite::slim_attention<float>(good, cfg, opt);
            }).find("options.max_condition expected >= 0, got -1"),
            std::string::npos);
  AttentionConfig bad_rope{{32, 4, 4, 8}, 0.0, RopeSpec::full(10, RopeLayout::half_split)};
  EXPECT_NE(error_text([&] {
              rewrite::slim_attention<float>(good, bad_rope);
            }).find("rope.rotary_dim expected even and <= head_dim=8, got 10"),
            std::string::npos);
  AttentionConfig bad_heads{{32, 4, 3, 8}, 0.0, RopeSpec::none()};
  EXPECT_TRUE(test::throws<ShapeError>([&] { rewrite::slim_attention<float>(good, bad_heads); },
                                       {"shape.kv_heads expected a divisor of heads=4, got 3"}));
}

TEST(SlimRewrite, ValidateCatchesTamperedWeights) {
  test::Rng rng(24);
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto slim = rewrite::slim_attention<float>(test::random_attention<double>(cfg.shape, rng), cfg);
  EXPECT_NO_THROW(slim.validate("test"));
  slim.value_map.resize(31, 32);
  const std::string msg = error_text([&] { slim.validate("test"); });
  EXPECT_NE(msg.find("slim.value_map (W_KV) expected 32x32, got 31x32"), std::string::npos) << msg;
}
