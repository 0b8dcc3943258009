// ttx-test-labels: reference
// Reference FFN: activations against their definitions, GLU and MLP against plain formulas,
// ReLU's positive homogeneity, biases, bad input.
#include "ttx/reference/ffn.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

TEST(ReferenceFfn, ActivationsMatchTheirDefinitions) {
  for (double x : {-3.0, -0.5, 0.0, 0.25, 2.0}) {
    EXPECT_EQ(activate(Activation::relu, x), x > 0 ? x : 0.0);
    EXPECT_EQ(activate(Activation::identity, x), x);
    const double sigmoid = 1.0 / (1.0 + std::exp(-x));
    EXPECT_NEAR(activate(Activation::silu, x), x * sigmoid, 1e-15);
    const double phi = 0.5 * std::erfc(-x / std::sqrt(2.0));  // standard normal CDF
    EXPECT_NEAR(activate(Activation::gelu_erf, x), x * phi, 1e-15);
    const double k = std::sqrt(2.0 / M_PI);
    EXPECT_NEAR(activate(Activation::gelu_tanh, x),
                0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x))), 1e-15);
    // The tanh form approximates the erf form (max deviation ~5e-4): different, but close.
    EXPECT_NEAR(activate(Activation::gelu_tanh, x), activate(Activation::gelu_erf, x), 1e-3);
  }
  EXPECT_NE(activate(Activation::gelu_tanh, 1.5), activate(Activation::gelu_erf, 1.5));
}

TEST(ReferenceFfn, GluAndMlpFollowTheirFormulas) {
  test::Rng rng(41);
  const Index d = 12, f = 20;
  const RowMatrix<double> X = test::random_matrix<double>(4, d, 1.0, rng);
  for (Activation a :
       {Activation::silu, Activation::gelu_tanh, Activation::relu, Activation::identity}) {
    const FfnSpec spec{FfnKind::glu, a};
    const auto w = test::random_ffn<double>(d, f, spec, rng, /*biases=*/true);
    RowMatrix<double> gate = (X * w.w_in).rowwise() + w.b_in;
    gate = gate.unaryExpr([&](double v) { return activate(a, v); });
    const RowMatrix<double> up = (X * w.w_up).rowwise() + w.b_up;
    const RowMatrix<double> expect =
        (RowMatrix<double>(gate.cwiseProduct(up)) * w.w_out).rowwise() + w.b_out;
    EXPECT_TRUE(test::close_to(reference::ffn<double>(X, w, spec), expect, 1e-14,
                               "same formula, product order may differ", "f64"))
        << "activation " << int(a);
  }
  const auto m = test::random_ffn<double>(d, f, FfnSpec::mlp(Activation::gelu_erf), rng, true);
  RowMatrix<double> h = (X * m.w_in).rowwise() + m.b_in;
  h = h.unaryExpr([](double v) { return activate(Activation::gelu_erf, v); });
  const RowMatrix<double> expect = (h * m.w_out).rowwise() + m.b_out;
  EXPECT_TRUE(test::close_to(reference::ffn<double>(X, m, FfnSpec::mlp(Activation::gelu_erf)),
                             expect, 1e-14, "same formula", "f64"));
}

// relu(2h) = 2 relu(h) and scaling by 2 is exact: a bias-free ReLU MLP commutes with it bitwise
// (the property FlashNorm's deferred scale relies on).
TEST(ReferenceFfn, ReluMlpIsPositivelyHomogeneous) {
  test::Rng rng(42);
  const auto w = test::random_ffn<double>(8, 16, FfnSpec::mlp(Activation::relu), rng);
  const RowMatrix<double> X = test::random_matrix<double>(3, 8, 1.0, rng);
  const RowMatrix<double> X2 = 2.0 * X;
  const RowMatrix<double> Y2 = 2.0 * reference::ffn<double>(X, w, FfnSpec::mlp(Activation::relu));
  EXPECT_TRUE(
      test::bitwise_equal(reference::ffn<double>(X2, w, FfnSpec::mlp(Activation::relu)), Y2));
}

TEST(ReferenceFfn, BadInputNamesTheArgument) {
  test::Rng rng(43);
  const Index d = 8, f = 16;
  const RowMatrix<double> X = RowMatrix<double>::Zero(2, d);
  auto w = test::random_ffn<double>(d, f, FfnSpec::swiglu(), rng, true);
  auto bad = w;
  bad.w_in = RowMatrix<double>::Zero(d + 1, f);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::ffn<double>(X, bad, FfnSpec::swiglu()); },
                                       {"reference::ffn", "w_in", "expected 8x16", "got 9x16"}));
  bad = w;
  bad.w_out = RowMatrix<double>::Zero(f, d + 2);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::ffn<double>(X, bad, FfnSpec::swiglu()); },
                                       {"w_out", "expected 16x8", "got 16x10"}));
  bad = w;
  bad.w_up = RowMatrix<double>::Zero(d, f - 1);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::ffn<double>(X, bad, FfnSpec::swiglu()); },
                                       {"w_up", "expected 8x16", "got 8x15"}));
  bad = w;
  bad.b_in = RowVector<double>::Zero(f + 1);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::ffn<double>(X, bad, FfnSpec::swiglu()); },
                                       {"b_in.size()", "expected 16", "got 17"}));
  bad = w;
  bad.b_up = RowVector<double>::Zero(3);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::ffn<double>(X, bad, FfnSpec::swiglu()); },
                                       {"b_up.size()", "expected 16", "got 3"}));
  bad = w;
  bad.b_out = RowVector<double>::Zero(f);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::ffn<double>(X, bad, FfnSpec::swiglu()); },
                                       {"b_out.size()", "expected 8", "got 16"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { reference::ffn<double>(RowMatrix<double>::Zero(2, d + 1), w, FfnSpec::swiglu()); },
      {"w_in", "expected 9x16", "got 8x16"}));
}
