// ttx-test-labels: core
// ttx::solve: A X = B in double, its condition estimate and residual, and the errors for a
// singular or non-square A.
#include "ttx/core/linalg.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

TEST(CoreLinalg, SolvesAndReportsConditionAndResidual) {
  test::Rng rng(81);
  const Index n = 16;
  const double cond = 1e6;
  const RowMatrix<double> A =
      test::with_singular_values(test::geometric_singular_values(n, cond), rng);
  const RowMatrix<double> Xtrue = test::random_matrix<double>(n, 5, 1.0, rng);
  const RowMatrix<double> B = A * Xtrue;
  SolveReport rep;
  const RowMatrix<double> X = solve(A, B, &rep, "W_K");
  // Forward error of a backward-stable solve: about cond * u.
  const double u = unit_roundoff<double>();
  EXPECT_TRUE(test::close_to(X, Xtrue, n * cond * u, "forward error <= n * cond * u", "f64"));
  // The 1-norm condition number is within a factor n of the 2-norm one (1e6 by construction);
  // the estimate is a lower bound of the 1-norm value, LAPACK-style estimates within ~3x of it:
  // allow 10x.
  EXPECT_GT(rep.cond_estimate, cond / (10 * n));
  EXPECT_LT(rep.cond_estimate, cond * n);
  // Residual of a backward-stable solve: about n * u (relative to ||B||, times growth ~1 here,
  // and ||A|| ||X|| / ||B|| <= cond).
  EXPECT_LT(rep.residual, n * cond * u);
  EXPECT_GT(rep.residual, 0.0);
}

TEST(CoreLinalg, SingularMatrixIsANumericalError) {
  test::Rng rng(82);
  RowMatrix<double> A = test::random_matrix<double>(6, 6, 1.0, rng);
  A.col(4) = 2.0 * A.col(1) - A.col(0);  // rank 5
  const RowMatrix<double> B = RowMatrix<double>::Identity(6, 6);
  EXPECT_TRUE(
      test::throws<NumericalError>([&] { solve(A, B, nullptr, "W_K"); },
                                   {"ttx::solve", "W_K is singular", "reciprocal condition"}));
  EXPECT_TRUE(test::throws<NumericalError>(
      [&] { solve(RowMatrix<double>::Zero(3, 3), RowMatrix<double>::Ones(3, 1)); },
      {"A is singular"}));
}

TEST(CoreLinalg, ShapesAreChecked) {
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        solve(RowMatrix<double>::Identity(3, 4), RowMatrix<double>::Ones(3, 1), nullptr, "W_Q");
      },
      {"ttx::solve", "W_Q.cols() (square)", "expected 3", "got 4"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] { solve(RowMatrix<double>::Identity(3, 3), RowMatrix<double>::Ones(2, 1)); },
      {"B.rows()", "expected 3", "got 2"}));
}
