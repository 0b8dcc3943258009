// ttx-test-labels: cache
// RowCache: append/view round trip per storage type, exact bytes(), capacity overflow leaves the
// cache unchanged, half/bf16 overflow detection, external (caller's) memory, extend, rows(),
// truncate, and every bad-input message.
#include "ttx/cache/row_cache.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

template <class T>
class RowCacheTyped : public ::testing::Test {};
using Storage = ::testing::Types<float, double, bf16, f16>;
TYPED_TEST_SUITE(RowCacheTyped, Storage);

TYPED_TEST(RowCacheTyped, AppendViewBytesAndOverflowLeavesCacheUnchanged) {
  using T = TypeParam;
  test::Rng rng(91);
  RowCache<T> c(/*width=*/7, /*capacity=*/5);
  EXPECT_EQ(c.bytes(), 5u * 7u * sizeof(T));  // exact: capacity x width x sizeof(T)
  EXPECT_EQ(c.bytes_per_token(), 7u * sizeof(T));
  EXPECT_TRUE(c.empty());
  const RowMatrix<double> a = test::random_matrix<double>(3, 7, 1.0, rng);
  c.append(a);
  ASSERT_EQ(c.size(), 3);
  // Stored as T: exactly the round-to-nearest conversion of each value.
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<T>(c.view()), RowMatrix<T>(a.cast<T>())));
  const RowMatrix<T> before = c.view();
  const RowMatrix<double> three = test::random_matrix<double>(3, 7, 1.0, rng);
  EXPECT_TRUE(test::throws<CapacityError>(
      [&] { c.append(three); },
      {"RowCache::append", "capacity expected >= 6 rows", "3 cached + 3 new", "got capacity 5"}));
  EXPECT_EQ(c.size(), 3);
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<T>(c.view()), before));
  EXPECT_EQ(c.free_rows(), 2);
  c.append(three.topRows(2));
  EXPECT_EQ(c.size(), 5);
  EXPECT_EQ(c.bytes(), 5u * 7u * sizeof(T));  // never grows
}

TEST(RowCache, HalfAndBfloat16OverflowIsDetectedAndLeavesCacheUnchanged) {
  RowCache<f16> h(3, 4);
  RowMatrix<double> ok(1, 3);
  ok << 1.0, -65504.0, 2.0;  // half's largest finite value fits
  h.append(ok);
  RowMatrix<double> big(2, 3);
  big << 1.0, 2.0, 3.0, 4.0, 70000.0, 6.0;
  EXPECT_TRUE(test::throws<NumericalError>(
      [&] { h.append(big); },
      {"RowCache::append", "value at (1,1) = 70000", "overflows f16", "max 65504"}));
  EXPECT_EQ(h.size(), 1);
  // Infinity is not an overflow (it is already infinite) and is stored as such.
  RowMatrix<double> inf(1, 3);
  inf << std::numeric_limits<double>::infinity(), 0.0, 0.0;
  h.append(inf);
  EXPECT_TRUE(std::isinf(static_cast<float>(h.view()(1, 0))));

  RowCache<bf16> b(2, 2);
  RowMatrix<double> huge(1, 2);
  huge << 1e39, 0.0;  // above bfloat16's ~3.39e38
  EXPECT_TRUE(test::throws<NumericalError>([&] { b.append(huge); }, {"overflows bf16"}));
  EXPECT_EQ(b.size(), 0);
  RowCache<float> f(2, 2);
  f.append(RowMatrix<float>::Constant(1, 2, 3e38f));  // float: no conversion check needed
  EXPECT_EQ(f.size(), 1);
}

TEST(RowCache, ExternalMemoryIsWrittenInPlaceAndNeverOwned) {
  // Width 16 (one AVX-512 register per row): with a smaller fixed-size buffer GCC 12 warns
  // (-Warray-bounds) about Eigen's runtime-guarded 64-byte packet path, a false positive.
  const Index width = 16, capacity = 4;
  std::vector<float> buffer(static_cast<size_t>(width * capacity), -1.0f);
  {
    RowCache<float> c(buffer.data(), width, capacity);
    EXPECT_EQ(c.data(), buffer.data());
    EXPECT_EQ(c.bytes(), static_cast<size_t>(width * capacity) * sizeof(float));
    RowMatrix<float> rows(2, width);
    for (Index i = 0; i < rows.size(); ++i) rows.data()[i] = static_cast<float>(i);
    c.append(rows);
    auto more = c.extend(1);  // a kernel writes the claimed row in place
    more.setConstant(100.0f);
    EXPECT_EQ(c.size(), 3);
    EXPECT_TRUE(test::throws<CapacityError>(
        [&] { c.extend(2); },
        {"RowCache::extend", "capacity expected >= 5 rows", "got capacity 4"}));
    EXPECT_EQ(c.size(), 3);
  }
  // The caller's memory holds the rows and outlives the cache.
  for (size_t i = 0; i < buffer.size(); ++i) {
    const float want = i < 32 ? static_cast<float>(i) : (i < 48 ? 100.0f : -1.0f);
    EXPECT_EQ(buffer[i], want) << "index " << i;
  }
  EXPECT_TRUE(test::throws<ShapeError>([] { RowCache<float>(nullptr, 3, 4); },
                                       {"RowCache", "external expected a non-null pointer"}));
}

TEST(RowCache, RowsTruncateClearAndBadInput) {
  RowCache<double> c(2, 6);
  RowMatrix<double> r(4, 2);
  r << 0, 1, 2, 3, 4, 5, 6, 7;
  c.append(r);
  EXPECT_EQ(c.rows(1, 2)(1, 1), 5.0);
  EXPECT_EQ(c.row_ptr(3)[0], 6.0);
  EXPECT_TRUE(test::throws<ShapeError>([&] { c.rows(3, 2); },
                                       {"RowCache::rows", "rows [3, 5) expected within [0, 4)"}));
  c.truncate(2);
  EXPECT_EQ(c.size(), 2);
  EXPECT_TRUE(test::throws<ShapeError>([&] { c.truncate(3); },
                                       {"RowCache::truncate", "n expected in [0, 2], got 3"}));
  c.clear();
  EXPECT_EQ(c.size(), 0);
  EXPECT_EQ(c.capacity(), 6);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { c.append(RowMatrix<double>::Zero(1, 3)); },
      {"RowCache::append", "rows.cols() (= cache width)", "expected 2", "got 3"}));
  EXPECT_TRUE(test::throws<ShapeError>([&] { c.extend(-1); },
                                       {"RowCache::extend", "count expected >= 0, got -1"}));
  EXPECT_TRUE(test::throws<ShapeError>([] { RowCache<float>(0, 4); },
                                       {"RowCache", "width expected > 0, got 0"}));
  EXPECT_TRUE(
      test::throws<ShapeError>([] { RowCache<float>(4, 0); }, {"capacity expected > 0, got 0"}));
}
