// ttx-test-labels: encdec
// ECache / CrossKCache (cache/e_cache.hpp): storage, errors, and the memory accounting of the
// slim-attention paper (arXiv 2503.05840, "Support for encoder-decoder transformers"), reproduced
// from the library's own cache objects' bytes().
#include "ttx/cache/e_cache.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <string>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"
#include "ttx/cache/k_cache.hpp"
#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/x_cache.hpp"

namespace ttx {
namespace {

using test::expect_error_containing;

TEST(ECache, StoresRowsExactlyAndCountsBytes) {
  test::Rng rng(1);
  const RowMatrix<float> E = test::random_matrix<float>(7, 12, 1.0, rng);
  ECache<float> c(12, 10);
  EXPECT_EQ(c.bytes(), 10u * 12u * sizeof(float));
  EXPECT_EQ(c.bytes_per_token(), 12u * sizeof(float));
  c.append(E.topRows(3));
  c.append(E.bottomRows(4));
  EXPECT_EQ(c.size(), 7);
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<float>(c.view()), E));
  c.assign(E.topRows(2));
  EXPECT_EQ(c.size(), 2);
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<float>(c.view()), RowMatrix<float>(E.topRows(2))));
  // A lazy product expression is accepted (and evaluated once, not per coefficient).
  const RowMatrix<float> W = test::random_matrix<float>(12, 12, 0.3, rng);
  c.assign(E * W);
  EXPECT_TRUE(test::close_to(RowMatrix<float>(c.view()),
                             RowMatrix<double>(E.cast<double>() * W.cast<double>()),
                             16 * unit_roundoff<float>(), "one float product", "f32"));
  // bf16 storage rounds once (the same conversion as Eigen's cast).
  ECache<bf16> b(12, 7);
  b.assign(E);
  EXPECT_TRUE(test::bitwise_equal(RowMatrix<bf16>(b.view()), RowMatrix<bf16>(E.cast<bf16>())));
  // The caller's memory.
  std::vector<float> mem(12 * 4);
  ECache<float> ext(mem.data(), 12, 4);
  ext.assign(E.topRows(4));
  EXPECT_EQ(mem[13], E(1, 1));
}

TEST(ECache, Errors) {
  ECache<float> c(8, 4);
  expect_error_containing([&] { c.append(RowMatrix<float>::Zero(2, 7)); },
                          "E.cols() (= d) expected 8, got 7");
  expect_error_containing<CapacityError>([&] { c.assign(RowMatrix<float>::Zero(5, 8)); },
                                         "capacity expected >= 5 rows, got capacity 4");
  c.append(RowMatrix<float>::Zero(3, 8));
  expect_error_containing<CapacityError>(
      [&] { c.append(RowMatrix<float>::Zero(2, 8)); },
      "cache capacity expected >= 5 rows (3 cached + 2 new), got capacity 4");
  ECache<f16> h(2, 2);
  RowMatrix<float> big = RowMatrix<float>::Constant(1, 2, 1e5f);
  EXPECT_TRUE(test::throws<NumericalError>(
      [&] { h.append(big); }, {"value at (0,0) = 100000", "overflows f16 (max 65504)"}));
  expect_error_containing([] { ECache<float>(0, 3); }, "width expected > 0, got 0");
}

TEST(CrossKCache, StoresKeysAndChecks) {
  const AttentionShape s{16, 4, 2, 4};
  CrossKCache<float> k(s, 6);
  EXPECT_EQ(k.bytes(), 6u * 8u * sizeof(float));
  k.assign(RowMatrix<float>::Ones(5, 8));
  EXPECT_EQ(k.size(), 5);
  expect_error_containing([&] { k.assign(RowMatrix<float>::Ones(5, 16)); },
                          "K.cols() (= kv_width) expected 8, got 16");
  expect_error_containing([&] { k.assign(RowMatrix<float>::Ones(7, 8)); },
                          "capacity expected >= 7 rows, got capacity 6");
  expect_error_containing(
      [] {
        CrossKCache<float>({16, 4, 3, 4}, 2);
      },
      "shape.kv_heads expected a divisor of heads=4, got 3");
}

// ---------------------------------------------------------------------------------------------
// The paper's Whisper table ("cache sizes (in M)", activations, p = 1500 encoder tokens, 448
// decoder tokens, MHA with e = d), from the caches a runtime would allocate:
//   baseline = per layer a self KV cache (448) + a cross KV cache (1500)
//   option 1 (K-only)  = per layer a self K cache + a cross K cache
//   option 2 (shared E) = per layer a self K cache + ONE E-cache; the paper's "option 2 cache"
//                         row leaves the E-cache out ("assuming that the entire encoder output
//                         (matrix E) is kept in on-chip SRAM") — so does this test; the ratio
//                         with the E-cache counted is printed as well.

struct WhisperRow {
  const char* name;
  Index d, layers;
  double e_cache, cross_kv, self_kv, baseline, option1, option2;  // the paper's values, in M
};

double millions(std::size_t bytes, std::size_t elem) {
  return static_cast<double>(bytes / elem) / 1e6;
}
double round1(double x) {
  return std::round(x * 10.0) / 10.0;
}

TEST(EncDecMemory, WhisperTableFromCacheObjects) {
  const WhisperRow rows[] = {
      {"tiny", 384, 4, 0.6, 4.6, 1.4, 6.0, 3.0, 0.7},
      {"base", 512, 6, 0.8, 9.2, 2.8, 12.0, 6.0, 1.4},
      {"small", 768, 12, 1.2, 27.6, 8.3, 35.9, 18.0, 4.1},
      {"medium", 1024, 24, 1.5, 73.7, 22.0, 95.7, 47.9, 11.0},
      {"large", 1280, 32, 1.9, 122.9, 36.7, 159.6, 79.8, 18.4},
  };
  using T = f16;  // Whisper's own precision; the table counts activations (bytes / sizeof(T))
  const std::size_t el = sizeof(T);
  const Index p = 1500, n = 448;
  for (const auto& r : rows) {
    const AttentionShape s{r.d, r.d / 64, r.d / 64, 64};
    // Every layer has the same caches: one layer's objects times the layer count (the test
    // measures; it does not allocate all 1.5 GB at once).
    const std::size_t L = static_cast<std::size_t>(r.layers);
    const std::size_t self_kv = L * KVCache<T>(s, n).bytes(),
                      cross_kv = L * KVCache<T>(s, p).bytes(), self_k = L * KCache<T>(s, n).bytes(),
                      cross_k = L * CrossKCache<T>(s, p).bytes();
    const std::size_t e_cache = ECache<T>(r.d, p).bytes();
    const std::size_t baseline = self_kv + cross_kv, option1 = self_k + cross_k;
    const std::size_t option2 = self_k;  // + e_cache when it is not in SRAM
    EXPECT_EQ(round1(millions(e_cache, el)), r.e_cache) << r.name;
    EXPECT_EQ(round1(millions(cross_kv, el)), r.cross_kv) << r.name;
    EXPECT_EQ(round1(millions(self_kv, el)), r.self_kv) << r.name;
    EXPECT_EQ(round1(millions(baseline, el)), r.baseline) << r.name;
    EXPECT_EQ(round1(millions(option1, el)), r.option1) << r.name;
    EXPECT_EQ(round1(millions(option2, el)), r.option2) << r.name;
    const double saving = static_cast<double>(baseline) / static_cast<double>(option2);
    EXPECT_EQ(round1(saving), 8.7) << r.name;
    EXPECT_EQ(2 * option1, baseline) << r.name;  // option 1 halves every cache
    const double with_e = static_cast<double>(baseline) / static_cast<double>(option2 + e_cache);
    std::cout << "Whisper-" << r.name << ": baseline " << millions(baseline, el) << "M, K-only "
              << millions(option1, el) << "M, shared E " << millions(option2, el) << "M (+ E-cache "
              << millions(e_cache, el) << "M): saving " << saving << "x, with the E-cache counted "
              << with_e << "x\n";
    // With the E-cache counted the saving is (2p + 2n) L / (n L + p): below 8.7 for few layers.
    EXPECT_DOUBLE_EQ(with_e, static_cast<double>(2 * p + 2 * n) * r.layers /
                                 static_cast<double>(n * r.layers + p));
  }
}

TEST(EncDecMemory, T5_11B_XCacheIs32xSmaller) {
  // T5-11B: d 1024, 128 heads of 128, e = 16384 (r = 16). Per layer and token the KV cache holds
  // 2e values, the X-cache d, the (right-inverse) K-only cache e.
  const AttentionShape s{1024, 128, 128, 128};
  const Index n = 512;
  const std::size_t kv = KVCache<f16>(s, n).bytes(), x = XCache<f16>(s, n).bytes(),
                    k = KCache<f16>(s, n).bytes(), e = ECache<f16>(s.d, n).bytes();
  EXPECT_EQ(kv, 32 * x);
  EXPECT_EQ(kv, 2 * k);
  EXPECT_EQ(e, x);  // the shared encoder cache is an X-cache of the encoder output
}

}  // namespace
}  // namespace ttx
