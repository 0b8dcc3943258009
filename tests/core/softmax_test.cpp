// ttx-test-labels: core
// Stable softmax (sums to one, no overflow, masked entries) and OnlineSoftmax (streaming and the
// log-sum-exp merge of two partial states equal the stable softmax).
#include "ttx/core/softmax.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "support/random.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}

TEST(CoreSoftmax, StableSoftmaxMatchesDefinitionAndDoesNotOverflow) {
  RowVector<double> s(4);
  s << 0.5, -1.0, 2.0, 0.0;
  RowVector<double> direct = s.array().exp();
  direct /= direct.sum();
  RowVector<double> p = s;
  stable_softmax(p);
  EXPECT_TRUE(test::close_to(p, direct, 1e-15, "same formula", "f64"));
  // Shifted by 1000 the naive exp overflows; the stable form gives the same weights.
  RowVector<double> big = s.array() + 1000.0;
  stable_softmax(big);
  EXPECT_TRUE(test::close_to(big, direct, 1e-13, "shift of 1000 rounds the inputs", "f64"));
  RowVector<float> f = s.cast<float>().array() + 100.0f;  // exp(100) overflows float
  stable_softmax(f);
  EXPECT_TRUE(f.allFinite());
  EXPECT_NEAR(f.sum(), 1.0f, 1e-6f);
}

TEST(CoreSoftmax, MaskedEntriesGetZeroWeight) {
  RowVector<double> s(3);
  s << 1.0, -kInf, 2.0;
  stable_softmax(s);
  EXPECT_EQ(s(1), 0.0);
  EXPECT_NEAR(s(0) + s(2), 1.0, 1e-16);
  RowVector<double> all(2);
  all << -kInf, -kInf;
  stable_softmax(all);  // every key masked: defined as zeros, not NaN
  EXPECT_EQ(all(0), 0.0);
  EXPECT_EQ(all(1), 0.0);
  RowVector<double> empty(0);
  stable_softmax(empty);
}

// softmax(s) V computed three ways: stable, streaming with rescale_to/add, and two halves merged.
TEST(CoreSoftmax, OnlineSoftmaxStreamAndMergeEqualStable) {
  test::Rng rng(71);
  const Index n = 37, dv = 5;
  RowVector<double> s = test::random_vector<double>(n, 0.0, 3.0, rng);
  s(3) = -kInf;  // a masked key inside the stream
  const RowMatrix<double> V = test::random_matrix<double>(n, dv, 1.0, rng);
  RowVector<double> p = s;
  stable_softmax(p);
  const RowVector<double> want = p * V;

  auto stream = [&](Index lo, Index hi, RowVector<double>& acc) {
    OnlineSoftmax<double> st;
    acc = RowVector<double>::Zero(dv);
    for (Index b = lo; b < hi; b += 4) {  // blocks of 4 keys
      const Index e = std::min(hi, b + 4);
      acc *= st.rescale_to(s.segment(b, e - b).maxCoeff());
      for (Index j = b; j < e; ++j) acc += st.add(s(j)) * V.row(j);
    }
    return st;
  };
  RowVector<double> acc;
  const OnlineSoftmax<double> all = stream(0, n, acc);
  EXPECT_TRUE(test::close_to(RowVector<double>(acc / all.sum), want, 1e-14,
                             "exp of the same scores, other summation order", "f64"));

  RowVector<double> a1, a2;
  OnlineSoftmax<double> left = stream(0, 20, a1);
  const OnlineSoftmax<double> right = stream(20, n, a2);
  const auto [fa, fb] = left.merge(right);
  const RowVector<double> merged = (a1 * fa + a2 * fb) / left.sum;
  EXPECT_TRUE(test::close_to(merged, want, 1e-14, "log-sum-exp merge, roundoff only", "f64"));
  EXPECT_DOUBLE_EQ(left.max, s.maxCoeff());

  // Merging an empty state changes nothing.
  OnlineSoftmax<double> copy = all, empty;
  const auto [ka, kb] = copy.merge(empty);
  EXPECT_EQ(ka, 1.0);
  EXPECT_EQ(kb, 0.0);
  EXPECT_EQ(copy.sum, all.sum);
  const auto [ea, eb] = empty.merge(all);
  EXPECT_EQ(ea, 0.0);
  EXPECT_EQ(eb, 1.0);
  EXPECT_EQ(empty.sum, all.sum);
}
