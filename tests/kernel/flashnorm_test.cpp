// ttx-test-labels: flashnorm
// FlashNorm runtime: the deferred-normalization linear (GEMV and GEMM paths, float / double /
// bf16 / half weights), the deferred FFN variants, and RoPE with scalars and gains in the tables,
// each against the reference in double with SPEC.md §5's rule (baseline: the unfused path in the
// same working precision), plus bad input.
#include "ttx/kernel/flashnorm.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "support/random.hpp"
#include "support/tolerance.hpp"
#include "ttx/kernel/flashnorm_ffn.hpp"
#include "ttx/kernel/rope_tables.hpp"
#include "ttx/reference/ffn.hpp"
#include "ttx/reference/norm.hpp"
#include "ttx/reference/rope.hpp"
#include "ttx/rewrite/flashnorm.hpp"

using namespace ttx;

namespace {

template <class F>
void expect_error(F&& f, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "expected a ttx::Error containing: " << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

// The reference RMSNorm (gain 1) of every row, in double.
RowMatrix<double> normed(const RowMatrix<double>& X, double eps) {
  NormWeights<double> unit{RowVector<double>::Ones(X.cols()), {}};
  return reference::norm<double>(X, unit, NormSpec::rms(eps));
}

}  // namespace

template <class T>
class FlashNormLinear : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, bf16, f16>;
TYPED_TEST_SUITE(FlashNormLinear, StorageTypes);

// z = (a W) / RMS(a) + c against RMSNorm-then-linear: GEMV (n = 1, including the threaded split
// at in*out >= 1e6), GEMM (n > 1), awkward widths (not multiples of 16), with and without bias.
TYPED_TEST(FlashNormLinear, MatchesUnfusedWithinRule) {
  using T = TypeParam;
  using C = accum_t<T>;
  test::Rng rng(11);
  const double eps = 1e-5;
  struct Case {
    Index n, in, out;
  };
  for (Case c : {Case{1, 1, 1}, Case{1, 7, 17}, Case{1, 33, 100}, Case{1, 2048, 600},
                 Case{3, 33, 5}, Case{16, 100, 47}, Case{5, 600, 300}}) {
    for (bool with_bias : {false, true}) {
      const RowMatrix<double> X = test::random_matrix<double>(c.n, c.in, 1.0, rng);
      const RowMatrix<T> W = test::random_projection<T>(c.in, c.out, rng);
      const RowVector<T> b =
          with_bias ? test::random_vector<T>(c.out, 0, 0.1, rng) : RowVector<T>();
      RowMatrix<double> ref = normed(X, eps) * W.template cast<double>();
      if (with_bias) ref.rowwise() += b.template cast<double>();
      const RowMatrix<C> Xc = X.cast<C>();
      const RowVector<C> bc = b.template cast<C>();
      RowMatrix<C> cand(c.n, c.out), base(c.n, c.out), Xn(c.n, c.in);
      RowVector<C> scales(c.n);
      kernel::flashnorm_linear<T>(Xc, W, bc, {eps}, cand, scales);
      kernel::rms_normalize<C>(Xc, RowVector<C>(), eps, Xn);
      kernel::linear_unscaled<T>(Xn, W, bc, base);
      EXPECT_TRUE(
          test::within_rule(cand, base, ref, {2.0, test::roundoff_floor<C>(), ""}, type_name<T>()))
          << "n=" << c.n << " in=" << c.in << " out=" << c.out << " bias=" << with_bias;
      for (Index r = 0; r < c.n; ++r)
        EXPECT_NEAR(scales(r), 1.0 / reference::rms<double>(X.row(r), eps),
                    4 * test::roundoff_floor<C>() / reference::rms<double>(X.row(r), eps));
    }
  }
}

// The batch-1 GEMV (hand-written, threads over input rows) and the batch GEMM (Eigen) are two
// products: each row computed alone agrees with the batch's row within the rule, f32 and bf16.
TEST(FlashNormLinearPaths, GemvRowsAgreeWithGemm) {
  test::Rng rng(12);
  const Index n = 4, in = 2048, out = 600;
  const RowMatrix<double> X = test::random_matrix<double>(n, in, 1.0, rng);
  const RowMatrix<double> W = test::random_projection<double>(in, out, rng);
  const RowMatrix<float> Xf = X.cast<float>();
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const RowMatrix<T> Wt = W.cast<T>();
    const RowMatrix<double> ref = normed(X, 1e-6) * Wt.template cast<double>();
    RowMatrix<float> batch(n, out), rows(n, out);
    kernel::flashnorm_linear<T>(Xf, Wt, RowVector<float>(), {1e-6}, batch);
    for (Index r = 0; r < n; ++r) {
      RowMatrix<float> one(1, out);
      kernel::flashnorm_linear<T>(Xf.row(r), Wt, RowVector<float>(), {1e-6}, one);
      rows.row(r) = one.row(0);
    }
    EXPECT_TRUE(test::within_rule(rows, batch, ref, {2.0, test::roundoff_floor<float>(), ""},
                                  type_name<T>()));
  };
  run(float{});
  run(bf16{});
}

// The batch path with bf16 / half weights takes each row's sum of squares in the GEMM's pass over
// a, one 512-wide k block at a time: its scalars must be 1/RMS(a_r) in double. in = 1300 is two
// full k blocks and a ragged one of 276; out = 300 is two column panels (only one may add to the
// sums); batch 2 is below the threading threshold (1e6 multiply-adds), 7 and 64 above it (one
// thread per panel). Rows have different magnitudes, so a row mix-up shows. Bound, for any
// summation order: the float sum of `in` squares is within in * u_f32 (relative, Higham's gamma_in,
// all terms >= 0), 1/sqrt halves that (eps only shrinks it) and the scalar is rounded once to
// float: (in / 2 + 1) * u_f32 = 3.9e-5 relative. Dropping the smallest k block (the ragged one,
// ~21% of the sum) moves the scalar ~12%, 3000x the bound.
TEST(FlashNormLinearPaths, BatchScalarsAreOneOverRmsPerRow) {
  test::Rng rng(13);
  const Index in = 1300, out = 300;
  const double eps = 1e-5;
  const double bound = (static_cast<double>(in) / 2 + 1) * unit_roundoff<float>();
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const RowMatrix<T> W = test::random_projection<T>(in, out, rng);
    for (Index n : {Index(2), Index(7), Index(64)}) {
      RowMatrix<float> X = test::random_matrix<float>(n, in, 1.0, rng);
      for (Index r = 0; r < n; ++r) X.row(r) *= static_cast<float>(0.25 * (1 + r % 5));
      RowMatrix<float> Z(n, out), Xn(n, in), base(n, out);
      RowVector<float> s(n);
      kernel::flashnorm_linear<T>(X, W, RowVector<float>(), {eps}, Z, s);
      for (Index r = 0; r < n; ++r) {
        const double want = 1.0 / reference::rms<double>(X.row(r).cast<double>(), eps);
        EXPECT_LE(std::abs(static_cast<double>(s(r)) - want), bound * want)
            << type_name<T>() << " n=" << n << " row " << r << ": scalar " << s(r) << ", 1/RMS "
            << want;
      }
      // And the scaled product itself against RMSNorm then the same product.
      const RowMatrix<double> ref = normed(X.cast<double>(), eps) * W.template cast<double>();
      kernel::rms_normalize<float>(X, RowVector<float>(), eps, Xn);
      kernel::linear_unscaled<T>(Xn, W, RowVector<float>(), base);
      EXPECT_TRUE(
          test::within_rule(Z, base, ref, {2.0, test::roundoff_floor<float>(), ""}, type_name<T>()))
          << "n=" << n;
    }
  };
  run(bf16{});
  run(f16{});
}

TEST(FlashNormLinearPaths, EmptyInput) {
  // in = 0: the unscaled product is an empty sum, out = bias on every path (the widened-panel
  // GEMM used to leave out unwritten; out starts as NaN so that shows), and 1/RMS of no values
  // (0/0) is refused.
  const RowVector<float> bias = RowVector<float>::LinSpaced(5, -2.0f, 2.0f);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const RowMatrix<T> W(0, 5);
    for (Index n : {Index(1), Index(3)}) {
      const RowMatrix<float> a(n, 0);
      RowMatrix<float> out = RowMatrix<float>::Constant(n, 5, std::nanf(""));
      kernel::linear_unscaled<T>(a, W, bias, out);
      for (Index r = 0; r < n; ++r)
        EXPECT_EQ(out.row(r), bias) << type_name<T>() << " n=" << n << " row " << r;
      expect_error([&] { kernel::flashnorm_linear<T>(a, W, bias, {1e-6}, out); },
                   "a.cols() (the RMS's width) expected >= 1, got 0");
    }
  };
  run(float{});
  run(bf16{});
  run(f16{});
}

template <class T>
class FlashNormFfn : public ::testing::Test {};
using FfnTypes = ::testing::Types<float, double, bf16>;
TYPED_TEST_SUITE(FlashNormFfn, FfnTypes);

// The deferred FFN (gain folded by rewrite::fold_norm_into_ffn) against RMSNorm -> FFN: SwiGLU,
// GeGLU with a gate bias, ReGLU and bilinear (1/RMS^2 at the output), ReLU MLP (whole scale at
// the output), GELU MLP with biases (scale in the first epilogue); Llama (g) and Gemma (1+g).
TYPED_TEST(FlashNormFfn, DeferredScalingMatchesUnfused) {
  using T = TypeParam;
  using C = accum_t<T>;
  test::Rng rng(21);
  const Index n = 3, d = 40, f = 72;
  struct Case {
    FfnSpec spec;
    bool b_in, b_out;
    NormSpec norm;
  };
  const std::vector<Case> cases = {
      {FfnSpec::swiglu(), false, false, NormSpec::rms(1e-6)},
      {FfnSpec::geglu(), true, true, NormSpec::rms(1e-6, GainConvention::one_plus)},
      {FfnSpec::reglu(), false, true, NormSpec::rms(1e-5)},
      {FfnSpec::bilinear(), false, false, NormSpec::rms(1e-5)},
      {FfnSpec::mlp(Activation::relu), false, true, NormSpec::rms(1e-5)},
      {FfnSpec::mlp(Activation::gelu_tanh), true, true, NormSpec::rms(1e-5)},
  };
  for (const Case& c : cases) {
    const RowMatrix<double> X = test::random_matrix<double>(n, d, 1.0, rng);
    auto w = test::cast<T>(test::random_ffn<double>(d, f, c.spec, rng, false));
    if (c.b_in) w.b_in = test::random_vector<T>(f, 0, 0.1, rng);
    if (c.b_out) w.b_out = test::random_vector<T>(d, 0, 0.1, rng);
    const auto g = test::cast<T>(test::random_norm<double>(d, c.norm, rng));
    // Reference and baseline: the unfused RMSNorm -> FFN on the stored weights.
    const auto wd = test::cast<double>(w);
    const RowMatrix<double> ref = reference::ffn<double>(
        reference::norm<double>(X, test::cast<double>(g), c.norm), wd, c.spec);
    const RowMatrix<C> Xc = X.cast<C>();
    const RowMatrix<C> base = reference::ffn<C>(reference::norm<C>(Xc, test::cast<C>(g), c.norm),
                                                test::cast<C>(w), c.spec);
    const auto folded = rewrite::fold_norm_into_ffn(c.norm, g, w, c.spec);
    RowMatrix<C> cand(n, d);
    kernel::flashnorm_ffn<T>(Xc, folded, c.spec, {c.norm.eps}, cand);
    // Storage below double: W* = diag(g) W is rounded once more to T than the stored W.
    const double floor =
        test::roundoff_floor<C>() + (std::is_same_v<T, C> ? 0.0 : unit_roundoff<T>());
    EXPECT_TRUE(test::within_rule(
        cand, base, ref, {2.0, floor, "W* rounded once to the storage type"}, type_name<T>()))
        << "activation " << static_cast<int>(c.spec.act) << " kind "
        << static_cast<int>(c.spec.kind);
  }
}

TEST(FlashNormFfnErrors, BiasesThatBreakTheDeferralAreRefused) {
  test::Rng rng(22);
  const RowMatrix<float> X = test::random_matrix<float>(2, 8, 1.0, rng);
  RowMatrix<float> out(2, 8);
  auto glu = test::random_ffn<float>(8, 12, FfnSpec::swiglu(), rng, true);
  expect_error([&] { kernel::flashnorm_ffn<float>(X, glu, FfnSpec::swiglu(), {1e-6}, out); },
               "w.b_up expected empty");
  auto relu = test::random_ffn<float>(8, 12, FfnSpec::mlp(Activation::relu), rng, true);
  expect_error(
      [&] { kernel::flashnorm_ffn<float>(X, relu, FfnSpec::mlp(Activation::relu), {1e-6}, out); },
      "w.b_in expected empty for a positively homogeneous activation");
  RowMatrix<float> bad(2, 7);
  relu.b_in.resize(0);
  expect_error(
      [&] { kernel::flashnorm_ffn<float>(X, relu, FfnSpec::mlp(Activation::relu), {1e-6}, bad); },
      "out expected 2x8, got 2x7");
}

// Queries: RoPE of (a W) with 1/RMS(a) and 1/sqrt(d_k) folded into the per-token tables equals
// RoPE(RMSNorm(a) W) / sqrt(d_k); both pair layouts, full and partial rotary width.
TEST(RopeTables, DeferredScalarsInTheTables) {
  test::Rng rng(31);
  const Index n = 4, d = 24, heads = 3, dk = 8;
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    for (Index r : {dk, Index(4)}) {
      RopeSpec rope = RopeSpec::full(dk, layout);
      rope.rotary_dim = r;
      const RowMatrix<double> X = test::random_matrix<double>(n, d, 1.0, rng);
      const RowMatrix<double> W = test::random_projection<double>(d, heads * dk, rng);
      const double qs = 1.0 / std::sqrt(static_cast<double>(dk));
      const Index start = 5;
      const RowMatrix<double> ref =
          reference::rope<double>(normed(X, 1e-6) * W, heads, dk, rope, start) * qs;
      const RowMatrix<float> Xf = X.cast<float>();
      const RowMatrix<float> Wf = W.cast<float>();
      const RowMatrix<float> base =
          reference::rope<float>(
              reference::norm<float>(Xf, {RowVector<float>::Ones(d), {}}, NormSpec::rms(1e-6)) * Wf,
              heads, dk, rope, start) *
          static_cast<float>(qs);
      RowMatrix<float> cand(n, heads * dk);
      RowVector<float> s(n);
      kernel::deferred_linear<float>(Xf, Wf, {1e-6}, cand, s);
      kernel::rope_scaled<float>(cand, heads, dk, rope, start, s, qs);
      EXPECT_TRUE(
          test::within_rule(cand, base, ref, {2.0, test::roundoff_floor<float>(), ""}, "f32"))
          << "layout " << static_cast<int>(layout) << " r=" << r;
    }
  }
}

TEST(FlashNormErrors, BadShapesNameTheArgument) {
  const RowMatrix<float> a = RowMatrix<float>::Ones(2, 8);
  const RowMatrix<float> w = RowMatrix<float>::Ones(8, 5);
  RowMatrix<float> out(2, 5);
  RowVector<float> scales(2);
  expect_error(
      [&] {
        kernel::flashnorm_linear<float>(RowMatrix<float>::Ones(2, 7), w, RowVector<float>(), {1e-6},
                                        out);
      },
      "a.cols() (= W.rows(), the input width) expected 8, got 7");
  expect_error(
      [&] { kernel::flashnorm_linear<float>(a, w, RowVector<float>::Ones(4), {1e-6}, out); },
      "bias.size() (= W.cols()) expected 5, got 4");
  RowMatrix<float> small(2, 4);
  expect_error([&] { kernel::flashnorm_linear<float>(a, w, RowVector<float>(), {1e-6}, small); },
               "out expected 2x5, got 2x4");
  RowVector<float> s3(3);
  expect_error([&] { kernel::flashnorm_linear<float>(a, w, RowVector<float>(), {1e-6}, out, s3); },
               "scales.size() (= a.rows()) expected 2, got 3");
  expect_error([&] { kernel::flashnorm_linear<float>(a, w, RowVector<float>(), {-1.0}, out); },
               "rms.eps expected finite and >= 0, got -1");
  RowMatrix<float> q(2, 16);
  expect_error(
      [&] {
        kernel::rope_scaled<float>(q, 2, 8, RopeSpec::full(8, RopeLayout::interleaved), 0,
                                   RowVector<float>::Ones(2), 1.0, {1, 1, 1}, {1, 1, 1});
      },
      "gain_p.size() expected 4, got 3");
  expect_error(
      [&] {
        kernel::rope_scaled<float>(q, 2, 8, RopeSpec::full(8, RopeLayout::interleaved), 0,
                                   RowVector<float>::Ones(3), 1.0);
      },
      "scalars.size() (= X.rows()) expected 2, got 3");
}
