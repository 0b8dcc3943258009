// ttx-test-labels: slim
// Slim attention at run time against the reference oracle (SPEC.md §5): a prompt prefill then
// decode steps, for every cache form (keys, values, inputs), every basis (square, right inverse,
// completed), RoPE in both layouts and partial rotary with raw or rotated key storage, q/k/v/o
// biases, position biases, both score orders, and float / double / bf16 / half caches. The
// vanilla baseline runs at the same storage precision through kernel::decode_vanilla.
#include "ttx/kernel/slim_attention.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernel/slim_harness.hpp"
#include "support/throws.hpp"

using namespace ttx;
using namespace ttx::slim_test;
using kernel::ScoreOrder;
using rewrite::CacheForm;

namespace {
RopeSpec partial(Index dk, RopeLayout layout) {
  RopeSpec r = RopeSpec::full(dk, layout);
  r.rotary_dim = dk / 2 % 2 == 0 ? dk / 2 : dk / 2 + 1;
  return r;
}

template <class T>
class SlimAttentionTyped : public ::testing::Test {};
// Double caches run in DoubleCacheThroughStreamingKernels below (the AVX-512 loads once read
// double storage as half and returned NaN; that test is the regression check).
using StorageTypes = ::testing::Types<float, bf16, f16>;
TYPED_TEST_SUITE(SlimAttentionTyped, StorageTypes);

TYPED_TEST(SlimAttentionTyped, MhaNoRopeAllBiases) {
  Case st{{48, 4, 4, 12}, RopeSpec::none(), test::BiasOptions::all()};
  st.label = "MHA, no RoPE, q/k/v/o biases";
  check<TypeParam>(st, 1);
  st.bias = {};
  st.label = "MHA, no RoPE, no biases";
  check<TypeParam>(st, 2);
}

TYPED_TEST(SlimAttentionTyped, MhaRopeBothLayoutsBothStorages) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved})
    for (KeyStorage storage : {KeyStorage::raw, KeyStorage::rotated}) {
      Case st{{48, 4, 4, 12}, RopeSpec::full(12, layout), test::BiasOptions::all()};
      st.storage = storage;
      st.label = layout == RopeLayout::half_split ? "half-split" : "interleaved";
      SCOPED_TRACE(name(storage));
      check<TypeParam>(st, 3);
    }
}

TYPED_TEST(SlimAttentionTyped, PartialRotary) {
  for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved})
    for (KeyStorage storage : {KeyStorage::raw, KeyStorage::rotated}) {
      Case st{{64, 4, 4, 16}, partial(16, layout), test::BiasOptions::whisper()};
      st.bias.k = true;
      st.storage = storage;
      st.label = "partial rotary r = d_k / 2";
      SCOPED_TRACE(name(storage));
      check<TypeParam>(st, 4);
    }
}

TYPED_TEST(SlimAttentionTyped, ValuesFirstOrder) {
  Case st{{48, 4, 4, 12}, RopeSpec::full(12, RopeLayout::half_split), test::BiasOptions::all()};
  st.order = ScoreOrder::values_first;
  st.label = "values_first, raw keys";
  check<TypeParam>(st, 5);
  st.storage = KeyStorage::rotated;
  st.label = "values_first, rotated keys";
  check<TypeParam>(st, 5);
}

TYPED_TEST(SlimAttentionTyped, ValuesForm) {
  for (const AttentionShape& s :
       {AttentionShape{48, 4, 4, 12}, AttentionShape{24, 4, 4, 12}, AttentionShape{40, 6, 3, 8}})
    for (ScoreOrder order : {ScoreOrder::weights_first, ScoreOrder::values_first}) {
      Case st{s, RopeSpec::none(), test::BiasOptions::all(), CacheForm::values};
      st.order = order;
      st.label = "values form";
      check<TypeParam>(st, 6);
    }
}

TYPED_TEST(SlimAttentionTyped, InputsFormWithPositionBias) {
  for (const AttentionShape& s : {AttentionShape{48, 4, 4, 12}, AttentionShape{24, 4, 4, 12},
                                  AttentionShape{40, 6, 3, 8}, AttentionShape{32, 4, 1, 8}})
    for (ScoreOrder order : {ScoreOrder::weights_first, ScoreOrder::values_first}) {
      Case st{s, RopeSpec::none(), test::BiasOptions::all(), CacheForm::inputs};
      st.order = order;
      st.position_bias = true;
      st.scale = 1.0;  // T5 uses no score scale
      st.label = "inputs form, position bias, scale 1";
      check<TypeParam>(st, 7);
    }
}

TYPED_TEST(SlimAttentionTyped, WideKeysRightInverse) {
  Case st{{24, 4, 4, 12}, RopeSpec::full(12, RopeLayout::half_split), test::BiasOptions::all()};
  st.label = "e > d, right inverse, RoPE";
  check<TypeParam>(st, 8);
  st.rope = RopeSpec::none();
  st.position_bias = true;
  st.label = "e > d, right inverse, position bias";
  check<TypeParam>(st, 8);
}

TYPED_TEST(SlimAttentionTyped, GqaCompletedBasis) {
  for (KeyStorage storage : {KeyStorage::raw, KeyStorage::rotated}) {
    Case st{{40, 6, 3, 8}, RopeSpec::full(8, RopeLayout::interleaved), test::BiasOptions::all()};
    st.storage = storage;
    st.label = "GQA d/2 < e < d, completed basis";
    SCOPED_TRACE(name(storage));
    check<TypeParam>(st, 9);
  }
}

TEST(SlimAttention, DoubleCacheThroughStreamingKernels) {
  Case st{{48, 4, 4, 12}, RopeSpec::full(12, RopeLayout::half_split), test::BiasOptions::all()};
  st.label = "double cache, keys form";
  check<double>(st, 3);
  st.rope = RopeSpec::none();
  st.form = CacheForm::inputs;
  st.label = "double cache, inputs form";
  check<double>(st, 3);
}

TEST(SlimAttention, AwkwardSizes) {
  // Prompts of 1, 3, 7 tokens; head_dim 7 and 15 (not multiples of any SIMD width).
  for (Index p : {1, 3, 7})
    for (const AttentionShape& s : {AttentionShape{35, 5, 5, 7}, AttentionShape{45, 3, 3, 15}}) {
      Case st{s, RopeSpec::none(), test::BiasOptions::all()};
      st.prompt = p;
      st.label = "awkward, no RoPE";
      check<float>(st, 10);
      check<bf16>(st, 10);
      st.rope = partial(s.head_dim, RopeLayout::half_split);
      st.storage = KeyStorage::rotated;
      st.label = "awkward, partial RoPE";
      check<float>(st, 11);
      st.form = CacheForm::inputs;
      st.rope = RopeSpec::none();
      st.label = "awkward, inputs form";
      check<f16>(st, 12);
    }
}

TEST(SlimAttention, OrdersAgreeAndPrefillEqualsDecode) {
  // weights_first and values_first are two orders of one computation; a prompt prefilled in one
  // go and the same prompt fed token by token see the same cache and agree to float roundoff.
  Case st{{48, 4, 4, 12}, RopeSpec::full(12, RopeLayout::half_split), test::BiasOptions::all()};
  const Outcome a = run_case<float>(st, 13);
  st.order = ScoreOrder::values_first;
  const Outcome b = run_case<float>(st, 13);
  EXPECT_TRUE(rule(b.slim, a.vanilla, a.ref, slim_tolerance(a.report), "f32"));
  st.prompt = 1;
  st.steps = 20;
  st.order = ScoreOrder::weights_first;
  const Outcome c = run_case<float>(st, 13);
  EXPECT_TRUE(rule(c.slim, a.vanilla, a.ref, slim_tolerance(a.report), "f32"));
}

TEST(SlimAttention, IllConditionedKeysAreMeasuredHonestly) {
  // W_K with cond 1e4: the report flags it, strict mode refuses it, and the K-cache error grows
  // with the error gain while the X-cache (no inverse) stays at the vanilla level.
  test::Rng rng(14);
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto wd = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
  wd.wk = test::with_singular_values(test::geometric_singular_values(32, 1e4), rng);
  const RowMatrix<double> Xd = test::random_matrix<double>(21, 32, 1.0, rng);
  reference::KVCache<double> rc;
  RowMatrix<double> ref(21, 32);
  ref.topRows(5) = reference::self_attention<double>(Xd.topRows(5), wd, cfg, rc);
  for (Index r = 5; r < 21; ++r)
    ref.row(r) = reference::self_attention<double>(Xd.row(r), wd, cfg, rc);
  const RowMatrix<float> X = Xd.cast<float>();
  const RowMatrix<float> van = run_vanilla<float>(test::cast<float>(wd), cfg, X, 5, {});
  rewrite::SlimOptions opt;
  opt.max_condition = 1e3;
  const auto slim = rewrite::slim_attention<float>(wd, cfg, opt);
  EXPECT_TRUE(slim.report.ill_conditioned);
  EXPECT_GT(slim.report.error_gain, 3.0);
  const RowMatrix<float> y = run_slim<float>(slim, KeyStorage::raw, X, 5, {}, {});
  EXPECT_TRUE(rule(y, van, ref, slim_tolerance(slim.report), "f32"));
  opt.strict = true;
  EXPECT_THROW(rewrite::slim_attention<float>(wd, cfg, opt), NumericalError);
  opt.form = CacheForm::inputs;
  const auto xs = rewrite::slim_attention<float>(wd, cfg, opt);
  const RowMatrix<float> yx = run_slim<float>(xs, KeyStorage::raw, X, 5, {}, {});
  EXPECT_TRUE(rule(yx, van, ref, slim_tolerance(xs.report), "f32"));
}

// ---- the contracts --------------------------------------------------------------------------

using test::error_text;

struct Small {
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  test::Rng rng{16};
  reference::AttentionWeights<double> w = test::random_attention<double>(cfg.shape, rng);
  rewrite::SlimAttention<float> slim = rewrite::slim_attention<float>(w, cfg);
  RowMatrix<float> X = test::random_matrix<float>(4, 32, 1.0, rng);
};

TEST(SlimAttentionErrors, ShapesOfInputsAndOutputs) {
  Small t;
  KCache<float> cache(t.cfg.shape, 8);
  kernel::SlimWorkspace ws;
  RowMatrix<float> Y(4, 32), Ybad(3, 32);
  EXPECT_NE(error_text([&] {
              kernel::slim_prefill(t.X, t.slim, cache, Ybad, ws);
            }).find("Y expected 4x32, got 3x32"),
            std::string::npos);
  const RowMatrix<float> Xbad = RowMatrix<float>::Zero(4, 31);
  EXPECT_NE(error_text([&] {
              kernel::slim_prefill(Xbad, t.slim, cache, Y, ws);
            }).find("X.cols() (= d) expected 32, got 31"),
            std::string::npos);
  EXPECT_EQ(cache.size(), 0);
  kernel::slim_prefill(t.X, t.slim, cache, Y, ws);
  RowVector<float> y(32), y31(31);
  const RowVector<float> x31 = RowVector<float>::Zero(31);
  EXPECT_NE(error_text([&] {
              kernel::slim_decode(x31, t.slim, cache, y, ws);
            }).find("x.cols() (= d) expected 32, got 31"),
            std::string::npos);
  EXPECT_NE(error_text([&] {
              kernel::slim_decode(t.X.row(0), t.slim, cache, y31, ws);
            }).find("y.cols() (= d) expected 32, got 31"),
            std::string::npos);
  kernel::SlimDecodeOptions bad;
  bad.threads = -1;
  EXPECT_NE(error_text([&] {
              kernel::slim_decode(t.X.row(0), t.slim, cache, y, ws, bad);
            }).find("opt.threads expected >= 0, got -1"),
            std::string::npos);
  EXPECT_THROW(kernel::slim_decode(t.X.row(0), t.slim, cache, y, ws, bad), ShapeError);
  EXPECT_EQ(cache.size(), 4);  // failed calls left the cache as it was
  const RowMatrix<float> empty(0, 32);
  RowMatrix<float> Yempty(0, 32);
  EXPECT_NE(error_text([&] {
              kernel::slim_prefill(empty, t.slim, cache, Yempty, ws);
            }).find("X.rows() (prompt tokens) expected > 0, got 0"),
            std::string::npos);
}

TEST(SlimAttentionErrors, CapacityOverflowLeavesTheCacheUnchanged) {
  Small t;
  KCache<float> cache(t.cfg.shape, 5);
  kernel::SlimWorkspace ws;
  RowMatrix<float> Y(4, 32);
  kernel::slim_prefill(t.X, t.slim, cache, Y, ws);
  RowVector<float> y(32);
  kernel::slim_decode(t.X.row(0), t.slim, cache, y, ws);
  const std::string msg =
      error_text([&] { kernel::slim_decode(t.X.row(1), t.slim, cache, y, ws); });
  EXPECT_NE(msg.find("cache capacity expected >= 6 rows (5 cached + 1 new), got capacity 5"),
            std::string::npos)
      << msg;
  EXPECT_THROW(kernel::slim_decode(t.X.row(1), t.slim, cache, y, ws), CapacityError);
  EXPECT_THROW(kernel::slim_prefill(t.X, t.slim, cache, Y, ws), CapacityError);
  EXPECT_EQ(cache.size(), 5);
}

TEST(SlimAttentionErrors, CacheMustMatchTheRewrite) {
  Small t;
  kernel::SlimWorkspace ws;
  RowMatrix<float> Y(4, 32);
  // A keys rewrite with an XCache / VCache.
  XCache<float> xc(t.cfg.shape, 8);
  EXPECT_NE(error_text([&] { kernel::slim_prefill(t.X, t.slim, xc, Y, ws); })
                .find("slim.form expected CacheForm::inputs for this cache type, got "
                      "CacheForm::keys"),
            std::string::npos);
  VCache<float> vc(t.cfg.shape, 8);
  EXPECT_THROW(kernel::slim_prefill(t.X, t.slim, vc, Y, ws), ShapeError);
  // A cache of another shape.
  KCache<float> other({32, 2, 2, 16}, 8);
  EXPECT_NE(error_text([&] { kernel::slim_prefill(t.X, t.slim, other, Y, ws); })
                .find("cache.shape() expected the slim layer's shape (d 32, heads 4, kv_heads 4, "
                      "head_dim 8), got (d 32, heads 2, kv_heads 2, head_dim 16)"),
            std::string::npos);
  // A completed (width d) rewrite with a KCache of width e.
  AttentionConfig gqa{{40, 6, 3, 8}, 0.0, RopeSpec::none()};
  const auto slim_g =
      rewrite::slim_attention<float>(test::random_attention<double>(gqa.shape, t.rng), gqa);
  KCache<float> narrow(gqa.shape, 8);
  const RowMatrix<float> Xg = RowMatrix<float>::Zero(2, 40);
  RowMatrix<float> Yg(2, 40);
  EXPECT_NE(error_text([&] {
              kernel::slim_prefill(Xg, slim_g, narrow, Yg, ws);
            }).find("cache.width() (= slim.cached_width) expected 40, got 24"),
            std::string::npos);
  // A tampered rewrite.
  auto broken = t.slim;
  broken.wo.resize(32, 31);
  KCache<float> cache(t.cfg.shape, 8);
  EXPECT_NE(error_text([&] {
              kernel::slim_prefill(t.X, broken, cache, Y, ws);
            }).find("slim.wo expected 32x32, got 32x31"),
            std::string::npos);
  // RoPE slipped into a values rewrite.
  AttentionConfig plain{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto vslim = rewrite::slim_attention<float>(t.w, plain, {CacheForm::values});
  vslim.rope = RopeSpec::full(8, RopeLayout::half_split);
  EXPECT_NE(error_text([&] {
              kernel::slim_prefill(t.X, vslim, vc, Y, ws);
            }).find("slim.rope expected disabled for CacheForm::values"),
            std::string::npos);
  EXPECT_THROW(kernel::slim_prefill(t.X, vslim, vc, Y, ws), UnsupportedError);
}

TEST(SlimAttention, DecodeStepsReuseTheWorkspace) {
  // After the first step a decode step takes no new scratch (the workspace does not grow).
  Small t;
  KCache<bf16> cache(t.cfg.shape, 64);
  kernel::SlimWorkspace ws;
  ws.reserve(t.slim, 64);
  RowMatrix<float> Y(4, 32);
  kernel::slim_prefill(t.X, t.slim, cache, Y, ws);
  RowVector<float> y(32);
  kernel::slim_decode(t.X.row(0), t.slim, cache, y, ws);
  const std::size_t after_first = ws.bytes();
  for (int i = 0; i < 40; ++i) kernel::slim_decode(t.X.row(i % 4), t.slim, cache, y, ws);
  EXPECT_EQ(ws.bytes(), after_first);
  // values_first with a reserved workspace: also no growth.
  kernel::SlimWorkspace ws2;
  ws2.reserve(t.slim, 64, ScoreOrder::values_first);
  const std::size_t reserved = ws2.bytes();
  KCache<bf16> cache2(t.cfg.shape, 64);
  kernel::SlimDecodeOptions opt;
  opt.order = ScoreOrder::values_first;
  for (int i = 0; i < 40; ++i) kernel::slim_decode(t.X.row(i % 4), t.slim, cache2, y, ws2, opt);
  EXPECT_EQ(ws2.bytes(), reserved);
}

}  // namespace
