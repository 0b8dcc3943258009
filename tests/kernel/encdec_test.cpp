// ttx-test-labels: encdec
// The encoder–decoder runtime (kernel/encdec.hpp) against the reference decoder in double:
// every cross form (kv, keys, shared encoder cache, hybrid) and self form (kv, X-cache), in
// float, double and bfloat16 cache storage (float arithmetic, as the runtime), single attention
// layers and whole Whisper- and T5-shaped decoders with greedy decoding of >= 32 tokens; and every
// bad input.
#include "ttx/kernel/encdec.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "support/encdec_random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/encdec_model.hpp"

namespace ttx {
namespace {

using rewrite::CrossForm;
using rewrite::EncDecForms;
using rewrite::SelfForm;
using test::Rng;

template <class T>
class EncDecKernel : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, bf16>;
TYPED_TEST_SUITE(EncDecKernel, StorageTypes);

// test::within_rule that also prints its message when TTX_VERBOSE is set (errors, allowance,
// condition numbers), so a run shows how close every form came.
template <class... Args>
::testing::AssertionResult within_rule_logged(const Args&... args) {
  ::testing::AssertionResult r = test::within_rule(args...);
  if (std::getenv("TTX_VERBOSE")) std::cout << r.message() << "\n";
  return r;
}

// The relative error the float arithmetic cannot avoid (the runtime computes in float for every
// cache type); beyond it, twice the vanilla runtime's error at the same cache type.
template <class T>
test::Tolerance rule(double cond = 1.0, const std::string& what = "") {
  test::Tolerance t;
  t.factor = 2.0;
  t.floor = test::roundoff_floor<float>(16.0);
  if (cond > 1.0) {
    // W_KV = W_K^{-1} W_V amplifies the rounding of every cached key by up to cond(W_K); measured
    // amplifications on these trained-like weights grow like cond, far below it: allow
    // 2 * sqrt(cond) times the vanilla error.
    t.factor = 2.0 * std::max(1.0, std::sqrt(cond));
    t.why = what + ": W_KV = W_K^-1 W_V, measured cond(W_K) estimate " + std::to_string(cond) +
            ", factor 2*sqrt(cond)";
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// One cross-attention layer: every form against the reference, vanilla as the baseline.

template <class T>
void check_cross_layer(const AttentionShape& s, Index p, bool with_bias, double scale = 0) {
  using A = float;
  Rng rng(17 + s.kv_heads + p);
  const auto w = test::random_attention<double>(s, rng, test::BiasOptions::all());
  const AttentionConfig cfg{s, scale, RopeSpec::none()};
  const RowMatrix<double> E = test::random_matrix<double>(p, s.d, 1.0, rng);
  const RowMatrix<double> x = test::random_matrix<double>(1, s.d, 1.0, rng);
  RowMatrix<double> bias_d;
  reference::ScoreBias bias;
  if (with_bias) {
    bias_d = test::random_matrix<double>(s.heads, p, 1.0, rng);
    bias = [&](Index h, Index, Index k) { return bias_d(h, k); };
  }
  const RowMatrix<double> ref = reference::cross_attention<double>(x, E, w, cfg, bias);
  const RowMatrix<A> bias_a = bias_d.cast<A>();
  const A* bp = with_bias ? bias_a.data() : nullptr;
  const RowMatrix<A> xa = x.cast<A>(), Ea = E.cast<A>();

  // Vanilla: cross KV cache.
  KVCache<T> kv(s, p);
  RowMatrix<A> K = Ea * w.wk.cast<A>(), V = Ea * w.wv.cast<A>();
  K.rowwise() += w.bk.cast<A>();
  V.rowwise() += w.bv.cast<A>();
  kv.append(K, V);
  const RowVector<A> q = xa * w.wq.cast<A>() + w.bq.cast<A>();
  RowVector<A> heads(s.q_width());
  kernel::kv_heads(q, kv, cfg.effective_scale(), bp, heads);
  const RowVector<A> vanilla = heads * w.wo.cast<A>() + w.bo.cast<A>();

  // Shared encoder cache.
  const auto si = rewrite::inputs_attention<A>(w, cfg);
  ECache<T> ec(s.d, p);
  ec.assign(Ea);
  kernel::inputs_heads(RowVector<A>(xa * si.wq + si.bq), si, ec.rows(), bp, heads);
  const RowVector<A> shared = heads * si.wo + si.bo;
  EXPECT_TRUE(within_rule_logged(shared, vanilla, ref, rule<T>(), type_name<T>()))
      << "shared encoder cache, h_kv=" << s.kv_heads;

  if (s.kv_width() == s.d) {
    const auto sk = rewrite::keys_attention<A>(w, cfg);
    CrossKCache<T> kc(s, p);
    kc.assign(Ea * sk.wk);
    kernel::keys_heads(RowVector<A>(xa * sk.wq + sk.bq), sk, kc.keys(), bp, heads);
    const RowVector<A> keys = heads * sk.wo + sk.bo;
    EXPECT_TRUE(within_rule_logged(
        keys, vanilla, ref, rule<T>(sk.report.cond_estimate, "cross K-only"), type_name<T>()));
  }
}

TYPED_TEST(EncDecKernel, CrossLayerMhaAllForms) {
  check_cross_layer<TypeParam>({64, 4, 4, 16}, 200, false);
}
TYPED_TEST(EncDecKernel, CrossLayerWithPositionBiasScaleOne) {
  check_cross_layer<TypeParam>({64, 4, 4, 16}, 150, true, 1.0 / 16);
}
TYPED_TEST(EncDecKernel, CrossLayerGqaAndMqaSharedEncoder) {
  check_cross_layer<TypeParam>({64, 8, 2, 8}, 130, true);
  check_cross_layer<TypeParam>({64, 8, 1, 8}, 129, false);
}
TYPED_TEST(EncDecKernel, CrossLayerWhisperTinyShape) {
  check_cross_layer<TypeParam>({384, 6, 6, 64}, 1500, false);
}

// ---------------------------------------------------------------------------------------------
// Whole decoders, greedy.

template <class A>
RowMatrix<A> stack(const std::vector<RowVector<A>>& rows) {
  RowMatrix<A> m(static_cast<Index>(rows.size()), rows.empty() ? 0 : rows[0].size());
  for (size_t i = 0; i < rows.size(); ++i) m.row(static_cast<Index>(i)) = rows[i];
  return m;
}

struct Run {
  std::vector<int> tokens;
  RowMatrix<double> logits;
  double cond = 1.0;
};

template <class T>
Run run_runtime(const EncDecDecoderConfig& c, const EncDecDecoderWeights<double>& w,
                const RowMatrix<double>& E, EncDecForms forms, const std::vector<int>& prompt,
                Index steps, int threads) {
  using A = float;
  const kernel::EncDecDecoder<T> dec(rewrite::plan_encdec_decoder<A>(c, w, forms), threads);
  auto st = dec.make_state(E.rows(), static_cast<Index>(prompt.size()) + steps);
  dec.encode(st, E);
  std::vector<RowVector<A>> logits;
  Run r;
  r.tokens = dec.generate(st, prompt, steps, &logits);
  r.logits = stack(logits).template cast<double>();
  r.cond = dec.plan().max_cond;
  return r;
}

// How the double reference decodes greedily.
enum class ReferenceRun {
  greedy,  ///< reference generate(): one forward() per token
  /// One forward() over prompt + the vanilla runtime's tokens; the reference's greedy token at
  /// step t is the argmax of its logits at position |prompt| - 1 + t. If every argmax equals the
  /// token fed next, that sequence IS the reference's greedy decode (by induction over t; causal
  /// attention makes position t's logits independent of later tokens), so token equality below
  /// is the same check as with `greedy` — at one cross K, V computation from E instead of one per
  /// token (the reference recomputes them at every call: 4 GFLOP per step at Whisper-tiny size).
  teacher_forced,
};

template <class T>
void check_decoder(const EncDecDecoderConfig& c, const EncDecDecoderWeights<double>& w,
                   const RowMatrix<double>& E, Index steps, const std::vector<EncDecForms>& forms,
                   ReferenceRun mode = ReferenceRun::greedy, int threads = 0) {
  const std::vector<int> prompt = {1, 3, 2};
  const Index np = static_cast<Index>(prompt.size());
  reference::EncDecDecoderModel<double> ref(c, w);
  ref.set_encoder(E);
  const Run vanilla =
      run_runtime<T>(c, w, E, {SelfForm::kv, CrossForm::kv}, prompt, steps, threads);
  std::vector<int> ref_tokens;
  RowMatrix<double> R;
  if (mode == ReferenceRun::greedy) {
    std::vector<RowVector<double>> ref_logits;
    ref_tokens = ref.generate(prompt, steps, &ref_logits);
    R = stack(ref_logits);
  } else {
    std::vector<int> seq = prompt;
    seq.insert(seq.end(), vanilla.tokens.begin(), vanilla.tokens.end() - 1);
    R = ref.forward(seq).bottomRows(steps);
    ASSERT_EQ(ref.position(), np + steps - 1);
    for (Index t = 0; t < steps; ++t) {
      Index best = 0;
      R.row(t).maxCoeff(&best);
      ref_tokens.push_back(static_cast<int>(best));
    }
  }
  ASSERT_EQ(static_cast<Index>(ref_tokens.size()), steps);
  EXPECT_EQ(vanilla.tokens, ref_tokens) << "vanilla runtime, " << type_name<T>();
  // Equal tokens only mean something if the decode does not stick to one token.
  const std::set<int> distinct(ref_tokens.begin(), ref_tokens.end());
  if (std::getenv("TTX_VERBOSE")) {
    for (int t : ref_tokens) std::cout << t << " ";
    std::cout << "\n";
  }
  EXPECT_GE(static_cast<Index>(distinct.size()), steps / 4) << "a degenerate greedy decode";
  // The vanilla runtime itself: within 8 units of roundoff of the cache type or of float.
  const double u = std::max(unit_roundoff<T>(), unit_roundoff<float>());
  EXPECT_TRUE(
      test::close_to(vanilla.logits, R, 8 * u, "8 u(storage, float arithmetic)", type_name<T>()));
  // Greedy tokens can only be compared while the reference has a clear winner: a step whose
  // top-2 logit margin is within 4x vanilla's largest absolute logit error at that step (a
  // candidate within the rule's factor 2 of vanilla can move each of the two logits by 2x that)
  // is a near tie that a correct low-precision run may break either way, after which the
  // sequences legitimately differ. Tokens and logits are compared up to and including the first
  // near tie (its logits still share the prefix); at least 8 steps must be tie-free (measured:
  // bf16 Whisper-like 24 of 40, bf16 T5-like 10 of 36).
  // In float and double there is no near tie in these runs: everything is compared.
  Index cut = steps;
  for (Index t = 0; t < steps && cut == steps; ++t) {
    RowVector<double> row = R.row(t);
    Index best = 0;
    const double top = row.maxCoeff(&best);
    row(best) = -std::numeric_limits<double>::infinity();
    if (top - row.maxCoeff() <= 4 * (vanilla.logits.row(t) - R.row(t)).cwiseAbs().maxCoeff())
      cut = t + 1;
  }
  EXPECT_GE(cut, std::min<Index>(steps, 8))
      << "near tie at step " << cut - 1 << ", " << type_name<T>();
  if (std::getenv("TTX_VERBOSE") && cut < steps)
    std::cout << type_name<T>() << ": near tie at step " << cut - 1 << ", compared " << cut
              << " of " << steps << " steps\n";
  const std::vector<int> ref_head(ref_tokens.begin(), ref_tokens.begin() + (cut - 1));
  for (const EncDecForms f : forms) {
    const Run r = run_runtime<T>(c, w, E, f, prompt, steps, threads);
    const std::string what =
        std::string("self=") + rewrite::form_name(f.self) + " cross=" + rewrite::form_name(f.cross);
    if (cut == steps)
      EXPECT_EQ(r.tokens, ref_tokens) << what << ", " << type_name<T>();
    else
      EXPECT_EQ(std::vector<int>(r.tokens.begin(), r.tokens.begin() + (cut - 1)), ref_head)
          << what << ", " << type_name<T>();
    EXPECT_TRUE(within_rule_logged(
        RowMatrix<double>(r.logits.topRows(cut)), RowMatrix<double>(vanilla.logits.topRows(cut)),
        RowMatrix<double>(R.topRows(cut)), rule<T>(r.cond, what), type_name<T>()))
        << what;
  }
}

const std::vector<EncDecForms> kAllForms = {{SelfForm::inputs, CrossForm::shared_encoder},
                                            {SelfForm::inputs, CrossForm::keys},
                                            {SelfForm::inputs, CrossForm::hybrid},
                                            {SelfForm::kv, CrossForm::shared_encoder},
                                            {SelfForm::inputs, CrossForm::kv}};

TYPED_TEST(EncDecKernel, SmallWhisperGreedy40Steps) {
  Rng rng(14);  // a seed whose greedy decode keeps varying (no short cycle): 18 distinct tokens
  const auto c = test::whisper_config(64, 4, 3, 97, 64);
  const auto w = test::random_encdec<double>(c, 256, rng, true);
  const RowMatrix<double> E = test::random_matrix<double>(50, 64, 1.0, rng);
  // The K-only cross cache amplifies the cache's rounding by up to cond(W_K) (~3.9e3 here): at
  // bf16 storage that is a ~0.8 relative logit error and different tokens from step ~23 (SPEC.md
  // §1 "Precision": the X-cache / shared encoder cache is the form that survives bf16; the
  // precision planner, certify_encdec, reports it). So bf16 runs every other form.
  std::vector<EncDecForms> forms = kAllForms;
  if (std::is_same_v<TypeParam, bf16>)
    forms.erase(std::remove_if(forms.begin(), forms.end(),
                               [](EncDecForms f) { return f.cross == CrossForm::keys; }),
                forms.end());
  check_decoder<TypeParam>(c, w, E, 40, forms);
}

TYPED_TEST(EncDecKernel, SmallT5GreedyXCacheAndSharedEncoder) {
  Rng rng(6);
  // T5-11B's ratio r = e / d = 16 (d 1024, e 16384) at reduced size: d 32, 8 heads of 64.
  const auto c = test::t5_config(32, 8, 64, 2, 64);
  const auto w = test::random_encdec<double>(c, 128, rng, false);
  const RowMatrix<double> E = test::random_matrix<double>(40, 32, 1.0, rng);
  check_decoder<TypeParam>(c, w, E, 36,
                           {{SelfForm::inputs, CrossForm::shared_encoder},
                            {SelfForm::kv, CrossForm::shared_encoder},
                            {SelfForm::inputs, CrossForm::kv}});
}

TEST(EncDecKernelWhisperTiny, Greedy32StepsAllCrossForms) {
  // Whisper-tiny: d 384, 6 heads, 4 layers, FFN 1536, p 1500 encoder rows, 32 greedy tokens after
  // a 3-token prompt, vanilla and every slim form against one teacher-forced double reference
  // run (see ReferenceRun). Float storage; the vocabulary is reduced to 512 (it only sizes the LM
  // head); bf16 and double storage run at the smaller shapes above.
  Rng rng(7);
  const auto c = test::whisper_config(384, 6, 4, 512, 448);
  const auto w = test::random_encdec<double>(c, 1536, rng, true);
  const RowMatrix<double> E = test::random_matrix<double>(1500, 384, 1.0, rng);
  // One thread per attention: ctest runs test executables side by side on the 2 cores.
  check_decoder<float>(c, w, E, 32,
                       {{SelfForm::inputs, CrossForm::shared_encoder},
                        {SelfForm::inputs, CrossForm::keys},
                        {SelfForm::inputs, CrossForm::hybrid},
                        {SelfForm::inputs, CrossForm::kv}},
                       ReferenceRun::teacher_forced, /*threads=*/1);
}

// ---------------------------------------------------------------------------------------------
// A batch step (sequences split across threads, weights read once) equals stepping each sequence
// alone (all threads on its attention): sequences at different positions, with encoder outputs
// of different lengths, for vanilla, the shared encoder cache with the X-cache, and T5's bias.

void check_batch(const EncDecDecoderConfig& c, const EncDecDecoderWeights<double>& w,
                 EncDecForms forms, Rng& rng) {
  const kernel::EncDecDecoder<float> dec(rewrite::plan_encdec_decoder<float>(c, w, forms));
  const Index d = c.block.self_attn.shape.d;
  const std::vector<Index> lengths = {30, 45, 17}, warmup = {0, 2, 5};
  std::vector<RowMatrix<double>> E;
  for (Index p : lengths) E.push_back(test::random_matrix<double>(p, d, 1.0, rng));
  std::vector<kernel::EncDecState<float>> batch, alone;
  for (size_t b = 0; b < lengths.size(); ++b) {
    for (auto* v : {&batch, &alone}) {
      v->push_back(dec.make_state(50, 16));
      dec.encode(v->back(), E[b]);
      for (Index t = 0; t < warmup[b]; ++t) dec.step(v->back(), static_cast<int>(t + b) % 7);
    }
  }
  std::vector<kernel::EncDecState<float>*> ptrs;
  for (auto& st : batch) ptrs.push_back(&st);
  for (int step = 0; step < 4; ++step) {
    const std::vector<int> tokens = {step + 1, 2 * step + 3, 5};
    const RowMatrix<float> L = dec.step(ptrs, tokens);
    for (size_t b = 0; b < tokens.size(); ++b) {
      const RowVector<float> one = dec.step(alone[b], tokens[b]);
      // Same operations up to the order of float sums (matrix vs vector products, thread split).
      EXPECT_TRUE(test::close_to(RowMatrix<double>(L.row(static_cast<Index>(b)).cast<double>()),
                                 RowMatrix<double>(one.cast<double>()), 64 * unit_roundoff<float>(),
                                 "float summation order", "f32"))
          << rewrite::form_name(forms.cross) << " sequence " << b << " step " << step;
    }
  }
  for (size_t b = 0; b < batch.size(); ++b) EXPECT_EQ(batch[b].position, alone[b].position);
}

TEST(EncDecKernelBatch, BatchStepEqualsSingleSequenceSteps) {
  Rng rng(12);
  const auto cw = test::whisper_config(64, 4, 2, 97, 64);
  const auto ww = test::random_encdec<double>(cw, 128, rng, true);
  check_batch(cw, ww, {SelfForm::kv, CrossForm::kv}, rng);
  check_batch(cw, ww, {SelfForm::inputs, CrossForm::shared_encoder}, rng);
  check_batch(cw, ww, {SelfForm::inputs, CrossForm::hybrid}, rng);
  const auto ct = test::t5_config(32, 8, 64, 2, 64);
  const auto wt = test::random_encdec<double>(ct, 128, rng, false);
  check_batch(ct, wt, {SelfForm::inputs, CrossForm::shared_encoder}, rng);
  check_batch(ct, wt, {SelfForm::kv, CrossForm::kv}, rng);
}

// ---------------------------------------------------------------------------------------------
// Bad inputs.

using test::expect_error_containing;

TEST(EncDecKernelErrors, BadInputs) {
  Rng rng(8);
  const auto c = test::whisper_config(32, 4, 2, 16, 8);
  const auto w = test::random_encdec<double>(c, 64, rng, true);
  const kernel::EncDecDecoder<float> dec(
      rewrite::plan_encdec_decoder<float>(c, w, {SelfForm::inputs, CrossForm::shared_encoder}));
  auto st = dec.make_state(10, 4);
  // Step before encode.
  EXPECT_THROW(dec.step(st, 1), ShapeError);
  expect_error_containing([&] { dec.step(st, 1); }, "call encode first");
  // Encoder width mismatch.
  EXPECT_THROW(dec.encode(st, RowMatrix<double>::Zero(5, 31)), ShapeError);
  expect_error_containing([&] { dec.encode(st, RowMatrix<double>::Zero(5, 31)); },
                          "E.cols() (= d) expected 32, got 31");
  // Encoder longer than the cache.
  EXPECT_THROW(dec.encode(st, RowMatrix<double>::Zero(11, 32)), CapacityError);
  expect_error_containing([&] { dec.encode(st, RowMatrix<double>::Zero(11, 32)); },
                          "capacity expected >= 11 rows, got capacity 10");
  dec.encode(st, test::random_matrix<double>(10, 32, 1.0, rng));
  // Token out of range.
  expect_error_containing([&] { dec.step(st, 16); }, "token id expected in [0, 16), got 16");
  // Self-cache capacity.
  for (int i = 0; i < 4; ++i) dec.step(st, 1);
  EXPECT_THROW(dec.step(st, 1), CapacityError);
  expect_error_containing([&] { dec.step(st, 1); },
                          "self cache capacity expected >= 5 tokens, got capacity 4");
  // A state made for another decoder (layer count mismatch).
  const auto c3 = test::whisper_config(32, 4, 3, 16, 8);
  const auto w3 = test::random_encdec<double>(c3, 64, rng, true);
  const kernel::EncDecDecoder<float> dec3(
      rewrite::plan_encdec_decoder<float>(c3, w3, {SelfForm::inputs, CrossForm::shared_encoder}));
  auto st3 = dec3.make_state(10, 4);
  expect_error_containing([&] { dec.encode(st3, RowMatrix<double>::Zero(5, 32)); },
                          "state expected caches for 2 layers");
  // A state of another form.
  const kernel::EncDecDecoder<float> deckv(
      rewrite::plan_encdec_decoder<float>(c, w, {SelfForm::kv, CrossForm::kv}));
  auto stkv = deckv.make_state(10, 4);
  expect_error_containing([&] { dec.encode(stkv, RowMatrix<double>::Zero(5, 32)); },
                          "forms self=inputs cross=shared_encoder");
  // Batch size mismatch.
  expect_error_containing(
      [&] {
        dec.step({&st}, {1, 2});
      },
      "tokens.size() (= states.size()) expected 1, got 2");
  // The same sequence twice in one batch (it would append two tokens to one cache).
  expect_error_containing(
      [&] {
        dec.step({&st, &st}, {1, 2});
      },
      "states expected distinct, non-null sequences");
  // Learned positions beyond the table.
  auto st_long = dec.make_state(10, 20);
  dec.encode(st_long, test::random_matrix<double>(10, 32, 1.0, rng));
  for (int i = 0; i < 8; ++i) dec.step(st_long, 1);
  EXPECT_THROW(dec.step(st_long, 1), CapacityError);
  expect_error_containing([&] { dec.step(st_long, 1); }, "position expected < max_positions=8");
}

TEST(EncDecKernelErrors, KernelArguments) {
  const AttentionShape s{32, 4, 4, 8};
  Rng rng(9);
  const auto w = test::random_attention<double>(s, rng);
  const auto si = rewrite::inputs_attention<float>(w, {s, 0, {}});
  RowCache<float> rows(31, 4);
  rows.append(RowMatrix<float>::Zero(2, 31));
  RowVector<float> q = RowVector<float>::Zero(32), heads(32);
  expect_error_containing([&] { kernel::inputs_heads(q, si, rows, nullptr, heads); },
                          "rows.width() (= row_width) expected 32, got 31");
  RowCache<float> empty(32, 4);
  expect_error_containing([&] { kernel::inputs_heads(q, si, empty, nullptr, heads); },
                          "cached rows expected >= 1, got 0");
  RowCache<float> ok(32, 4);
  ok.append(RowMatrix<float>::Zero(3, 32));
  RowVector<float> q_bad = RowVector<float>::Zero(31);
  expect_error_containing([&] { kernel::inputs_heads(q_bad, si, ok, nullptr, heads); },
                          "q.size() expected 32, got 31");
  RowVector<float> heads_bad(33);
  expect_error_containing([&] { kernel::inputs_heads(q, si, ok, nullptr, heads_bad); },
                          "heads.size() expected 32, got 33");
  // Keys form: the cache width must be e.
  const auto sk = rewrite::keys_attention<float>(w, {s, 0, {}});
  expect_error_containing([&] { kernel::keys_heads(q, sk, rows, nullptr, heads); },
                          "keys.width() (= kv_width) expected 32, got 31");
  expect_error_containing([&] { kernel::keys_heads(q, sk, empty, nullptr, heads); },
                          "cached rows expected >= 1, got 0");
  // Vanilla: an empty cache; a negative thread count reaches the streaming kernel's check.
  KVCache<float> kv(s, 4);
  expect_error_containing([&] { kernel::kv_heads(q, kv, 0.0, nullptr, heads); },
                          "cached rows expected >= 1, got 0");
  kv.append(RowMatrix<float>::Zero(1, 32), RowMatrix<float>::Zero(1, 32));
  expect_error_containing([&] { kernel::kv_heads(q, kv, 0.0, nullptr, heads, -1); },
                          "opt.threads expected >= 0, got -1");
  // The decoder rejects a negative thread count at construction.
  const auto c = test::whisper_config(32, 4, 1, 16, 8);
  const auto wd = test::random_encdec<double>(c, 64, rng, true);
  expect_error_containing(
      [&] { kernel::EncDecDecoder<float>(rewrite::plan_encdec_decoder<float>(c, wd, {}), -2); },
      "threads expected >= 0, got -2");
}

}  // namespace
}  // namespace ttx
