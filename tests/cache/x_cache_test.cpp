// ttx-test-labels: slim
// XCache: d values per token (2e/d times smaller than a KVCache), exact bytes, errors.
#include "ttx/cache/x_cache.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/throws.hpp"
#include "ttx/cache/kv_cache.hpp"

using namespace ttx;

namespace {

using test::error_text;

template <class T>
class XCacheTyped : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, bf16, f16>;
TYPED_TEST_SUITE(XCacheTyped, StorageTypes);

TYPED_TEST(XCacheTyped, BytesAgainstKvCache) {
  // T5-3B-like: d = 1024, e = 4096: the X-cache is 2e/d = 8 times smaller.
  const AttentionShape t5{1024, 32, 32, 128};
  XCache<TypeParam> x(t5, 100);
  KVCache<TypeParam> kv(t5, 100);
  EXPECT_EQ(x.width(), 1024);
  EXPECT_EQ(x.bytes(), 100u * 1024u * sizeof(TypeParam));
  EXPECT_EQ(8 * x.bytes(), kv.bytes());
  EXPECT_EQ(8 * x.bytes_per_token(), kv.bytes_per_token());
  // MHA square: half.
  const AttentionShape mha{64, 4, 4, 16};
  EXPECT_EQ(2 * XCache<TypeParam>(mha, 7).bytes(), KVCache<TypeParam>(mha, 7).bytes());
}

TYPED_TEST(XCacheTyped, AppendViewTruncate) {
  const AttentionShape s{6, 2, 2, 4};
  XCache<TypeParam> x(s, 5);
  RowMatrix<double> rows(2, 6);
  rows << 1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, -6;
  x.append(rows);
  EXPECT_EQ(x.size(), 2);
  EXPECT_EQ(x.free_rows(), 3);
  EXPECT_TRUE((x.view().template cast<double>() - rows).cwiseAbs().maxCoeff() == 0.0);
  x.truncate(1);
  EXPECT_EQ(x.size(), 1);
  x.clear();
  EXPECT_EQ(x.size(), 0);
}

TEST(XCache, ExternalMemoryAndErrors) {
  const AttentionShape s{6, 2, 2, 4};
  std::vector<float> mem(6 * 2);
  XCache<float> x(mem.data(), s, 2);
  x.append(RowMatrix<float>::Constant(2, 6, 3.0f));
  EXPECT_EQ(mem[11], 3.0f);
  std::string msg = error_text([&] { x.append(RowMatrix<float>::Zero(1, 6)); });
  EXPECT_NE(msg.find("cache capacity expected >= 3 rows (2 cached + 1 new), got capacity 2"),
            std::string::npos)
      << msg;
  EXPECT_THROW(x.append(RowMatrix<float>::Zero(1, 6)), CapacityError);
  x.clear();
  msg = error_text([&] { x.append(RowMatrix<float>::Zero(1, 8)); });
  EXPECT_NE(msg.find("rows.cols() (= cache width) expected 6, got 8"), std::string::npos) << msg;
  msg = error_text([] { XCache<float> bad({0, 2, 2, 4}, 2); });
  EXPECT_NE(msg.find("shape.d expected > 0, got 0"), std::string::npos) << msg;
  msg = error_text([] { XCache<float>(nullptr, {6, 2, 2, 4}, 2); });
  EXPECT_NE(msg.find("external expected a non-null pointer"), std::string::npos) << msg;
}

}  // namespace
