// ttx-test-labels: unit precision
// ttx::unit_roundoff<T>() is the machine epsilon of T (spacing of 1 and the next value), checked
// against the type's own arithmetic: 1 + eps is the next value after 1, and 1 + eps/2 (a tie)
// rounds to nearest even, back to 1.
#include <gtest/gtest.h>

#include "ttx/core/types.hpp"

namespace ttx {
namespace {

template <class T>
void expect_spacing_at_one(double expected) {
  const double eps = unit_roundoff<T>();
  EXPECT_EQ(eps, expected) << type_name<T>();
  EXPECT_NE(static_cast<double>(T(static_cast<float>(1.0 + eps))), 1.0) << type_name<T>();
  EXPECT_EQ(static_cast<double>(T(static_cast<float>(1.0 + eps))) - 1.0, eps) << type_name<T>();
  // A value halfway between 1 and 1 + eps rounds to the even neighbour, 1.
  EXPECT_EQ(static_cast<double>(T(static_cast<float>(1.0 + eps / 2))), 1.0) << type_name<T>();
}

TEST(Types, UnitRoundoffIsTheSpacingAtOne) {
  expect_spacing_at_one<float>(0x1p-23);
  expect_spacing_at_one<bf16>(0x1p-7);
  expect_spacing_at_one<f16>(0x1p-10);
  const double e = unit_roundoff<double>();
  EXPECT_EQ(e, 0x1p-52);
  volatile double one = 1.0;
  EXPECT_NE(one + e, 1.0);
  EXPECT_EQ(one + e / 2, 1.0);
}

}  // namespace
}  // namespace ttx
