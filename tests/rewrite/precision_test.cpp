// ttx-test-labels: precision
// The precision planner and certificates (include/ttx/rewrite/precision.hpp): the planner's
// figures are recomputed here independently (the kernels driven by the test, reference::
// self_attention as the double oracle), its choice is checked against them, and the range and
// cancellation checks are exercised. Small shapes (d <= 64) keep it fast.
#include "ttx/rewrite/precision.hpp"

#include <gtest/gtest.h>

#include <Eigen/QR>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/attention.hpp"

using namespace ttx;
using rewrite::PlanForm;
using rewrite::StorageType;

namespace {

const int kSingleThreaded = [] {
  Eigen::setNbThreads(1);
  return 1;
}();

constexpr Index kD = 64;

RowMatrix<double> orthogonal(Index n, test::Rng& rng) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(test::random_matrix<double>(n, n, 1.0, rng));
  return RowMatrix<double>(Eigen::MatrixXd(qr.householderQ()));
}

/// MHA layer (d = e = 64, 4 heads) whose W_K and W_V have geometric singular values 1 .. 1/cond
/// (times the usual 1 scale of a projection), Whisper-like biases on q, v, o.
AttentionWeights<double> conditioned_layer(double cond_k, double cond_v, test::Rng& rng) {
  const AttentionShape s{kD, 4, 4, 16};
  AttentionWeights<double> w = test::random_attention<double>(s, rng, test::BiasOptions::whisper());
  w.wk = test::with_singular_values(test::geometric_singular_values(kD, cond_k), rng);
  w.wv = test::with_singular_values(test::geometric_singular_values(kD, cond_v), rng);
  return w;
}

AttentionConfig mha_config(RopeSpec rope = RopeSpec::none()) {
  return AttentionConfig{AttentionShape{kD, 4, 4, 16}, 0.0, rope};
}

/// The test's own measurement of one form: the kernels driven directly, the oracle in double on
/// the float-rounded inputs, ||Y - Y_ref||_F / ||Y_ref||_F; inf when the cache refuses a value.
template <class T>
double measure(PlanForm form, const AttentionWeights<double>& w, const AttentionConfig& cfg,
               const RowMatrix<double>& activations, Index steps) {
  const RowMatrix<float> X = activations.cast<float>();
  reference::KVCache<double> rc;
  const RowMatrix<double> ref = reference::self_attention<double>(X.cast<double>(), w, cfg, rc);
  const Index n = X.rows(), p = n - steps, d = cfg.shape.d;
  RowMatrix<float> Y(n, d);
  try {
    if (form == PlanForm::vanilla) {
      const AttentionShape& s = cfg.shape;
      KVCache<T> cache(s, n);
      const RowMatrix<float> Q =
          reference::linear<float>(X, test::cast<float>(w.wq), test::cast<float>(w.bq));
      const RowMatrix<float> K =
          reference::linear<float>(X, test::cast<float>(w.wk), test::cast<float>(w.bk));
      const RowMatrix<float> V =
          reference::linear<float>(X, test::cast<float>(w.wv), test::cast<float>(w.bv));
      RowVector<float> heads(s.q_width());
      kernel::DecodeOptions o;
      o.threads = 1;
      for (Index t = 0; t < n; ++t) {
        cache.append(K.row(t), V.row(t));
        kernel::decode_vanilla(Q.row(t), cache, s, o, heads);
        Y.row(t) =
            reference::linear<float>(heads, test::cast<float>(w.wo), test::cast<float>(w.bo));
      }
    } else {
      rewrite::SlimOptions so;
      so.form = form == PlanForm::keys     ? rewrite::CacheForm::keys
                : form == PlanForm::values ? rewrite::CacheForm::values
                                           : rewrite::CacheForm::inputs;
      const auto slim = rewrite::slim_attention<float, T>(w, cfg, so);
      kernel::SlimWorkspace ws;
      kernel::SlimDecodeOptions o;
      o.threads = 1;
      auto run = [&](auto& cache) {
        kernel::slim_prefill(X.topRows(p), slim, cache, Y.topRows(p), ws);
        for (Index t = p; t < n; ++t) kernel::slim_decode(X.row(t), slim, cache, Y.row(t), ws, o);
      };
      if (form == PlanForm::keys) {
        KCache<T> c(cfg.shape, n, KeyStorage::raw, slim.cached_width);
        run(c);
      } else if (form == PlanForm::values) {
        VCache<T> c(cfg.shape, n, slim.cached_width);
        run(c);
      } else {
        XCache<T> c(cfg.shape, n);
        run(c);
      }
    }
  } catch (const NumericalError&) {
    return std::numeric_limits<double>::infinity();
  }
  return test::relative_error(Y, ref).rel;
}

template <class T>
std::size_t expected_bytes(PlanForm f, const AttentionShape& s) {
  const Index w = f == PlanForm::vanilla  ? 2 * s.kv_width()
                  : f == PlanForm::inputs ? s.d
                                          : rewrite::cached_width(rewrite::CacheForm::keys, s);
  return static_cast<std::size_t>(w) * sizeof(T);
}

/// Checks a plan against the test's own figures: the same errors (the same kernels, the oracle
/// instead of the planner's double attention: they agree to ~1e-15), the same bytes, and the
/// choice = the smallest bytes within budget (ties: smaller error).
template <class T>
void check_plan(const rewrite::LayerPlan& plan, const AttentionWeights<double>& w,
                const AttentionConfig& cfg, const RowMatrix<double>& X, Index steps) {
  SCOPED_TRACE(plan.to_string());
  const PlanForm* best = nullptr;
  static const PlanForm all[] = {PlanForm::vanilla, PlanForm::keys, PlanForm::values,
                                 PlanForm::inputs};
  std::vector<double> err(4, std::numeric_limits<double>::quiet_NaN());
  for (const PlanForm& f : all) {
    const auto& m = plan.measure(f);
    ASSERT_EQ(m.form, f);
    if (!m.admissible) continue;
    EXPECT_EQ(m.bytes_per_token, expected_bytes<T>(f, cfg.shape)) << rewrite::name(f);
    const double e = measure<T>(f, w, cfg, X, steps);
    err[static_cast<size_t>(f)] = e;
    if (std::isinf(e)) {
      EXPECT_TRUE(std::isinf(m.measured_rel_error)) << rewrite::name(f);
    } else if (f == PlanForm::vanilla) {
      // Same algorithm, but the test projects with reference::linear (another float summation
      // order than the planner's GEMV): the figures agree to the float rounding of Q, K, V.
      EXPECT_NEAR(m.measured_rel_error, e, 0.1 * e + 4 * unit_roundoff<float>());
    } else {
      EXPECT_NEAR(m.measured_rel_error, e, 1e-9 + 1e-6 * e) << rewrite::name(f);
    }
    EXPECT_EQ(m.within_budget, m.measured_rel_error <= plan.budget) << rewrite::name(f);
    if (f != PlanForm::vanilla) {
      EXPECT_EQ(m.within_budget, e <= plan.budget) << rewrite::name(f);
    }
    if (e <= plan.budget && (!best || m.bytes_per_token < plan.measure(*best).bytes_per_token ||
                             (m.bytes_per_token == plan.measure(*best).bytes_per_token &&
                              e < err[static_cast<size_t>(*best)])))
      best = &f;
  }
  ASSERT_EQ(plan.choice_within_budget, best != nullptr);
  if (best) {
    EXPECT_EQ(plan.choice, *best) << "expected " << rewrite::name(*best);
    EXPECT_LE(plan.chosen().measured_rel_error, plan.budget);  // never above budget
  }
}

}  // namespace

// The planner's double attention is the oracle's maths (GQA, RoPE, biases).
TEST(PrecisionPlanner, DoubleAttentionMatchesReference) {
  test::Rng rng(11);
  const AttentionShape s{32, 4, 2, 8};
  const AttentionConfig cfg{s, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  const auto w = test::random_attention<double>(s, rng, test::BiasOptions::all());
  const RowMatrix<double> X = test::random_matrix<double>(9, 32, 1.0, rng);
  reference::KVCache<double> cache;
  const RowMatrix<double> ref = reference::self_attention<double>(X, w, cfg, cache);
  const RowMatrix<double> got = rewrite::precision_detail::attention_double(X, w, cfg);
  EXPECT_TRUE(test::close_to(got, ref, 1e-13, "the same maths in double", "f64"));
}

// The synthetic stand-in has heavy tails and outlier channels, as documented.
TEST(PrecisionPlanner, SyntheticActivationsAreHeavyTailedWithOutliers) {
  rewrite::SyntheticActivations sa;
  sa.tokens = 200;
  const RowMatrix<double> X = rewrite::synthetic_activations(kD, sa);
  ASSERT_EQ(X.rows(), 200);
  ASSERT_EQ(X.cols(), kD);
  std::vector<double> col_rms(kD);
  for (Index c = 0; c < kD; ++c) col_rms[c] = std::sqrt(X.col(c).squaredNorm() / X.rows());
  std::vector<double> sorted = col_rms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[kD / 2];
  Index outliers = 0;
  for (double r : col_rms) outliers += r > 5 * median;
  EXPECT_EQ(outliers, sa.outlier_channels);
  // Kurtosis of the ordinary channels well above a Gaussian's 3 (Student-t, 3 dof).
  double m2 = 0, m4 = 0;
  Index cnt = 0;
  for (Index c = 0; c < kD; ++c) {
    if (col_rms[c] > 5 * median) continue;
    for (Index r = 0; r < X.rows(); ++r) {
      m2 += X(r, c) * X(r, c);
      m4 += std::pow(X(r, c), 4);
      ++cnt;
    }
  }
  m2 /= cnt;
  m4 /= cnt;
  EXPECT_GT(m4 / (m2 * m2), 4.0);
}

// Sweep cond(W_K) = cond(W_V) from 1e1 to 1e10 in every storage type: the planner's figures are
// the ones measured here, and its choice follows from them.
TEST(PrecisionPlanner, ChoiceMatchesIndependentMeasurementsAcrossConditionNumbers) {
  for (double cond : {1e1, 1e4, 1e7, 1e10}) {
    test::Rng rng(static_cast<std::uint64_t>(std::log10(cond)) + 100);
    const auto w = conditioned_layer(cond, cond / 10, rng);
    const AttentionConfig cfg = mha_config();
    const RowMatrix<double> X = rewrite::synthetic_activations(kD);
    for (StorageType t : {StorageType::f32, StorageType::f16, StorageType::bf16}) {
      SCOPED_TRACE(testing::Message() << "cond " << cond << ", cache " << rewrite::name(t));
      rewrite::PlanOptions o;
      o.cache = t;
      o.budget = 1e-2;
      const auto plan = rewrite::plan_layer(w, cfg, X, o);
      EXPECT_FALSE(plan.synthetic);
      EXPECT_EQ(plan.tokens, X.rows());
      if (t == StorageType::f32)
        check_plan<float>(plan, w, cfg, X, o.decode_steps);
      else if (t == StorageType::f16)
        check_plan<f16>(plan, w, cfg, X, o.decode_steps);
      else
        check_plan<bf16>(plan, w, cfg, X, o.decode_steps);
      // The cond figures are the rewrite's own estimates.
      rewrite::SlimOptions so;
      EXPECT_DOUBLE_EQ(plan.measure(PlanForm::keys).cond_estimate,
                       rewrite::slim_attention<float>(w, cfg, so).report.cond_estimate);
    }
  }
}

// Both W_K and W_V ill-conditioned: in bf16 the keys and values forms miss the budget, the
// inputs form (no inverse) meets it and is chosen.
TEST(PrecisionPlanner, InputsFormChosenForBf16WhenKeysAndValuesFail) {
  test::Rng rng(7);
  const auto w = conditioned_layer(1e8, 1e8, rng);
  const AttentionConfig cfg = mha_config();
  rewrite::PlanOptions o;
  o.cache = StorageType::bf16;
  o.budget = 2e-2;
  const auto plan = rewrite::plan_layer(w, cfg, o);
  SCOPED_TRACE(plan.to_string());
  EXPECT_TRUE(plan.synthetic);
  EXPECT_GT(plan.measure(PlanForm::keys).measured_rel_error, o.budget);
  EXPECT_GT(plan.measure(PlanForm::values).measured_rel_error, o.budget);
  EXPECT_LE(plan.measure(PlanForm::inputs).measured_rel_error, o.budget);
  EXPECT_EQ(plan.choice, PlanForm::inputs);
  EXPECT_TRUE(plan.choice_within_budget);
  EXPECT_GT(plan.measure(PlanForm::keys).cond_estimate, 1e7);
  check_plan<bf16>(plan, w, cfg, rewrite::synthetic_activations(kD, o.synthetic), o.decode_steps);
  // In float the same inverse costs less, though at cond 1e8 still more than the budget.
  o.cache = StorageType::f32;
  const auto pf = rewrite::plan_layer(w, cfg, o);
  EXPECT_LT(pf.measure(PlanForm::keys).measured_rel_error,
            plan.measure(PlanForm::keys).measured_rel_error);
  EXPECT_EQ(pf.choice, PlanForm::inputs);
}

// RoPE: only vanilla and keys are admissible, and the reasons say why.
TEST(PrecisionPlanner, RopeAdmitsOnlyKeysAndVanilla) {
  test::Rng rng(3);
  const AttentionConfig cfg = mha_config(RopeSpec::full(16, RopeLayout::half_split));
  const auto w = test::random_attention<double>(cfg.shape, rng);
  rewrite::PlanOptions o;
  o.cache = StorageType::f16;
  const auto plan = rewrite::plan_layer(w, cfg, o);
  EXPECT_TRUE(plan.measure(PlanForm::vanilla).admissible);
  EXPECT_TRUE(plan.measure(PlanForm::keys).admissible);
  EXPECT_FALSE(plan.measure(PlanForm::values).admissible);
  EXPECT_FALSE(plan.measure(PlanForm::inputs).admissible);
  EXPECT_NE(plan.measure(PlanForm::values).why_not.find("RoPE"), std::string::npos);
  EXPECT_NE(plan.measure(PlanForm::inputs).why_not.find("RoPE"), std::string::npos);
  EXPECT_EQ(plan.choice, PlanForm::keys);
  // With RoPE the test's own slim measurement still agrees (keys path rotates on read).
  const RowMatrix<double> X = rewrite::synthetic_activations(kD, o.synthetic);
  const double e = measure<f16>(PlanForm::keys, w, cfg, X, o.decode_steps);
  EXPECT_NEAR(plan.measure(PlanForm::keys).measured_rel_error, e, 1e-9 + 1e-6 * e);
}

// GQA with e <= d/2: no keys/values compression exists, inputs costs more than vanilla.
TEST(PrecisionPlanner, NarrowGqaKeepsVanilla) {
  test::Rng rng(5);
  const AttentionConfig cfg{AttentionShape{kD, 8, 2, 8}, 0.0, RopeSpec::none()};
  const auto w = test::random_attention<double>(cfg.shape, rng);
  const auto plan = rewrite::plan_layer(w, cfg);
  EXPECT_FALSE(plan.measure(PlanForm::keys).admissible);
  EXPECT_NE(plan.measure(PlanForm::keys).why_not.find("no CacheForm::keys compression"),
            std::string::npos);
  EXPECT_EQ(plan.choice, PlanForm::vanilla);
}

// fp16 range: a W_KV beyond 65504 is flagged and, stored at f16, fails; cached values beyond
// 65504 make the cache refuse them (inf error, never chosen).
TEST(PrecisionPlanner, Fp16RangeChecks) {
  test::Rng rng(9);
  AttentionWeights<double> w = test::random_attention<double>(mha_config().shape, rng);
  w.wk = 2e-6 * orthogonal(kD, rng);  // W_KV = W_K^{-1} W_V ~ 5e5 Q: far beyond f16
  w.wv = orthogonal(kD, rng);
  const AttentionConfig cfg = mha_config();
  rewrite::PlanOptions o;
  o.cache = StorageType::f16;
  o.weights_in_cache_type = true;
  const auto plan = rewrite::plan_layer(w, cfg, o);
  SCOPED_TRACE(plan.to_string());
  const auto& k = plan.measure(PlanForm::keys);
  EXPECT_GT(k.max_abs_transform, 65504.0);
  EXPECT_FALSE(k.representable);
  EXPECT_FALSE(k.within_budget);
  EXPECT_NE(plan.choice, PlanForm::keys);
  EXPECT_TRUE(plan.measure(PlanForm::values).representable);  // W_VK = W_V^{-1} W_K is tiny

  // Activations beyond f16's range: the vanilla cache refuses them.
  const AttentionWeights<double> w2 = test::random_attention<double>(cfg.shape, rng);
  const RowMatrix<double> X = 5e4 * rewrite::synthetic_activations(kD);
  o.weights_in_cache_type = false;
  const auto p2 = rewrite::plan_layer(w2, cfg, X, o);
  const auto& v = p2.measure(PlanForm::vanilla);
  EXPECT_TRUE(std::isinf(v.measured_rel_error));
  EXPECT_FALSE(v.representable);
  EXPECT_NE(v.notes.find("overflows f16"), std::string::npos) << v.notes;
  EXPECT_TRUE(std::isinf(p2.chosen().measured_rel_error) == false || !p2.choice_within_budget);
  // bf16 has float's range: the same activations fit.
  o.cache = StorageType::bf16;
  EXPECT_TRUE(std::isfinite(
      rewrite::plan_layer(w2, cfg, X, o).measure(PlanForm::vanilla).measured_rel_error));
}

TEST(PrecisionPlanner, ModelPlanTotalsAndTable) {
  test::Rng rng(21);
  std::vector<AttentionWeights<double>> layers = {conditioned_layer(10, 10, rng),
                                                  conditioned_layer(1e9, 1e9, rng)};
  rewrite::PlanOptions o;
  o.cache = StorageType::bf16;
  o.budget = 2e-2;
  const auto m = rewrite::plan_model(layers, mha_config(), o);
  ASSERT_EQ(m.layers.size(), 2u);
  std::size_t total = 0, vanilla = 0;
  double worst = 0;
  for (const auto& l : m.layers) {
    total += l.chosen().bytes_per_token;
    vanilla += l.measure(PlanForm::vanilla).bytes_per_token;
    worst = std::max(worst, l.chosen().measured_rel_error);
  }
  EXPECT_EQ(m.total_bytes_per_token(), total);
  EXPECT_EQ(m.vanilla_bytes_per_token(), vanilla);
  EXPECT_EQ(m.worst_error(), worst);
  EXPECT_TRUE(m.all_within_budget());
  EXPECT_LE(m.worst_error(), o.budget);
  const std::string s = m.to_string();
  EXPECT_NE(s.find("total: " + std::to_string(total) + " B/token"), std::string::npos) << s;
  EXPECT_NE(s.find("cache bf16"), std::string::npos) << s;
  // Caller activations: one per layer.
  const std::vector<RowMatrix<double>> acts = {rewrite::synthetic_activations(kD),
                                               rewrite::synthetic_activations(kD)};
  const auto m2 = rewrite::plan_model(layers, mha_config(), o, acts);
  EXPECT_FALSE(m2.layers[0].synthetic);
}

TEST(PrecisionPlanner, BadInputs) {
  test::Rng rng(1);
  const AttentionConfig cfg = mha_config();
  const auto w = test::random_attention<double>(cfg.shape, rng);
  const RowMatrix<double> X = rewrite::synthetic_activations(kD);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { rewrite::plan_layer(w, cfg, RowMatrix<double>(X.leftCols(32)), {}); },
      {"rewrite::plan_layer", "activations.cols() (= d)", "expected 64", "got 32"}));
  rewrite::PlanOptions o;
  o.budget = 0;
  EXPECT_TRUE(test::throws<ShapeError>([&] { rewrite::plan_layer(w, cfg, X, o); },
                                       {"options.budget", "> 0", "got 0"}));
  o.budget = 1e-2;
  o.decode_steps = X.rows();
  EXPECT_TRUE(test::throws<ShapeError>([&] { rewrite::plan_layer(w, cfg, X, o); },
                                       {"activations.rows()", "decode_steps = 24", "got 24"}));
  AttentionWeights<double> bad = w;
  bad.wk = RowMatrix<double>::Zero(kD, 32);
  EXPECT_TRUE(
      test::throws<ShapeError>([&] { rewrite::plan_layer(bad, cfg); }, {"w.wk", "64x64", "64x32"}));
  RowMatrix<double> nan = X;
  nan(2, 3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(test::throws<NumericalError>([&] { rewrite::plan_layer(w, cfg, nan); },
                                           {"activations", "finite"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        rewrite::plan_model(std::vector<AttentionWeights<double>>{w}, cfg, {}, {X, X});
      },
      {"activations.size()", "expected 1", "got 2"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { rewrite::plan_model(std::vector<AttentionWeights<double>>{}, cfg); },
      {"layers expected at least one"}));
  rewrite::SyntheticActivations sa;
  sa.dof = 2;
  EXPECT_TRUE(test::throws<ShapeError>([&] { rewrite::synthetic_activations(kD, sa); },
                                       {"dof expected > 2", "got 2"}));
}

// ---------------------------------------------------------------------------------------------
// convert_checked

TEST(ConvertChecked, ConvertsAndNamesTheOverflow) {
  RowMatrix<double> m(2, 3);
  m << 1, -2, 3.5, 65504, -0.25, 7;
  const RowMatrix<f16> h = convert_checked<f16>(m, "W_KV");
  for (Index i = 0; i < m.size(); ++i)
    EXPECT_EQ(static_cast<double>(h.data()[i]), m.data()[i]);  // all exact in half
  m(1, 2) = 70000;
  EXPECT_TRUE(test::throws<NumericalError>(
      [&] { convert_checked<f16>(m, "W_KV"); },
      {"convert_checked", "W_KV(1,2)", "70000", "overflows f16", "65504"}));
  EXPECT_NO_THROW(convert_checked<bf16>(m, "W_KV"));  // bf16 has float's range
  m(0, 0) = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(test::throws<NumericalError>([&] { convert_checked<bf16>(m, "W_O"); },
                                           {"W_O(0,0)", "not finite", "bf16"}));
  const RowVector<double> v = RowVector<double>::Constant(4, 1e39);
  EXPECT_TRUE(test::throws<NumericalError>([&] { convert_checked<float>(v, "bias"); },
                                           {"bias(0,0)", "overflows f32"}));
  const RowVector<float> ok = convert_checked<float>(RowVector<double>::Ones(4), "bias");
  EXPECT_EQ(ok.size(), 4);
}

// ---------------------------------------------------------------------------------------------
// Certificates

TEST(PrecisionCertificate, SlimReportsConditionRangeAndMeasuredError) {
  test::Rng rng(31);
  const auto w = conditioned_layer(1e6, 1e2, rng);
  const AttentionConfig cfg = mha_config();
  const RowMatrix<double> X = rewrite::synthetic_activations(kD);
  rewrite::CertifyOptions o;
  o.storage = StorageType::bf16;
  o.budget = 2e-2;
  const auto c = rewrite::certify_slim(w, cfg, rewrite::CacheForm::keys, X, o);
  SCOPED_TRACE(c.to_string());
  ASSERT_GE(c.entries.size(), 4u);
  SolveReport rep;
  ttx::solve(w.wk, w.wv, &rep, "W_K");
  EXPECT_DOUBLE_EQ(c.entries[0].cond, rep.cond_estimate);
  EXPECT_EQ(c.entries[0].type_max, max_finite<bf16>());
  const double e = measure<bf16>(PlanForm::keys, w, cfg, X, 4);
  EXPECT_NEAR(c.entries[3].measured_rel_error, e, 1e-9 + 1e-6 * e);
  EXPECT_EQ(c.entries[3].ok, e <= o.budget);
  EXPECT_EQ(c.ok(), e <= o.budget);
  // The inputs form has no inverse (NaN cond) and a smaller error here.
  const auto ci = rewrite::certify_slim(w, cfg, rewrite::CacheForm::inputs, X, o);
  EXPECT_TRUE(std::isnan(ci.entries[0].cond));
  EXPECT_TRUE(ci.ok()) << ci.to_string();
  // Inadmissible form: the rewrite's own error.
  EXPECT_TRUE(test::throws<UnsupportedError>(
      [&] {
        rewrite::certify_slim(w, mha_config(RopeSpec::full(16, RopeLayout::half_split)),
                              rewrite::CacheForm::inputs, X, o);
      },
      {"does not support RoPE"}));
  rewrite::CertifyOptions bad;
  bad.budget = -1;
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { rewrite::certify_slim(w, cfg, rewrite::CacheForm::keys, X, bad); },
      {"options.budget", "got -1"}));
}

// FlashNorm's norm cancellation (rewrite::cancellation_error): its exact figure is what dropping
// 1/RMS1(a) before a second RMSNorm with eps2 does, and its bound holds.
TEST(PrecisionCertificate, NormCancellationErrorBoundHoldsAgainstMeasurement) {
  test::Rng rng(41);
  const Index d = 32, dk = 16;
  const RowVector<double> g = test::random_vector<double>(d, 1.0, 0.1, rng);
  const RowMatrix<double> W = test::random_projection<double>(d, dk, rng);
  for (double scale : {0.05, 0.5, 3.0, 40.0}) {
    for (double eps2 : {1e-6, 1e-3, 1e-1}) {
      const RowVector<double> a = scale * test::random_vector<double>(d, 0.0, 1.0, rng);
      const double eps1 = 1e-6;
      const double R = std::sqrt(a.squaredNorm() / d + eps1);
      const RowVector<double> yhat = (a / R).cwiseProduct(g) * W;  // vanilla second-norm input
      const RowVector<double> yc = a.cwiseProduct(g) * W;          // cancelled: no 1/RMS1
      auto rms2 = [&](const RowVector<double>& y) {
        return y / std::sqrt(y.squaredNorm() / dk + eps2);
      };
      const RowVector<double> out_v = rms2(yhat), out_c = rms2(yc);
      const double measured = (out_c - out_v).norm() / out_v.norm();
      const auto ce = rewrite::cancellation_error(eps2, R, yhat.squaredNorm() / dk);
      SCOPED_TRACE(testing::Message() << "scale " << scale << ", eps2 " << eps2);
      EXPECT_NEAR(measured, ce.exact, 1e-12 + 1e-9 * ce.exact);
      EXPECT_LE(measured, ce.bound * (1 + 1e-9) + 1e-15);
    }
  }
}

TEST(PrecisionCertificate, FlashNormFoldWithinTheVanillaRule) {
  test::Rng rng(43);
  const Index d = kD, out = 48;
  const RowMatrix<double> W = test::random_projection<double>(d, out, rng);
  const RowVector<double> b = test::random_vector<double>(out, 0, 0.02, rng);
  const RowMatrix<double> A = rewrite::synthetic_activations(d);
  for (const NormSpec& spec : {NormSpec::rms(1e-6), NormSpec::layer(1e-5),
                               NormSpec::rms(1e-6, GainConvention::one_plus)}) {
    const auto norm = test::random_norm<double>(d, spec, rng);
    for (StorageType t : {StorageType::f32, StorageType::f16, StorageType::bf16}) {
      rewrite::CertifyOptions o;
      o.storage = t;
      const auto c = rewrite::certify_flashnorm_fold(spec, norm, W, b, A, o);
      SCOPED_TRACE(c.to_string());
      const auto& folded = c.entries[c.entries.size() - 2];
      const auto& vanilla = c.entries.back();
      ASSERT_NE(folded.what.find("folded output"), std::string::npos);
      EXPECT_TRUE(std::isnan(c.entries[0].cond));  // no inverse
      EXPECT_EQ(c.entries.size(), 4u);             // W*, b* (b given), folded, vanilla
      // SPEC §5 rule: factor 2 on the vanilla order's error at the same type + 4 units floor.
      EXPECT_LE(folded.measured_rel_error,
                2 * vanilla.measured_rel_error + 4 * rewrite::storage_roundoff(t));
      EXPECT_TRUE(c.ok());
    }
  }
  // A gain that pushes W* beyond f16: the certificate fails on range.
  auto norm = test::random_norm<double>(d, NormSpec::rms(), rng);
  norm.gain(5) = 1e6;
  rewrite::CertifyOptions o;
  o.storage = StorageType::f16;
  const auto c = rewrite::certify_flashnorm_fold(NormSpec::rms(), norm, W, b, A, o);
  EXPECT_FALSE(c.ok());
  EXPECT_FALSE(c.entries[0].ok);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        rewrite::certify_flashnorm_fold(NormSpec::rms(), norm, W, b,
                                        RowMatrix<double>(A.leftCols(10)), o);
      },
      {"activations.cols() (= w.rows())", "expected 64", "got 10"}));
}

namespace {
/// A small skipless serial model: d = 32, 4 heads, 2 layers, vocab 40, SwiGLU, no final norm.
ModelConfig skipless_config() {
  ModelConfig cfg;
  cfg.vocab = 40;
  cfg.layers = 2;
  cfg.block.kind = BlockKind::skipless_serial;
  cfg.block.attn = AttentionConfig{AttentionShape{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  cfg.block.ffn = FfnSpec::swiglu();
  cfg.final_norm = false;
  return cfg;
}
}  // namespace

TEST(PrecisionCertificate, SkiplessIdentityErrorsRecomputed) {
  test::Rng rng(51);
  const ModelConfig cfg = skipless_config();
  const auto w = test::random_model<double>(cfg, 64, rng);
  const auto r = rewrite::skipless<double>(cfg, w);
  double prev = 0;
  for (StorageType t : {StorageType::f32, StorageType::bf16}) {
    rewrite::CertifyOptions o;
    o.storage = t;
    const auto c = rewrite::certify_skipless(cfg, w, {}, o);
    SCOPED_TRACE(c.to_string());
    ASSERT_EQ(c.entries.size(), 1u + 2u + 2u);  // embedding, 2 blocks, merged and original e2e
    EXPECT_TRUE(c.not_measured.empty());
    double worst = 0;
    for (Index l = 0; l < 2; ++l) {
      const auto& e = c.entries[1 + l];
      EXPECT_DOUBLE_EQ(e.cond, r.report.layers[l].cond);
      // Recompute ||W_Q round_T(K*) - W_K|| / ||W_K|| (and V) here.
      double err = 0;
      for (int which = 0; which < 2; ++which) {
        const RowMatrix<double>& M =
            which ? r.weights.blocks[l].attn.wv : r.weights.blocks[l].attn.wk;
        const RowMatrix<double>& B = which ? w.blocks[l].attn.wv : w.blocks[l].attn.wk;
        const RowMatrix<double> Mt = t == StorageType::f32
                                         ? RowMatrix<double>(M.cast<float>().cast<double>())
                                         : RowMatrix<double>(M.cast<bf16>().cast<double>());
        err = std::max(err, test::relative_error(w.blocks[l].attn.wq * Mt, B).rel);
      }
      EXPECT_NEAR(e.measured_rel_error, err, 1e-12 + 1e-9 * err);
      worst = std::max(worst, err);
    }
    EXPECT_GT(worst, prev);  // bf16 storage costs more than f32
    prev = worst;
  }
}

TEST(PrecisionCertificate, SkiplessEndToEndErrorRecomputed) {
  test::Rng rng(52);
  const ModelConfig cfg = skipless_config();
  const auto w = test::random_model<double>(cfg, 64, rng);
  const auto r = rewrite::skipless<double>(cfg, w);
  const std::vector<int> tokens = {3, 17, 0, 39, 8, 8, 21, 5};
  // The oracle: the original model in double through reference::DecoderModel.
  reference::DecoderModel<double> oracle(cfg, w);
  const RowMatrix<double> ref = oracle.forward(tokens);
  for (StorageType t : {StorageType::f32, StorageType::bf16}) {
    rewrite::CertifyOptions o;
    o.storage = t;
    o.tokens = tokens;
    const auto c = rewrite::certify_skipless(cfg, w, {}, o);
    SCOPED_TRACE(c.to_string());
    ASSERT_EQ(c.entries.size(), 5u);
    const auto& merged = c.entries[3];
    const auto& original = c.entries[4];
    // Recompute both figures with the runtime driven here, the reference as the double oracle.
    auto run = [&](const ModelConfig& mc, const ModelWeights<double>& mw) {
      return t == StorageType::f32
                 ? RowMatrix<float>(
                       kernel::SkiplessModel<float>(mc, test::cast<float>(mw), 8).forward(tokens))
                 : RowMatrix<float>(
                       kernel::SkiplessModel<bf16>(mc, test::cast<bf16>(mw), 8).forward(tokens));
    };
    const double em = test::relative_error(run(r.config, r.weights), ref).rel;
    const double eo = test::relative_error(run(cfg, w), ref).rel;
    EXPECT_NEAR(merged.measured_rel_error, em, 1e-9 * em + 1e-15);
    EXPECT_NEAR(original.measured_rel_error, eo, 1e-9 * eo + 1e-15);
    // The merge is exact: at float it costs no more than a few roundings of the logits; at bf16
    // it stays within the SPEC §5 rule of the original model's own error (factor 2 plus eps).
    EXPECT_LT(merged.measured_rel_error, 2 * eo + 64 * rewrite::storage_roundoff(t));
    EXPECT_GT(merged.measured_rel_error, 0.0);
  }
  // Synthetic ids when none are given; a bad id is the runtime's ShapeError.
  const auto syn = rewrite::certify_skipless(cfg, w);
  EXPECT_NE(syn.entries.back().note.find("24 synthetic tokens"), std::string::npos)
      << syn.to_string();
  rewrite::CertifyOptions bad;
  bad.tokens = {1, 40};
  EXPECT_TRUE(test::throws<ShapeError>([&] { rewrite::certify_skipless(cfg, w, {}, bad); },
                                       {"token expected in [0, 40)", "got 40"}));
}

TEST(PrecisionCertificate, FirstLayerTableRoundingAndOverflow) {
  test::Rng rng(61);
  BlockConfig cfg;
  cfg.kind = BlockKind::serial;
  cfg.attn =
      AttentionConfig{AttentionShape{32, 4, 2, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  cfg.norm = NormSpec::rms(1e-6);
  cfg.ffn = FfnSpec::swiglu();
  RowMatrix<double> E = test::random_matrix<double>(100, 32, 1.0, rng);
  BlockWeights<double> b;
  b.norm1 = test::random_norm<double>(32, cfg.norm, rng);
  b.norm2 = test::random_norm<double>(32, cfg.norm, rng);
  b.attn = test::random_attention<double>(cfg.attn.shape, rng);
  b.ffn = test::random_ffn<double>(32, 64, cfg.ffn, rng);
  for (StorageType t : {StorageType::f32, StorageType::f16, StorageType::bf16}) {
    rewrite::CertifyOptions o;
    o.storage = t;
    const auto c = rewrite::certify_first_layer(E, b, cfg, o, 50);
    SCOPED_TRACE(c.to_string());
    ASSERT_EQ(c.entries.size(), 2u);
    // Double compute, one rounding to T: every element within u = eps/2 relative (normal
    // range), so the Frobenius norm too.
    EXPECT_LE(c.entries[0].measured_rel_error, 0.5 * rewrite::storage_roundoff(t));
    EXPECT_TRUE(c.ok());
    EXPECT_EQ(c.not_measured.size(), 1u);  // 50 of 100 tokens
  }
  E *= 1e5;  // the residual part of the rows overflows f16
  rewrite::CertifyOptions o;
  o.storage = StorageType::f16;
  const auto c = rewrite::certify_first_layer(E, b, cfg, o);
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.entries[0].note.find("f16"), std::string::npos) << c.to_string();
  EXPECT_TRUE(test::throws<ShapeError>([&] { rewrite::certify_first_layer(E, b, cfg, o, 0); },
                                       {"max_tokens", "got 0"}));
}

TEST(PrecisionCertificate, EncDecCrossCaches) {
  test::Rng rng(71);
  const auto w = conditioned_layer(1e5, 10, rng);
  const AttentionConfig cfg = mha_config();
  const RowMatrix<double> E = rewrite::synthetic_activations(kD);
  rewrite::SyntheticActivations sq;
  sq.tokens = 6;
  sq.seed = 99;
  const RowMatrix<double> X = rewrite::synthetic_activations(kD, sq);
  rewrite::CertifyOptions o;
  o.storage = StorageType::bf16;
  o.budget = 5e-2;
  const auto c = rewrite::certify_encdec(w, cfg, E, X, o);
  SCOPED_TRACE(c.to_string());
  ASSERT_EQ(c.entries.size(), 4u);
  SolveReport rep;
  ttx::solve(w.wk, w.wv, &rep, "W_K");
  EXPECT_DOUBLE_EQ(c.entries[2].cond, rep.cond_estimate);
  const double vanilla = c.entries[0].measured_rel_error, shared = c.entries[1].measured_rel_error,
               keys = c.entries[3].measured_rel_error;
  EXPECT_TRUE(std::isfinite(vanilla) && std::isfinite(shared) && std::isfinite(keys));
  EXPECT_GT(keys, shared);  // the inverse amplifies the cache's rounding; E needs none
  // GQA: no K-only cache; said so.
  const AttentionConfig gqa{AttentionShape{kD, 4, 2, 16}, 0.0, RopeSpec::none()};
  const auto wg = test::random_attention<double>(gqa.shape, rng);
  const auto cg = rewrite::certify_encdec(wg, gqa, E, X, o);
  EXPECT_EQ(cg.entries.size(), 2u);
  EXPECT_NE(cg.not_measured[0].find("e = d"), std::string::npos);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { rewrite::certify_encdec(w, cfg, RowMatrix<double>(E.leftCols(8)), X, o); },
      {"encoder_output.cols() (= d)", "expected 64", "got 8"}));
}
