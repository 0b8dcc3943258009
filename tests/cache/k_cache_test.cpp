// ttx-test-labels: slim
// KCache (and the values-only VCache): exact byte accounting (half of a KVCache for MHA), widths
// for the completed basis, key-storage convention, capacity and shape errors.
#include "ttx/cache/k_cache.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/throws.hpp"
#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/v_cache.hpp"

using namespace ttx;

namespace {

using test::error_text;

template <class T>
class KCacheTyped : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, bf16, f16>;
TYPED_TEST_SUITE(KCacheTyped, StorageTypes);

TYPED_TEST(KCacheTyped, MhaBytesAreExactlyHalfOfKvCache) {
  for (const AttentionShape& s : {AttentionShape{2048, 32, 32, 64}, AttentionShape{45, 3, 3, 15}}) {
    const Index capacity = 1000;
    KCache<TypeParam> k(s, capacity);
    KVCache<TypeParam> kv(s, capacity);
    EXPECT_EQ(2 * k.bytes(), kv.bytes());
    EXPECT_EQ(k.bytes(), static_cast<std::size_t>(capacity * s.d) * sizeof(TypeParam));
    EXPECT_EQ(2 * k.bytes_per_token(), kv.bytes_per_token());
    VCache<TypeParam> v(s, capacity);
    EXPECT_EQ(2 * v.bytes(), kv.bytes());
  }
}

TYPED_TEST(KCacheTyped, CompletedBasisWidthAndBytes) {
  // Gemma2-9B-like GQA: e = 2048, d = 3584. K* has width d: 3584 instead of 2 x 2048 per token.
  const AttentionShape s{3584, 16, 8, 256};
  KCache<TypeParam> k(s, 16, KeyStorage::rotated, s.d);
  KVCache<TypeParam> kv(s, 16);
  EXPECT_EQ(k.width(), 3584);
  EXPECT_EQ(k.key_width(), 2048);
  EXPECT_EQ(k.storage(), KeyStorage::rotated);
  EXPECT_EQ(k.bytes(), 16u * 3584u * sizeof(TypeParam));
  EXPECT_EQ(kv.bytes() - k.bytes(), 16u * (4096u - 3584u) * sizeof(TypeParam));
}

TYPED_TEST(KCacheTyped, AppendsConvertAndKeepRows) {
  const AttentionShape s{8, 2, 2, 4};
  KCache<TypeParam> k(s, 4);
  RowMatrix<float> rows(3, 8);
  for (Index i = 0; i < rows.size(); ++i) rows.data()[i] = 0.25f * static_cast<float>(i) - 2.0f;
  k.append(rows);
  EXPECT_EQ(k.size(), 3);
  EXPECT_EQ(k.free_rows(), 1);
  // Multiples of 1/4 in [-2, 4] are exact in every storage type.
  EXPECT_TRUE((k.view().template cast<float>() - rows).cwiseAbs().maxCoeff() == 0.0f);
  k.truncate(1);
  EXPECT_EQ(k.size(), 1);
  k.clear();
  EXPECT_EQ(k.size(), 0);
}

TEST(KCache, ExternalMemory) {
  const AttentionShape s{8, 2, 2, 4};
  std::vector<bf16> mem(8 * 3);
  KCache<bf16> k(mem.data(), s, 3);
  k.append(RowMatrix<float>::Ones(2, 8));
  EXPECT_EQ(static_cast<float>(mem[15]), 1.0f);
  EXPECT_EQ(k.keys().data(), mem.data());
  VCache<bf16> v(mem.data(), s, 3);
  EXPECT_EQ(v.values().data(), mem.data());
}

TEST(KCache, Errors) {
  const AttentionShape s{8, 2, 2, 4};
  KCache<f16> k(s, 2);
  k.append(RowMatrix<float>::Zero(2, 8));
  std::string msg = error_text([&] { k.append(RowMatrix<float>::Zero(1, 8)); });
  EXPECT_NE(msg.find("cache capacity expected >= 3 rows (2 cached + 1 new), got capacity 2"),
            std::string::npos)
      << msg;
  EXPECT_THROW(k.append(RowMatrix<float>::Zero(1, 8)), CapacityError);
  k.clear();
  msg = error_text([&] { k.append(RowMatrix<float>::Zero(1, 7)); });
  EXPECT_NE(msg.find("rows.cols() (= cache width) expected 8, got 7"), std::string::npos) << msg;
  msg = error_text([&] { k.append(RowMatrix<float>::Constant(1, 8, 1e6f)); });
  EXPECT_NE(msg.find("overflows f16"), std::string::npos) << msg;
  EXPECT_EQ(k.size(), 0);
  msg = error_text([] { KCache<float> bad({8, 2, 2, 4}, 2, KeyStorage::raw, 7); });
  EXPECT_NE(msg.find("width expected >= kv_width = 8 (or 0), got 7"), std::string::npos) << msg;
  msg = error_text([] { VCache<float> bad({8, 2, 2, 4}, 2, 5); });
  EXPECT_NE(msg.find("width expected >= kv_width = 8 (or 0), got 5"), std::string::npos) << msg;
  msg = error_text([] { KCache<float> bad({8, 3, 2, 4}, 2); });
  EXPECT_NE(msg.find("shape.kv_heads expected a divisor of heads=3, got 2"), std::string::npos)
      << msg;
  msg = error_text([] { KCache<float> bad({8, 2, 2, 4}, 0); });
  EXPECT_NE(msg.find("capacity expected > 0, got 0"), std::string::npos) << msg;
  EXPECT_STREQ(name(KeyStorage::raw), "KeyStorage::raw");
  EXPECT_STREQ(name(KeyStorage::rotated), "KeyStorage::rotated");
}

}  // namespace
