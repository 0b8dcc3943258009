// ttx-test-labels: core
// RopeSpec: default frequencies, pair indices of both layouts, validation, and the rotation of
// one head (norm-preserving per pair, exactly undone by the opposite sign).
#include "ttx/core/rope.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "support/throws.hpp"

using namespace ttx;

TEST(CoreRope, DefaultFrequenciesAreGeometric) {
  const RopeSpec s = RopeSpec::full(16, RopeLayout::half_split, 500000.0);
  const auto f = s.frequencies();
  ASSERT_EQ(f.size(), 8u);
  EXPECT_EQ(f[0], 1.0);
  // inv_freq[j] = base^(-2j/r): consecutive ratios are all base^(-2/r)
  const double ratio = std::pow(500000.0, -2.0 / 16);
  for (size_t j = 1; j < f.size(); ++j) EXPECT_NEAR(f[j] / f[j - 1], ratio, 1e-15);
  RopeSpec custom = s;
  custom.inv_freq = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(custom.frequencies(), custom.inv_freq);
  EXPECT_FALSE(RopeSpec::none().enabled());
  EXPECT_EQ(s.pairs(), 8);
}

TEST(CoreRope, PairIndicesOfBothLayouts) {
  RopeSpec inter = RopeSpec::full(8, RopeLayout::interleaved);
  RopeSpec half = RopeSpec::full(8, RopeLayout::half_split);
  half.rotary_dim = 6;  // partial: pairs (j, j + 3)
  EXPECT_EQ(inter.pair(0), (std::pair<Index, Index>{0, 1}));
  EXPECT_EQ(inter.pair(3), (std::pair<Index, Index>{6, 7}));
  EXPECT_EQ(half.pair(0), (std::pair<Index, Index>{0, 3}));
  EXPECT_EQ(half.pair(2), (std::pair<Index, Index>{2, 5}));
}

TEST(CoreRope, RotationPreservesPairNormsAndInverts) {
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    const RopeSpec s = RopeSpec::full(8, layout);
    const auto f = s.frequencies();
    Eigen::Matrix<double, 1, 10> x;
    x << 0.3, -1.2, 2.0, 0.7, -0.4, 1.1, 0.05, -2.5, 9.0, -9.0;
    Eigen::Matrix<double, 1, 10> y = x;
    rope_rotate_head(y, s, f, 37.0, +1);
    for (Index j = 0; j < s.pairs(); ++j) {
      const auto [a, b] = s.pair(j);
      EXPECT_NEAR(std::hypot(y(a), y(b)), std::hypot(x(a), x(b)), 1e-15 * 4);
    }
    EXPECT_EQ(y(8), 9.0);  // beyond head_dim's rotated part: untouched
    EXPECT_GT((y - x).norm(), 0.1);
    rope_rotate_head(y, s, f, 37.0, -1);
    EXPECT_LT((y - x).norm(), 1e-14 * x.norm());
  }
}

TEST(CoreRope, ValidateNamesTheField) {
  EXPECT_NO_THROW(RopeSpec::none().validate("f", 8));
  RopeSpec odd = RopeSpec::full(8, RopeLayout::interleaved);
  odd.rotary_dim = 7;
  EXPECT_TRUE(test::throws<ShapeError>([&] { odd.validate("f", 8); },
                                       {"ttx::f",
                                        "rope.rotary_dim expected even and <= "
                                        "head_dim=8, got 7"}));
  RopeSpec freqs = RopeSpec::full(8, RopeLayout::interleaved);
  freqs.inv_freq = {1.0};
  EXPECT_TRUE(test::throws<ShapeError>([&] { freqs.validate("f", 8); },
                                       {"rope.inv_freq expected 4 entries, got 1"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { RopeSpec::full(8, RopeLayout::interleaved, 0.0).validate("f", 8); },
      {"rope.base expected > 0, got 0"}));
}
