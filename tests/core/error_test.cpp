// ttx-test-labels: core
// The error types and the one message shape every check uses.
#include "ttx/core/error.hpp"

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <type_traits>

#include "support/throws.hpp"

using namespace ttx;

static_assert(std::is_base_of_v<std::runtime_error, Error>);
static_assert(std::is_base_of_v<Error, ShapeError>);
static_assert(std::is_base_of_v<Error, CapacityError>);
static_assert(std::is_base_of_v<Error, NumericalError>);
static_assert(std::is_base_of_v<Error, UnsupportedError>);

TEST(CoreError, CheckDimNamesFunctionArgumentExpectedAndActual) {
  EXPECT_NO_THROW(detail::check_dim("f", "x.cols()", 4, 4L));
  try {
    detail::check_dim("f", "x.cols()", 4, 5L);
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_STREQ(e.what(), "ttx::f: x.cols() expected 4, got 5");
  }
}

TEST(CoreError, CheckShapeReportsRowsByCols) {
  const Eigen::MatrixXd m(3, 2);
  EXPECT_NO_THROW(detail::check_shape("g", "W", m, 3, 2));
  try {
    detail::check_shape("g", "W", m, 2, 3);
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_STREQ(e.what(), "ttx::g: W expected 2x3, got 3x2");
  }
}

TEST(CoreError, RaiseMapsKindsToTypes) {
  EXPECT_THROW(detail::raise(ErrorKind::shape, "m"), ShapeError);
  EXPECT_THROW(detail::raise(ErrorKind::capacity, "m"), CapacityError);
  EXPECT_THROW(detail::raise(ErrorKind::numerical, "m"), NumericalError);
  EXPECT_THROW(detail::raise(ErrorKind::unsupported, "m"), UnsupportedError);
  EXPECT_THROW(detail::raise(ErrorKind::other, "m"), Error);
  EXPECT_TRUE(test::throws<CapacityError>(
      [] { detail::require(false, ErrorKind::capacity, "h", "rows expected <= 3, got 4"); },
      {"ttx::h: rows expected <= 3, got 4"}));
  EXPECT_NO_THROW(detail::require(true, ErrorKind::capacity, "h", "never"));
  // The message as parts (formatted only when the check fails), numbers at full precision.
  EXPECT_TRUE(test::throws<ShapeError>(
      [] { detail::require(false, ErrorKind::shape, "h", "eps expected >= 0, got ", -0.1, "!"); },
      {"ttx::h: eps expected >= 0, got -0.10000000000000001!"}));
}

TEST(CoreError, ConcatKeepsFullDoublePrecision) {
  EXPECT_EQ(detail::concat("a", 1, "b", 2.5), "a1b2.5");
  EXPECT_EQ(detail::concat(0.1), "0.10000000000000001");  // 17 significant digits round-trip
}
