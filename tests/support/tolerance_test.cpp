// ttx-test-labels: support
// The tolerance rule must reject what it should: a candidate worse than factor * baseline +
// floor, NaN, wrong shapes; close_to and bitwise_equal likewise. Also the fixture loader's errors.
#include "support/tolerance.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "support/fixture.hpp"
#include "support/random.hpp"

using namespace ttx;

namespace {

// reference + relative perturbation of size `rel` (in the Frobenius norm).
RowMatrix<double> perturbed(const RowMatrix<double>& ref, double rel, test::Rng& rng) {
  RowMatrix<double> noise = test::random_matrix<double>(ref.rows(), ref.cols(), 1.0, rng);
  noise *= rel * ref.norm() / noise.norm();
  return ref + noise;
}

}  // namespace

TEST(SupportTolerance, WithinRuleAcceptsGoodAndRejectsBadCandidates) {
  test::Rng rng(111);
  const RowMatrix<double> ref = test::random_matrix<double>(6, 9, 1.0, rng);
  const RowMatrix<double> baseline = perturbed(ref, 1e-6, rng);
  const test::Tolerance rule{2.0, 0.0, ""};
  EXPECT_TRUE(test::within_rule(perturbed(ref, 1.5e-6, rng), baseline, ref, rule, "f32"));
  // 3x the baseline's error fails factor 2 ...
  const RowMatrix<double> bad = perturbed(ref, 3e-6, rng);
  const auto r = test::within_rule(bad, baseline, ref, rule, "f32");
  EXPECT_FALSE(r);
  EXPECT_NE(std::string(r.message()).find("candidate rel.err"), std::string::npos);
  // ... passes once the stated reason widens the factor (as a condition number would) ...
  EXPECT_TRUE(test::within_rule(bad, baseline, ref, {4.0, 0.0, "cond 2"}, "f32"));
  // ... and the floor covers an exact baseline but not more.
  EXPECT_FALSE(test::within_rule(bad, ref, ref, {2.0, 1e-6, ""}, "f32"));
  EXPECT_TRUE(test::within_rule(bad, ref, ref, {2.0, 4e-6, ""}, "f32"));
  // NaN and shape mismatches never pass.
  RowMatrix<double> nan = baseline;
  nan(2, 3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_FALSE(test::within_rule(nan, baseline, ref, {1e9, 1e9, ""}, "f32"));
  EXPECT_FALSE(
      test::within_rule(RowMatrix<double>(baseline.topRows(5)), baseline, ref, rule, "f32"));
  EXPECT_FALSE(test::within_rule(baseline, RowMatrix<double>(ref.leftCols(8)), ref, rule, "f32"));
}

TEST(SupportTolerance, CloseToBitwiseAndUlps) {
  test::Rng rng(112);
  const RowMatrix<double> ref = test::random_matrix<double>(3, 4, 1.0, rng);
  EXPECT_TRUE(test::close_to(perturbed(ref, 1e-9, rng), ref, 2e-9, "test", "f64"));
  EXPECT_FALSE(test::close_to(perturbed(ref, 1e-8, rng), ref, 2e-9, "test", "f64"));
  EXPECT_TRUE(test::bitwise_equal(ref, RowMatrix<double>(ref)));
  RowMatrix<double> one_ulp = ref;
  one_ulp(1, 2) = std::nextafter(ref(1, 2), 10.0);
  EXPECT_FALSE(test::bitwise_equal(ref, one_ulp));
  EXPECT_EQ(test::ulp_distance(one_ulp(1, 2), ref(1, 2)), 1);
  EXPECT_EQ(test::ulp_distance(1.0f, std::nextafter(1.0f, 2.0f)), 1);
  EXPECT_EQ(test::ulp_distance(-0.0f, 0.0f), 0);
  EXPECT_EQ(test::ulp_distance(std::nextafter(0.0f, -1.0f), std::nextafter(0.0f, 1.0f)), 2);
  // Relative error is absolute when the reference is zero.
  EXPECT_DOUBLE_EQ(
      test::relative_error(RowMatrix<double>::Constant(1, 1, 3e-9), RowMatrix<double>::Zero(1, 1))
          .rel,
      3e-9);
  EXPECT_GT(test::roundoff_floor<float>(), test::roundoff_floor<double>());
}

TEST(SupportFixture, MissingFixtureAndTensorAreErrors) {
  EXPECT_THROW(test::Fixture("no_such_fixture"), Error);
  const test::Fixture fx("linear_pytorch_layout");
  EXPECT_TRUE(fx.has("w_out_in"));
  EXPECT_EQ(fx.matrix("w_out_in").rows(), 16);
  EXPECT_EQ(fx.vector<float>("b").size(), 16);
  EXPECT_THROW(fx.matrix("nope"), Error);
}
