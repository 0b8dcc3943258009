// ttx-test-labels: reference
// Reference linear layer: PyTorch's (out x in) layout equals ttx's (in x out) layout, biases,
// empty inputs, bad input.
#include "ttx/reference/linear.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

TEST(ReferenceLinear, PytorchLayoutEqualsInOutLayout) {
  test::Rng rng(21);
  for (Index in : {1, 7, 24}) {
    const RowMatrix<double> W = test::random_projection<double>(in, 13, rng);  // in x out
    const RowMatrix<double> Wt = W.transpose();  // what nn.Linear.weight holds (out x in)
    const RowVector<double> b = test::random_vector<double>(13, 0, 0.1, rng);
    const RowMatrix<double> X = test::random_matrix<double>(5, in, 1.0, rng);
    const RowMatrix<double> y = reference::linear<double>(X, W, b);
    const RowMatrix<double> y_pt = reference::linear<double>(X, Wt, b, WeightLayout::out_in);
    const RowMatrix<double> y_map =
        reference::linear<double>(X, from_pytorch(Wt.data(), Wt.rows(), Wt.cols()), b);
    // Same products, different storage order of W: the summation order may differ, so roundoff.
    EXPECT_TRUE(test::close_to(y_pt, y, 4 * in * unit_roundoff<double>(),
                               "dot products of length `in`, order may differ", "f64"));
    // The transposed map and the out_in layout read the same memory the same way.
    EXPECT_TRUE(test::bitwise_equal(y_map, y_pt));
    // Against a plain triple loop.
    RowMatrix<double> loop(5, 13);
    for (Index r = 0; r < 5; ++r)
      for (Index c = 0; c < 13; ++c) {
        double s = 0;
        for (Index k = 0; k < in; ++k) s += X(r, k) * Wt(c, k);
        loop(r, c) = s + b(c);
      }
    EXPECT_TRUE(test::close_to(y, loop, 4 * in * unit_roundoff<double>(),
                               "dot products of length `in`", "f64"));
  }
}

TEST(ReferenceLinear, EmptyBiasMeansNoneAndBiasAddsToEveryRow) {
  test::Rng rng(22);
  const RowMatrix<double> W = test::random_projection<double>(6, 4, rng);
  const RowMatrix<double> X = test::random_matrix<double>(3, 6, 1.0, rng);
  const RowVector<double> b = test::random_vector<double>(4, 0, 1.0, rng);
  const RowMatrix<double> y0 = reference::linear<double>(X, W);
  EXPECT_TRUE(test::bitwise_equal(y0, RowMatrix<double>(X * W)));
  const RowMatrix<double> yb = reference::linear<double>(X, W, b);
  EXPECT_TRUE(test::bitwise_equal(yb, RowMatrix<double>(y0.rowwise() + b)));
  const RowMatrix<double> none(0, 6);
  EXPECT_EQ(reference::linear<double>(none, W, b).rows(), 0);
}

TEST(ReferenceLinear, BadInputNamesTheArgument) {
  const RowMatrix<double> W = RowMatrix<double>::Zero(6, 4);  // in x out
  const RowMatrix<double> X = RowMatrix<double>::Zero(2, 5);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { reference::linear<double>(X, W); },
      {"reference::linear", "X.cols() (= W's input width)", "expected 6", "got 5"}));
  // The same W read as PyTorch's (out x in): the input width is its column count, 4.
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { reference::linear<double>(X, W, RowVector<double>(), WeightLayout::out_in); },
      {"X.cols() (= W's input width)", "expected 4", "got 5"}));
  const RowMatrix<double> X6 = RowMatrix<double>::Zero(2, 6);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { reference::linear<double>(X6, W, RowVector<double>::Zero(3)); },
      {"b.size()", "expected 4", "got 3"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::linear<double>(RowMatrix<double>::Zero(2, 4), W, RowVector<double>::Zero(4),
                                  WeightLayout::out_in);
      },
      {"b.size()", "expected 6", "got 4"}));
}
