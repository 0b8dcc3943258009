// ttx-test-labels: cache
// KVCache: K and V of width e = h_kv * d_k, exact bytes, overflow and half-overflow errors that
// leave both K and V unchanged, shape errors.
#include "ttx/cache/kv_cache.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

TEST(KVCache, AppendAndExactBytes) {
  const AttentionShape s{64, 8, 2, 8};  // GQA: e = 16
  KVCache<f16> c(s, 10);
  EXPECT_EQ(c.bytes(), 2u * 10u * 16u * sizeof(f16));
  EXPECT_EQ(c.bytes_per_token(), 2u * 16u * sizeof(f16));
  EXPECT_EQ(c.keys().width(), 16);
  test::Rng rng(101);
  const RowMatrix<float> k = test::random_matrix<float>(3, 16, 1.0, rng);
  const RowMatrix<float> v = test::random_matrix<float>(3, 16, 1.0, rng);
  c.append(k, v);
  EXPECT_EQ(c.size(), 3);
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<f16>(c.keys().view()), RowMatrix<f16>(k.cast<f16>())));
  EXPECT_TRUE(
      test::bitwise_equal(RowMatrix<f16>(c.values().view()), RowMatrix<f16>(v.cast<f16>())));
  c.clear();
  EXPECT_EQ(c.size(), 0);
  EXPECT_EQ(c.capacity(), 10);
}

TEST(KVCache, OverflowLeavesKeysAndValuesUnchanged) {
  const AttentionShape s{16, 2, 2, 8};
  KVCache<float> c(s, 4);
  test::Rng rng(102);
  c.append(test::random_matrix<float>(3, 16, 1.0, rng),
           test::random_matrix<float>(3, 16, 1.0, rng));
  const RowMatrix<float> k0 = c.keys().view(), v0 = c.values().view();
  const RowMatrix<float> two = RowMatrix<float>::Ones(2, 16);
  EXPECT_TRUE(test::throws<CapacityError>(
      [&] { c.append(two, two); },
      {"KVCache::append", "capacity expected >= 5 rows", "got capacity 4"}));
  EXPECT_EQ(c.size(), 3);
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<float>(c.keys().view()), k0));
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<float>(c.values().view()), v0));
}

// V overflows half after K was written: K is rolled back, so the cache stays consistent.
TEST(KVCache, HalfOverflowInValuesRollsBackKeys) {
  const AttentionShape s{8, 1, 1, 8};
  KVCache<f16> c(s, 4);
  c.append(RowMatrix<float>::Ones(1, 8), RowMatrix<float>::Ones(1, 8));
  RowMatrix<float> v = RowMatrix<float>::Ones(1, 8);
  v(0, 5) = 1e5f;
  EXPECT_TRUE(test::throws<NumericalError>([&] { c.append(RowMatrix<float>::Ones(1, 8), v); },
                                           {"value at (0,5) = 100000", "overflows f16"}));
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.keys().size(), 1);
  EXPECT_EQ(c.values().size(), 1);
  RowMatrix<float> k = RowMatrix<float>::Ones(1, 8);
  k(0, 0) = -1e6f;
  EXPECT_TRUE(test::throws<NumericalError>([&] { c.append(k, RowMatrix<float>::Ones(1, 8)); },
                                           {"overflows f16"}));
  EXPECT_EQ(c.keys().size(), 1);
  EXPECT_EQ(c.values().size(), 1);
}

TEST(KVCache, BadShapesNameTheArgument) {
  const AttentionShape s{32, 4, 2, 8};
  KVCache<float> c(s, 4);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { c.append(RowMatrix<float>::Zero(2, 16), RowMatrix<float>::Zero(1, 16)); },
      {"KVCache::append", "v.rows() (= k.rows())", "expected 2", "got 1"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { c.append(RowMatrix<float>::Zero(1, 32), RowMatrix<float>::Zero(1, 16)); },
      {"k.cols()", "expected 16", "got 32"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { c.append(RowMatrix<float>::Zero(1, 16), RowMatrix<float>::Zero(1, 15)); },
      {"v.cols()", "expected 16", "got 15"}));
  EXPECT_EQ(c.size(), 0);
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        KVCache<float>({32, 4, 3, 8}, 4);
      },
      {"KVCache", "shape.kv_heads", "got 3"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        KVCache<float>({32, 4, 4, 8}, 0);
      },
      {"capacity expected > 0, got 0"}));
}
