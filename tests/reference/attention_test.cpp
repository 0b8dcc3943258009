// ttx-test-labels: reference
// Internal consistency of the reference attention: decode steps equal prefill rows, MQA/GQA head
// mapping, the PyTorch layout, and bad input.
#include "ttx/reference/attention.hpp"

#include <gtest/gtest.h>

#include <limits>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

TEST(ReferenceAttention, DecodeStepsEqualPrefillRows) {
  test::Rng rng(1);
  for (Index kv : {4, 2, 1}) {
    reference::AttentionConfig cfg{{32, 4, kv, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
    const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
    const RowMatrix<double> X = test::random_matrix<double>(6, 32, 1.0, rng);
    reference::KVCache<double> a, b;
    const RowMatrix<double> Y = reference::self_attention<double>(X, w, cfg, a);
    RowMatrix<double> Z(6, 32);
    for (Index r = 0; r < 6; ++r) Z.row(r) = reference::self_attention<double>(X.row(r), w, cfg, b);
    EXPECT_TRUE(test::close_to(Z, Y, 1e-13, "same operations, double roundoff", "f64"))
        << "kv=" << kv;
  }
}

TEST(ReferenceAttention, BadShapesNameTheArgument) {
  test::Rng rng(2);
  reference::AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto w = test::random_attention<double>(cfg.shape, rng);
  w.wk = RowMatrix<double>::Zero(32, 16);
  reference::KVCache<double> c;
  const RowMatrix<double> X = RowMatrix<double>::Zero(1, 32);
  try {
    reference::self_attention<double>(X, w, cfg, c);
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("wk expected 32x32, got 32x16"), std::string::npos)
        << e.what();
  }
}

// GQA is MHA with each KV head repeated for its group (HF's repeat_kv): expanding W_K and W_V
// column blocks gives the same outputs.
TEST(ReferenceAttention, GqaEqualsMhaWithRepeatedKvHeads) {
  test::Rng rng(3);
  const AttentionShape gqa{32, 4, 2, 8}, mha{32, 4, 4, 8};
  const auto w = test::random_attention<double>(gqa, rng, test::BiasOptions::all());
  auto wm = w;
  wm.wk.resize(32, 32);
  wm.wv.resize(32, 32);
  wm.bk.resize(32);
  wm.bv.resize(32);
  for (Index h = 0; h < 4; ++h) {
    const Index g = gqa.kv_head_of(h);
    wm.wk.middleCols(h * 8, 8) = w.wk.middleCols(g * 8, 8);
    wm.wv.middleCols(h * 8, 8) = w.wv.middleCols(g * 8, 8);
    wm.bk.segment(h * 8, 8) = w.bk.segment(g * 8, 8);
    wm.bv.segment(h * 8, 8) = w.bv.segment(g * 8, 8);
  }
  const RopeSpec rope = RopeSpec::full(8, RopeLayout::interleaved);
  const RowMatrix<double> X = test::random_matrix<double>(5, 32, 1.0, rng);
  reference::KVCache<double> a, b;
  const RowMatrix<double> Yg = reference::self_attention<double>(X, w, {gqa, 0.0, rope}, a);
  const RowMatrix<double> Ym = reference::self_attention<double>(X, wm, {mha, 0.0, rope}, b);
  EXPECT_TRUE(
      test::close_to(Yg, Ym, 1e-14, "same per-head arithmetic, GEMM blocking may differ", "f64"));
  EXPECT_EQ(a.k.cols(), 16);  // the GQA cache holds h_kv heads only
}

// Causal prefill: a row never sees later tokens, so changing the last token leaves the earlier
// rows bitwise unchanged; a decode step sees every cached row.
TEST(ReferenceAttention, CausalMaskAndScoreBias) {
  test::Rng rng(4);
  const AttentionConfig cfg{{16, 2, 2, 8}, 0.0, RopeSpec::none()};
  const auto w = test::random_attention<double>(cfg.shape, rng);
  RowMatrix<double> X = test::random_matrix<double>(4, 16, 1.0, rng);
  reference::KVCache<double> c1, c2;
  const RowMatrix<double> Y1 = reference::self_attention<double>(X, w, cfg, c1);
  X.row(3).array() += 1.0;
  const RowMatrix<double> Y2 = reference::self_attention<double>(X, w, cfg, c2);
  EXPECT_TRUE(
      test::bitwise_equal(RowMatrix<double>(Y1.topRows(3)), RowMatrix<double>(Y2.topRows(3))));
  EXPECT_GT((Y1.row(3) - Y2.row(3)).norm(), 1e-3);

  // A bias that is constant over the keys of a query cancels in the softmax.
  reference::KVCache<double> c3;
  const reference::ScoreBias shift = [](Index h, Index q, Index) { return 3.0 * h - 0.5 * q; };
  EXPECT_TRUE(test::close_to(reference::self_attention<double>(X, w, cfg, c3, shift), Y2, 1e-14,
                             "softmax shift invariance, exp of shifted scores", "f64"));
  // A -inf bias on key 0 equals attending without that key (query 3 over keys 1..3).
  const RowMatrix<double> Q = reference::linear<double>(X, w.wq);
  const RowMatrix<double> K = reference::linear<double>(X, w.wk);
  const RowMatrix<double> V = reference::linear<double>(X, w.wv);
  const reference::ScoreBias mask0 = [](Index, Index, Index k) {
    return k == 0 ? -std::numeric_limits<double>::infinity() : 0.0;
  };
  const RowMatrix<double> masked =
      reference::attend<double>(Q.bottomRows(1), K, V, cfg.shape, 0.25, false, 3, mask0);
  const RowMatrix<double> dropped = reference::attend<double>(
      Q.bottomRows(1), K.bottomRows(3), V.bottomRows(3), cfg.shape, 0.25, false, 3);
  EXPECT_TRUE(test::close_to(masked, dropped, 1e-15, "exp(-inf) = 0 exactly", "f64"));
}

// Cross-attention is invariant to the order of the encoder rows (keys and values together).
TEST(ReferenceAttention, CrossAttentionIgnoresEncoderRowOrder) {
  test::Rng rng(5);
  const AttentionConfig cfg{{16, 4, 4, 4}, 0.0, RopeSpec::none()};
  const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::whisper());
  const RowMatrix<double> X = test::random_matrix<double>(3, 16, 1.0, rng);
  const RowMatrix<double> E = test::random_matrix<double>(6, 16, 1.0, rng);
  const RowMatrix<double> Er = E.colwise().reverse();
  EXPECT_TRUE(test::close_to(reference::cross_attention<double>(X, Er, w, cfg),
                             reference::cross_attention<double>(X, E, w, cfg), 1e-14,
                             "sums in another order", "f64"));
}

TEST(ReferenceAttention, EveryBadInputNamesTheArgument) {
  test::Rng rng(6);
  const AttentionConfig cfg{{32, 4, 2, 8}, 0.0, RopeSpec::none()};
  const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
  const RowMatrix<double> X = RowMatrix<double>::Zero(2, 32);
  auto self = [&](const AttentionWeights<double>& ww, const AttentionConfig& c,
                  const RowMatrix<double>& x) {
    reference::KVCache<double> cache;
    reference::self_attention<double>(x, ww, c, cache);
  };
  auto bad_weight = [&](auto mutate, std::initializer_list<const char*> parts) {
    auto ww = w;
    mutate(ww);
    EXPECT_TRUE(test::throws<ShapeError>([&] { self(ww, cfg, X); }, parts));
    EXPECT_TRUE(test::throws<ShapeError>([&] { reference::cross_attention<double>(X, X, ww, cfg); },
                                         parts));
  };
  using W = AttentionWeights<double>;
  bad_weight([](W& ww) { ww.wq = RowMatrix<double>::Zero(32, 31); },
             {"wq", "expected 32x32", "got 32x31"});
  bad_weight([](W& ww) { ww.wk = RowMatrix<double>::Zero(32, 32); },
             {"wk", "expected 32x16", "got 32x32"});
  bad_weight([](W& ww) { ww.wv = RowMatrix<double>::Zero(31, 16); },
             {"wv", "expected 32x16", "got 31x16"});
  bad_weight([](W& ww) { ww.wo = RowMatrix<double>::Zero(16, 32); },
             {"wo", "expected 32x32", "got 16x32"});
  bad_weight([](W& ww) { ww.bq = RowVector<double>::Zero(16); },
             {"bq.size()", "expected 32", "got 16"});
  bad_weight([](W& ww) { ww.bk = RowVector<double>::Zero(32); },
             {"bk.size()", "expected 16", "got 32"});
  bad_weight([](W& ww) { ww.bv = RowVector<double>::Zero(1); },
             {"bv.size()", "expected 16", "got 1"});
  bad_weight([](W& ww) { ww.bo = RowVector<double>::Zero(3); },
             {"bo.size()", "expected 32", "got 3"});

  AttentionConfig bad_heads = cfg;
  bad_heads.shape.kv_heads = 3;
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { self(w, bad_heads, X); },
      {"reference::self_attention", "shape.kv_heads", "divisor of heads=4", "got 3"}));
  AttentionConfig zero_d = cfg;
  zero_d.shape.d = 0;
  EXPECT_TRUE(
      test::throws<ShapeError>([&] { self(w, zero_d, X); }, {"shape.d", "expected > 0", "got 0"}));
  AttentionConfig bad_rope = cfg;
  bad_rope.rope = RopeSpec::full(10, RopeLayout::half_split);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { self(w, bad_rope, X); },
      {"reference::self_attention", "rope.rotary_dim", "head_dim=8", "got 10"}));
  const RowMatrix<double> X31 = RowMatrix<double>::Zero(2, 31);
  EXPECT_TRUE(
      test::throws<ShapeError>([&] { self(w, cfg, X31); }, {"X.cols()", "expected 32", "got 31"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { reference::cross_attention<double>(X31, X, w, cfg); },
      {"reference::cross_attention", "X.cols()", "expected 32", "got 31"}));
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::cross_attention<double>(X, X31, w, cfg); },
                                       {"E.cols()", "expected 32", "got 31"}));

  // A cache from another shape (here a 32-wide MHA cache) is refused, not written past.
  reference::KVCache<double> wrong;
  wrong.k = RowMatrix<double>::Zero(3, 32);
  wrong.v = RowMatrix<double>::Zero(3, 32);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::self_attention<double>(X, w, cfg, wrong); },
                                       {"cache.k", "expected 3x16", "got 3x32"}));
  wrong.k = RowMatrix<double>::Zero(3, 16);
  wrong.v = RowMatrix<double>::Zero(2, 16);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::self_attention<double>(X, w, cfg, wrong); },
                                       {"cache.v", "expected 3x16", "got 2x16"}));

  // attend() on projected rows.
  const RowMatrix<double> Q = RowMatrix<double>::Zero(1, 32), K = RowMatrix<double>::Zero(4, 16);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::attend<double>(RowMatrix<double>::Zero(1, 30), K, K, cfg.shape, 1, false, 0);
      },
      {"reference::attend", "Q.cols()", "expected 32", "got 30"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::attend<double>(Q, RowMatrix<double>::Zero(4, 8), K, cfg.shape, 1, false, 0);
      },
      {"K.cols()", "expected 16", "got 8"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        reference::attend<double>(Q, K, RowMatrix<double>::Zero(5, 16), cfg.shape, 1, false, 0);
      },
      {"V", "expected 4x16", "got 5x16"}));
}
