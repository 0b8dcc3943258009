// ttx-test-labels: reference
// Reference blocks: every BlockKind (serial, parallel, skipless serial and parallel) and the
// Whisper decoder block run, decode steps reproduce the prefill rows, and each kind computes its
// own composition.
#include "ttx/reference/block.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {

BlockConfig config(BlockKind kind) {
  BlockConfig c;
  c.kind = kind;
  c.attn = {{24, 4, 2, 6}, 0.0, RopeSpec::full(6, RopeLayout::half_split)};
  c.norm = NormSpec::rms(1e-6);
  c.ffn = FfnSpec::swiglu();
  return c;
}

BlockWeights<double> weights(const BlockConfig& c, test::Rng& rng) {
  BlockWeights<double> w;
  w.norm1 = test::random_norm<double>(24, c.norm, rng);
  w.norm2 = test::random_norm<double>(24, c.norm, rng);
  w.attn = test::random_attention<double>(c.attn.shape, rng);
  w.ffn = test::random_ffn<double>(24, 40, c.ffn, rng);
  return w;
}

}  // namespace

TEST(ReferenceBlock, EveryKindRunsAndDecodeEqualsPrefill) {
  test::Rng rng(51);
  for (BlockKind kind : {BlockKind::serial, BlockKind::parallel, BlockKind::skipless_serial,
                         BlockKind::skipless_parallel}) {
    const BlockConfig c = config(kind);
    const auto w = weights(c, rng);
    const RowMatrix<double> X = test::random_matrix<double>(5, 24, 1.0, rng);
    reference::KVCache<double> a, b;
    const RowMatrix<double> Y = reference::block<double>(X, w, c, a);
    ASSERT_TRUE(Y.allFinite());
    RowMatrix<double> Z(5, 24);
    Z.topRows(2) = reference::block<double>(X.topRows(2), w, c, b);
    for (Index r = 2; r < 5; ++r) Z.row(r) = reference::block<double>(X.row(r), w, c, b);
    EXPECT_TRUE(test::close_to(Z, Y, 1e-13, "same operations in another grouping", "f64"))
        << "kind " << int(kind);
    EXPECT_EQ(a.size(), 5);
    EXPECT_EQ(b.size(), 5);
  }
}

// Each kind is its documented composition (fresh caches each time, so the attention is identical).
TEST(ReferenceBlock, KindsComposeAsDocumented) {
  test::Rng rng(52);
  const BlockConfig base = config(BlockKind::serial);
  const auto w = weights(base, rng);
  const RowMatrix<double> X = test::random_matrix<double>(4, 24, 1.0, rng);
  auto attn = [&](const RowMatrix<double>& in) {
    reference::KVCache<double> c;
    return reference::self_attention<double>(in, w.attn, base.attn, c);
  };
  auto ffn = [&](const RowMatrix<double>& in) {
    return reference::ffn<double>(in, w.ffn, base.ffn);
  };
  auto n1 = [&](const RowMatrix<double>& in) {
    return reference::norm<double>(in, w.norm1, base.norm);
  };
  auto n2 = [&](const RowMatrix<double>& in) {
    return reference::norm<double>(in, w.norm2, base.norm);
  };
  auto run = [&](BlockKind k) {
    reference::KVCache<double> c;
    return reference::block<double>(X, w, config(k), c);
  };
  const RowMatrix<double> h = X + attn(n1(X));
  EXPECT_TRUE(test::bitwise_equal(run(BlockKind::serial), RowMatrix<double>(h + ffn(n2(h)))));
  EXPECT_TRUE(test::bitwise_equal(run(BlockKind::parallel),
                                  RowMatrix<double>(X + attn(n1(X)) + ffn(n2(X)))));
  EXPECT_TRUE(test::bitwise_equal(run(BlockKind::skipless_serial), ffn(attn(X))));
  EXPECT_TRUE(
      test::bitwise_equal(run(BlockKind::skipless_parallel), RowMatrix<double>(attn(X) + ffn(X))));
  // The kinds really differ.
  EXPECT_GT((run(BlockKind::serial) - run(BlockKind::parallel)).norm(), 1e-3);
}

TEST(ReferenceBlock, WhisperDecoderBlockRunsAndDecodeEqualsPrefill) {
  test::Rng rng(53);
  const AttentionShape s{16, 4, 4, 4};
  WhisperBlockConfig c;
  c.self_attn = {s, 0.0, RopeSpec::none()};
  c.cross_attn = {s, 0.0, RopeSpec::none()};
  WhisperBlockWeights<double> w;
  w.norm_self = test::random_norm<double>(16, c.norm, rng);
  w.norm_cross = test::random_norm<double>(16, c.norm, rng);
  w.norm_ffn = test::random_norm<double>(16, c.norm, rng);
  w.self_attn = test::random_attention<double>(s, rng, test::BiasOptions::whisper());
  w.cross_attn = test::random_attention<double>(s, rng, test::BiasOptions::whisper());
  w.ffn = test::random_ffn<double>(16, 64, c.ffn, rng, true);
  const RowMatrix<double> X = test::random_matrix<double>(4, 16, 1.0, rng);
  const RowMatrix<double> E = test::random_matrix<double>(7, 16, 1.0, rng);
  reference::KVCache<double> a, b;
  const RowMatrix<double> Y = reference::whisper_decoder_block<double>(X, E, w, c, a);
  ASSERT_TRUE(Y.allFinite());
  RowMatrix<double> Z(4, 16);
  Z.topRows(1) = reference::whisper_decoder_block<double>(X.topRows(1), E, w, c, b);
  for (Index r = 1; r < 4; ++r)
    Z.row(r) = reference::whisper_decoder_block<double>(X.row(r), E, w, c, b);
  EXPECT_TRUE(test::close_to(Z, Y, 1e-13, "same operations in another grouping", "f64"));
  EXPECT_EQ(a.size(), 4);  // only the self-attention is cached; cross K/V come from E each call
  // Bad encoder width is reported by the cross-attention.
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::KVCache<double> cc;
        reference::whisper_decoder_block<double>(X, RowMatrix<double>::Zero(7, 15), w, c, cc);
      },
      {"reference::cross_attention", "E.cols()", "expected 16", "got 15"}));
}
