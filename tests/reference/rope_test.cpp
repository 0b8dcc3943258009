// ttx-test-labels: reference
// Reference RoPE: decode(encode(x)) == x in both pair layouts, partial rotary, supplied inv_freq;
// the layouts are one permutation apart; scores depend only on relative position; bad input.
#include "ttx/reference/rope.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {

constexpr Index kHeads = 3, kDim = 8;

std::vector<RopeSpec> specs() {
  std::vector<RopeSpec> out;
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    out.push_back(RopeSpec::full(kDim, layout));
    RopeSpec partial = RopeSpec::full(kDim, layout);
    partial.rotary_dim = 4;  // GPT-J / NeoX style partial rotary
    out.push_back(partial);
    RopeSpec supplied = RopeSpec::full(kDim, layout);
    supplied.inv_freq = {0.9, 0.05, 3e-3, 1e-4};  // e.g. Llama-3 / NTK scaled frequencies
    out.push_back(supplied);
  }
  return out;
}

template <class T>
void decode_inverts_encode() {
  test::Rng rng(11);
  const RowMatrix<T> X = test::random_matrix<T>(5, kHeads * kDim, 1.0, rng);
  for (const RopeSpec& spec : specs()) {
    const RowMatrix<T> Y = reference::rope<T>(X, kHeads, kDim, spec, 7, +1);
    const RowMatrix<T> Z = reference::rope<T>(Y, kHeads, kDim, spec, 7, -1);
    // Each element passes through two plane rotations with the same rounded cos/sin: a few
    // units of roundoff, and cos^2 + sin^2 = 1 only to ~u after rounding.
    EXPECT_TRUE(
        test::close_to(Z, X, 8 * unit_roundoff<T>(), "two rotations, ~4u each way", type_name<T>()))
        << "layout " << int(spec.layout) << " r=" << spec.rotary_dim;
    // ...and the rotation is not the identity (the test could otherwise not fail).
    EXPECT_GT((Y - X).norm(), 0.1 * X.norm());
    // Columns beyond rotary_dim are untouched, bit for bit.
    for (Index h = 0; h < kHeads; ++h) {
      const Index rest = kDim - spec.rotary_dim;
      if (rest == 0) continue;
      const RowMatrix<T> a = Y.middleCols(h * kDim + spec.rotary_dim, rest);
      const RowMatrix<T> b = X.middleCols(h * kDim + spec.rotary_dim, rest);
      EXPECT_TRUE(test::bitwise_equal(a, b));
    }
  }
}

}  // namespace

TEST(ReferenceRope, DecodeInvertsEncodeDouble) {
  decode_inverts_encode<double>();
}
TEST(ReferenceRope, DecodeInvertsEncodeFloat) {
  decode_inverts_encode<float>();
}

TEST(ReferenceRope, PositionZeroIsIdentity) {
  test::Rng rng(12);
  const RowMatrix<double> X = test::random_matrix<double>(1, kHeads * kDim, 1.0, rng);
  for (const RopeSpec& spec : specs())
    EXPECT_TRUE(test::bitwise_equal(reference::rope<double>(X, kHeads, kDim, spec, 0), X));
}

// Half-split pair j = (j, j + r/2) and interleaved pair j = (2j, 2j+1): permuting the columns
// maps one layout onto the other, and the arithmetic is the same, so the results are bitwise equal.
TEST(ReferenceRope, LayoutsArePermutationsOfEachOther) {
  test::Rng rng(13);
  const RowMatrix<double> X = test::random_matrix<double>(4, kHeads * kDim, 1.0, rng);
  for (Index r : {Index(8), Index(4)}) {
    RopeSpec half = RopeSpec::full(kDim, RopeLayout::half_split);
    RopeSpec inter = RopeSpec::full(kDim, RopeLayout::interleaved);
    half.rotary_dim = inter.rotary_dim = r;
    // column c of the interleaved input = column perm[c] of the half-split input
    std::vector<Index> perm(static_cast<size_t>(kDim));
    for (Index c = 0; c < kDim; ++c) perm[static_cast<size_t>(c)] = c;
    for (Index j = 0; j < r / 2; ++j) {
      perm[static_cast<size_t>(2 * j)] = j;
      perm[static_cast<size_t>(2 * j + 1)] = j + r / 2;
    }
    RowMatrix<double> Xi(X.rows(), X.cols());
    for (Index h = 0; h < kHeads; ++h)
      for (Index c = 0; c < kDim; ++c)
        Xi.col(h * kDim + c) = X.col(h * kDim + perm[static_cast<size_t>(c)]);
    const RowMatrix<double> Yh = reference::rope<double>(X, kHeads, kDim, half, 5);
    const RowMatrix<double> Yi = reference::rope<double>(Xi, kHeads, kDim, inter, 5);
    RowMatrix<double> Yh_perm(X.rows(), X.cols());
    for (Index h = 0; h < kHeads; ++h)
      for (Index c = 0; c < kDim; ++c)
        Yh_perm.col(h * kDim + c) = Yh.col(h * kDim + perm[static_cast<size_t>(c)]);
    EXPECT_TRUE(test::bitwise_equal(Yi, Yh_perm)) << "r=" << r;
  }
}

// Linear position scaling: inv_freq / 2 at position 2m is the default at position m (the angles
// 2m * (f/2) and m * f are the same double), so the result is bitwise equal.
TEST(ReferenceRope, SuppliedInvFreqIsUsed) {
  test::Rng rng(14);
  const RowMatrix<double> X = test::random_matrix<double>(1, kHeads * kDim, 1.0, rng);
  const RopeSpec plain = RopeSpec::full(kDim, RopeLayout::half_split);
  RopeSpec scaled = plain;
  for (double f : plain.frequencies()) scaled.inv_freq.push_back(f / 2);
  EXPECT_TRUE(test::bitwise_equal(reference::rope<double>(X, kHeads, kDim, scaled, 12),
                                  reference::rope<double>(X, kHeads, kDim, plain, 6)));
  EXPECT_FALSE(test::bitwise_equal(reference::rope<double>(X, kHeads, kDim, scaled, 12),
                                   reference::rope<double>(X, kHeads, kDim, plain, 12)));
}

// The point of RoPE: <rope(q, m), rope(k, n)> depends on m - n only.
TEST(ReferenceRope, ScoresDependOnRelativePosition) {
  test::Rng rng(15);
  const RowMatrix<double> q = test::random_matrix<double>(1, kDim, 1.0, rng);
  const RowMatrix<double> k = test::random_matrix<double>(1, kDim, 1.0, rng);
  for (const RopeSpec& spec : specs()) {
    auto score = [&](Index m, Index n) {
      return reference::rope<double>(q, 1, kDim, spec, m)
          .row(0)
          .dot(reference::rope<double>(k, 1, kDim, spec, n).row(0));
    };
    const double a = score(9, 4), b = score(20, 15);
    EXPECT_NEAR(a, b, 1e-13 * q.norm() * k.norm());
    EXPECT_GT(std::abs(score(9, 4) - score(9, 5)), 1e-6);
  }
}

TEST(ReferenceRope, BadInputNamesTheArgument) {
  const RowMatrix<double> X = RowMatrix<double>::Zero(2, kHeads * kDim);
  RopeSpec odd = RopeSpec::full(kDim, RopeLayout::interleaved);
  odd.rotary_dim = 5;
  EXPECT_TRUE(
      test::throws<ShapeError>([&] { reference::rope<double>(X, kHeads, kDim, odd, 0); },
                               {"reference::rope", "rope.rotary_dim", "head_dim=8", "got 5"}));
  RopeSpec wide = RopeSpec::full(10, RopeLayout::interleaved);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::rope<double>(X, kHeads, kDim, wide, 0); },
                                       {"rope.rotary_dim", "<= head_dim=8", "got 10"}));
  RopeSpec freqs = RopeSpec::full(kDim, RopeLayout::half_split);
  freqs.inv_freq = {1.0, 0.1};
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::rope<double>(X, kHeads, kDim, freqs, 0); },
                                       {"rope.inv_freq", "expected 4 entries", "got 2"}));
  RopeSpec base = RopeSpec::full(kDim, RopeLayout::half_split, -1.0);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::rope<double>(X, kHeads, kDim, base, 0); },
                                       {"rope.base", "expected > 0", "got -1"}));
  const RowMatrix<double> narrow = RowMatrix<double>::Zero(2, kHeads * kDim - 1);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::rope<double>(narrow, kHeads, kDim, RopeSpec::full(kDim, RopeLayout::half_split),
                                0);
      },
      {"X.cols() (= heads*head_dim)", "expected 24", "got 23"}));
}
