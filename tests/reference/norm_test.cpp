// ttx-test-labels: reference
// Reference RMSNorm / LayerNorm identities: unit RMS, gain conventions (plain vs 1 + g), scale
// and shift invariance, the LayerNorm bias, epsilon, bad input.
#include "ttx/reference/norm.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {
constexpr Index kD = 24;
}

TEST(ReferenceNorm, RmsNormHasUnitRmsWithoutEps) {
  test::Rng rng(31);
  const RowMatrix<double> X = test::random_matrix<double>(5, kD, 3.0, rng);
  const RowMatrix<double> Y =
      reference::norm<double>(X, {RowVector<double>::Ones(kD), {}}, NormSpec::rms(0.0));
  for (Index r = 0; r < Y.rows(); ++r)
    EXPECT_NEAR(Y.row(r).squaredNorm() / kD, 1.0, 1e-14) << "row " << r;
  // rms() is sqrt(mean(a^2) + eps)
  const double direct = std::sqrt(X.row(0).squaredNorm() / kD + 0.25);
  EXPECT_NEAR(reference::rms<double>(X.row(0), 0.25), direct, 1e-15 * direct);
}

// Scaling by a power of two is exact in every step (squares, mean, sqrt, division), so an RMSNorm
// without eps is bitwise scale invariant.
TEST(ReferenceNorm, RmsNormIsScaleInvariantWithoutEps) {
  test::Rng rng(32);
  const RowMatrix<double> X = test::random_matrix<double>(4, kD, 1.0, rng);
  const auto w = test::random_norm<double>(kD, NormSpec::rms(0.0), rng);
  const RowMatrix<double> X4 = 4.0 * X;
  EXPECT_TRUE(test::bitwise_equal(reference::norm<double>(X4, w, NormSpec::rms(0.0)),
                                  reference::norm<double>(X, w, NormSpec::rms(0.0))));
  // With eps the invariance breaks (eps matters for small rows): the test can tell them apart.
  const RowMatrix<double> tiny = 1e-4 * X;
  EXPECT_GT((reference::norm<double>(tiny, w, NormSpec::rms(1e-6)) -
             reference::norm<double>(X, w, NormSpec::rms(1e-6)))
                .norm(),
            1e-3);
}

// Gemma stores g and applies 1 + g: the same as the plain convention with gain 1 + g, bit for bit.
TEST(ReferenceNorm, GainConventions) {
  test::Rng rng(33);
  const RowMatrix<double> X = test::random_matrix<double>(4, kD, 1.0, rng);
  const RowVector<double> g = test::random_vector<double>(kD, 0.0, 0.1, rng);
  const RowVector<double> g1 = g.array() + 1.0;
  EXPECT_TRUE(test::bitwise_equal(
      reference::norm<double>(X, {g, {}}, NormSpec::rms(1e-6, GainConvention::one_plus)),
      reference::norm<double>(X, {g1, {}}, NormSpec::rms(1e-6))));
  // Plain gain: the normalised row times diag(g).
  const RowMatrix<double> unit =
      reference::norm<double>(X, {RowVector<double>::Ones(kD), {}}, NormSpec::rms(1e-6));
  EXPECT_TRUE(test::bitwise_equal(reference::norm<double>(X, {g1, {}}, NormSpec::rms(1e-6)),
                                  RowMatrix<double>(unit.array().rowwise() * g1.array())));
  // A zero stored gain is the identity gain under one_plus, a zero output under plain.
  const RowVector<double> zero = RowVector<double>::Zero(kD);
  EXPECT_TRUE(test::bitwise_equal(
      reference::norm<double>(X, {zero, {}}, NormSpec::rms(1e-6, GainConvention::one_plus)), unit));
  EXPECT_EQ(reference::norm<double>(X, {zero, {}}, NormSpec::rms(1e-6)).norm(), 0.0);
}

TEST(ReferenceNorm, LayerNormCentresScalesAndShifts) {
  test::Rng rng(34);
  RowMatrix<double> X = test::random_matrix<double>(5, kD, 2.0, rng);
  X.array() += 3.0;  // a non-zero mean
  const RowVector<double> ones = RowVector<double>::Ones(kD);
  const RowMatrix<double> Y = reference::norm<double>(X, {ones, {}}, NormSpec::layer(0.0));
  for (Index r = 0; r < Y.rows(); ++r) {
    EXPECT_NEAR(Y.row(r).mean(), 0.0, 1e-15);
    EXPECT_NEAR(Y.row(r).squaredNorm() / kD, 1.0, 1e-14);
  }
  // Shift invariance (to roundoff: the shift changes the rounding of the centred values).
  const RowMatrix<double> shifted = X.array() + 100.0;
  EXPECT_TRUE(test::close_to(reference::norm<double>(shifted, {ones, {}}, NormSpec::layer(0.0)), Y,
                             1e-12, "cancellation of a shift of 100 in double", "f64"));
  // beta is added after the gain.
  const RowVector<double> g = test::random_vector<double>(kD, 1.0, 0.1, rng);
  const RowVector<double> beta = test::random_vector<double>(kD, 0.0, 0.5, rng);
  const RowMatrix<double> Yg = reference::norm<double>(X, {g, {}}, NormSpec::layer(1e-5));
  EXPECT_TRUE(test::bitwise_equal(reference::norm<double>(X, {g, beta}, NormSpec::layer(1e-5)),
                                  RowMatrix<double>(Yg.rowwise() + beta)));
  // eps sits inside the square root next to the variance.
  const RowMatrix<double> one_row = X.topRows(1);
  const RowVector<double> c = one_row.array() - one_row.mean();
  const double var = c.squaredNorm() / kD;
  const RowVector<double> expect = c / std::sqrt(var + 0.5);
  EXPECT_TRUE(test::close_to(reference::norm<double>(one_row, {ones, {}}, NormSpec::layer(0.5)),
                             expect, 1e-15, "same formula", "f64"));
}

TEST(ReferenceNorm, BadInputNamesTheArgument) {
  const RowMatrix<double> X = RowMatrix<double>::Zero(2, kD);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::norm<double>(X, {RowVector<double>::Ones(kD - 1), {}}, NormSpec::rms());
      },
      {"reference::norm", "gain.size()", "expected 24", "got 23"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::norm<double>(X, {RowVector<double>::Ones(kD), RowVector<double>::Zero(3)},
                                NormSpec::layer());
      },
      {"beta.size()", "expected 24", "got 3"}));
}
