// ttx-test-labels: slim
// Slim attention at run time against the reference oracle (SPEC.md §5): a prompt prefill then
// decode steps, for every cache form (keys, values, inputs), every basis (square, right inverse,
// completed), RoPE in both layouts and partial rotary with raw or rotated key storage, q/k/v/o
// biases, position biases, both score orders, and float / double / bf16 / half caches; prompts
// prefilled in one call, in two calls, or not at all (decode from an empty cache). The vanilla
// baseline runs at the same storage precision through kernel::decode_vanilla.
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

/// Two float runs of one slim layer on the same inputs that differ only in the order of their
/// float operations (weights_first against values_first; one prefill against chunks or token by
/// token) agree more closely than the §5 rule on each implies. First-order count, per run:
/// three roundings (eps/2 each) sit ahead of or inside the per-head map (the cached row, the
/// weighted sum or the recomputed value row, the map's own product), which the report's error
/// gain g amplifies; three more do not pass through it (scores, softmax weights, the output
/// projection). Per run (eps/2)(3g + 3); two runs: 3 eps (g + 1). (Orders and token-by-token runs,
/// seeds 13-32 over keys/rotated/interleaved/GQA/values/inputs, measured at most 0.35 of it.) The
/// §5 rule lets each run be 2 g err(vanilla) + 4 eps ~ 4 g eps from the reference (err(vanilla)
/// ~ 2 eps here), so up to ~8 g eps from each other.
::testing::AssertionResult agree_to_roundoff(const RowMatrix<float>& x, const RowMatrix<float>& y,
                                             const rewrite::SlimReport& r, const char* what) {
  const double eps = unit_roundoff<float>(), g = std::max(1.0, r.error_gain);
  return test::close_to(
      x, y, 3 * eps * (g + 1),
      ttx::detail::concat(what, ": 3 eps (g + 1), two runs x (3 roundings grown by ",
                          "the error gain g = ", g, " + 3 not), eps = 2^-23"),
      "f32");
}

template <class T>
class SlimAttentionTyped : public ::testing::Test {};
// Double caches too: the AVX-512 loads once read double storage as half and returned NaN; the
// double instances (rotated storage, values form, GQA, ...) are the regression check.
using StorageTypes = ::testing::Types<float, double, bf16, f16>;
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

TEST(SlimAttention, AwkwardSizes) {
  // Prompts of 1, 3, 7 tokens; head_dim 7 and 15 (not multiples of any SIMD width), partial RoPE
  // (r = 4 and 8) in both layouts with raw (rotated on read) and rotated key storage, float, bf16
  // and half caches.
  for (Index p : {1, 3, 7})
    for (const AttentionShape& s : {AttentionShape{35, 5, 5, 7}, AttentionShape{45, 3, 3, 15}}) {
      SCOPED_TRACE(testing::Message() << "prompt " << p << ", head_dim " << s.head_dim);
      Case st{s, RopeSpec::none(), test::BiasOptions::all()};
      st.prompt = p;
      st.label = "awkward, no RoPE";
      check<float>(st, 10);
      check<bf16>(st, 10);
      for (RopeLayout layout : {RopeLayout::half_split, RopeLayout::interleaved})
        for (KeyStorage storage : {KeyStorage::raw, KeyStorage::rotated}) {
          SCOPED_TRACE(testing::Message()
                       << name(storage) << ", "
                       << (layout == RopeLayout::half_split ? "half-split" : "interleaved"));
          st.rope = partial(s.head_dim, layout);
          st.storage = storage;
          st.label = "awkward, partial RoPE";
          check<float>(st, 11);
          check<bf16>(st, 11);
          check<f16>(st, 11);
        }
      st.form = CacheForm::inputs;
      st.rope = RopeSpec::none();
      st.storage = KeyStorage::raw;
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
  EXPECT_TRUE(agree_to_roundoff(b.slim, a.slim, a.report, "values_first vs weights_first"));
  st.prompt = 1;
  st.steps = 20;
  st.order = ScoreOrder::weights_first;
  const Outcome c = run_case<float>(st, 13);
  EXPECT_TRUE(rule(c.slim, a.vanilla, a.ref, slim_tolerance(a.report), "f32"));
  EXPECT_TRUE(agree_to_roundoff(c.slim, a.slim, a.report, "token by token vs 5-token prefill"));
}

TEST(SlimAttention, EmptyPromptThenDecode) {
  // No prefill: the first decode step appends to an empty cache and attends over n = 1 row
  // (softmax of one score is exactly 1), then the cache grows one row per step.
  for (CacheForm form : {CacheForm::keys, CacheForm::values, CacheForm::inputs})
    for (ScoreOrder order : {ScoreOrder::weights_first, ScoreOrder::values_first})
      for (KeyStorage storage : {KeyStorage::raw, KeyStorage::rotated}) {
        if (form != CacheForm::keys && storage == KeyStorage::rotated) continue;
        SCOPED_TRACE(testing::Message()
                     << rewrite::name(form) << ", "
                     << (order == ScoreOrder::weights_first ? "weights_first" : "values_first")
                     << ", " << name(storage));
        Case st{
            {48, 4, 4, 12},
            form == CacheForm::keys ? RopeSpec::full(12, RopeLayout::half_split) : RopeSpec::none(),
            test::BiasOptions::all(),
            form};
        st.storage = storage;
        st.order = order;
        st.prompt = 0;
        st.position_bias = form == CacheForm::inputs;
        st.label = "empty prompt, then 16 decode steps";
        const Outcome o = run_case<float>(st, 15);
        const test::Tolerance tol = slim_tolerance(o.report);
        EXPECT_TRUE(rule(o.slim, o.vanilla, o.ref, tol, "f32")) << st.label;
        // The first step on its own (a wrong n = 1 step could hide in the norm over 16 rows).
        EXPECT_TRUE(rule(o.slim.topRows(1), o.vanilla.topRows(1), o.ref.topRows(1), tol, "f32"))
            << "first step, n = 1";
      }
  Case st{{48, 4, 4, 12}, RopeSpec::full(12, RopeLayout::interleaved), test::BiasOptions::all()};
  st.prompt = 0;
  st.label = "empty prompt, bf16 cache";
  check<bf16>(st, 15);
}

TEST(SlimAttention, ChunkedPrefillOnANonEmptyCache) {
  // A 7-token prompt prefilled as 3 + 4 tokens (the second call attends over the 3 cached rows
  // causally, at positions 3..6), then 12 decode steps: against the reference (prefilled in the
  // same chunks) by the §5 rule, and against the one-call prefill to roundoff.
  struct Form {
    AttentionShape shape;
    CacheForm form;
    KeyStorage storage;
    bool position_bias;
  };
  for (const Form& f : {Form{{48, 4, 4, 12}, CacheForm::keys, KeyStorage::raw, false},
                        Form{{48, 4, 4, 12}, CacheForm::keys, KeyStorage::rotated, false},
                        Form{{40, 6, 3, 8}, CacheForm::keys, KeyStorage::raw, false},
                        Form{{48, 4, 4, 12}, CacheForm::values, KeyStorage::raw, true},
                        Form{{40, 6, 3, 8}, CacheForm::inputs, KeyStorage::raw, true}}) {
    SCOPED_TRACE(testing::Message() << rewrite::name(f.form) << ", " << name(f.storage)
                                    << ", heads " << f.shape.heads << "/" << f.shape.kv_heads);
    const bool rope = f.form == CacheForm::keys;
    Case st{f.shape,
            rope ? RopeSpec::full(f.shape.head_dim, RopeLayout::half_split) : RopeSpec::none(),
            test::BiasOptions::all(), f.form};
    st.storage = f.storage;
    st.position_bias = f.position_bias;
    st.prompt = 7;
    st.steps = 12;
    st.label = "one-call prefill";
    const Outcome whole = run_case<float>(st, 17);
    st.chunk = 3;
    st.label = "prefill in two calls (3 + 4 tokens)";
    const Outcome split = run_case<float>(st, 17);
    EXPECT_TRUE(rule(split.slim, split.vanilla, split.ref, slim_tolerance(split.report), "f32"))
        << st.label;
    EXPECT_TRUE(agree_to_roundoff(split.slim, whole.slim, whole.report,
                                  "3 + 4 token prefill vs one 7-token prefill"));
    check<bf16>(st, 17);
  }
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
  EXPECT_TRUE(test::throws<NumericalError>([&] { rewrite::slim_attention<float>(wd, cfg, opt); },
                                           {"rewrite::slim_attention", "estimated condition number",
                                            "above options.max_condition = 1000"}));
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
  EXPECT_TRUE(test::throws<CapacityError>(
      [&] { kernel::slim_prefill(t.X, t.slim, cache, Y, ws); },
      {"kernel::slim_prefill",
       "cache capacity expected >= 9 rows (5 cached + 4 new), got capacity 5"}));
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
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { kernel::slim_prefill(t.X, t.slim, vc, Y, ws); },
      {"kernel::slim_prefill",
       "slim.form expected CacheForm::values for this cache type, got CacheForm::keys"}));
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
