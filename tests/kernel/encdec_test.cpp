// ttx-test-labels: encdec
// The encoder–decoder runtime (kernel/encdec.hpp) against the reference decoder in double:
// every cross form (kv, keys, shared encoder cache, hybrid) and self form (kv, X-cache), in
// float, double and bfloat16 cache storage, single attention layers and whole Whisper- and
// T5-shaped decoders with greedy decoding; and every bad input.
#include "ttx/kernel/encdec.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "support/encdec_random.hpp"
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

// The relative error a working precision cannot avoid: a few units of roundoff of the cache type.
template <class T>
test::Tolerance rule(double cond = 1.0, const std::string& what = "") {
  test::Tolerance t;
  t.factor = 2.0;
  t.floor = test::roundoff_floor<accum_t<T>>(16.0);
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
  using A = accum_t<T>;
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
  RowVector<A> q = xa * w.wq.cast<A>() + w.bq.cast<A>();
  q *= A(cfg.effective_scale());
  RowVector<A> heads(s.q_width());
  kernel::kv_heads<T, A>(q, kv, bp, p, heads);
  const RowVector<A> vanilla = heads * w.wo.cast<A>() + w.bo.cast<A>();

  // Shared encoder cache.
  const auto si = rewrite::inputs_attention<A>(w, cfg);
  ECache<T> ec(s.d, p);
  ec.assign(Ea);
  kernel::inputs_heads<T, A>(xa * si.wq + si.bq, si, ec.rows(), bp, p, heads);
  const RowVector<A> shared = heads * si.wo + si.bo;
  EXPECT_TRUE(within_rule_logged(shared, vanilla, ref, rule<T>(), type_name<T>()))
      << "shared encoder cache, h_kv=" << s.kv_heads;

  if (s.kv_width() == s.d) {
    const auto sk = rewrite::keys_attention<A>(w, cfg);
    CrossKCache<T> kc(s, p);
    kc.assign(Ea * sk.wk);
    kernel::keys_heads<T, A>(xa * sk.wq + sk.bq, sk, kc.keys(), bp, p, heads);
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
                Index steps) {
  using A = accum_t<T>;
  const kernel::EncDecDecoder<T> dec(rewrite::plan_encdec_decoder<A>(c, w, forms));
  auto st = dec.make_state(E.rows(), static_cast<Index>(prompt.size()) + steps);
  dec.encode(st, E);
  std::vector<RowVector<A>> logits;
  Run r;
  r.tokens = dec.generate(st, prompt, steps, &logits);
  r.logits = stack(logits).template cast<double>();
  r.cond = dec.plan().max_cond;
  return r;
}

template <class T>
void check_decoder(const EncDecDecoderConfig& c, const EncDecDecoderWeights<double>& w,
                   const RowMatrix<double>& E, Index steps, const std::vector<EncDecForms>& forms) {
  const std::vector<int> prompt = {1, 3, 2};
  reference::EncDecDecoderModel<double> ref(c, w);
  ref.set_encoder(E);
  std::vector<RowVector<double>> ref_logits;
  const std::vector<int> ref_tokens = ref.generate(prompt, steps, &ref_logits);
  const RowMatrix<double> R = stack(ref_logits);
  const Run vanilla = run_runtime<T>(c, w, E, {SelfForm::kv, CrossForm::kv}, prompt, steps);
  EXPECT_EQ(vanilla.tokens, ref_tokens) << "vanilla runtime, " << type_name<T>();
  // The vanilla runtime itself: within 8 units of roundoff of the cache type.
  EXPECT_TRUE(
      test::close_to(vanilla.logits, R, 8 * unit_roundoff<T>(), "8 u(storage)", type_name<T>()));
  for (const EncDecForms f : forms) {
    const Run r = run_runtime<T>(c, w, E, f, prompt, steps);
    const std::string what =
        std::string("self=") + rewrite::form_name(f.self) + " cross=" + rewrite::form_name(f.cross);
    EXPECT_EQ(r.tokens, ref_tokens) << what << ", " << type_name<T>();
    EXPECT_TRUE(
        within_rule_logged(r.logits, vanilla.logits, R, rule<T>(r.cond, what), type_name<T>()))
        << what;
  }
}

const std::vector<EncDecForms> kAllForms = {{SelfForm::inputs, CrossForm::shared_encoder},
                                            {SelfForm::inputs, CrossForm::keys},
                                            {SelfForm::inputs, CrossForm::hybrid},
                                            {SelfForm::kv, CrossForm::shared_encoder},
                                            {SelfForm::inputs, CrossForm::kv}};

TYPED_TEST(EncDecKernel, SmallWhisperGreedy40Steps) {
  Rng rng(5);
  const auto c = test::whisper_config(64, 4, 3, 97, 64);
  const auto w = test::random_encdec<double>(c, 256, rng, true);
  const RowMatrix<double> E = test::random_matrix<double>(50, 64, 1.0, rng);
  check_decoder<TypeParam>(c, w, E, 40, kAllForms);
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

TEST(EncDecKernelWhisperTiny, GreedyAllCrossForms) {
  // Whisper-tiny: d 384, 6 heads, 4 layers, p 1500 encoder rows (vocabulary reduced to 512 so
  // that the double reference stays fast; fewer steps at full size).
  Rng rng(7);
  const auto c = test::whisper_config(384, 6, 4, 512, 448);
  const auto w = test::random_encdec<double>(c, 1536, rng, true);
  const RowMatrix<double> E = test::random_matrix<double>(1500, 384, 1.0, rng);
  check_decoder<float>(c, w, E, 3,
                       {{SelfForm::inputs, CrossForm::shared_encoder},
                        {SelfForm::inputs, CrossForm::keys},
                        {SelfForm::inputs, CrossForm::hybrid}});
}

// ---------------------------------------------------------------------------------------------
// Bad inputs.

template <class F>
void expect_error_containing(F&& f, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "expected a ttx::Error containing \"" << text << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

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
  expect_error_containing(
      [&] { kernel::inputs_heads<float, float>(q, si, rows, nullptr, 0, heads); },
      "rows.width() (= row_width) expected 32, got 31");
  RowCache<float> empty(32, 4);
  expect_error_containing(
      [&] { kernel::inputs_heads<float, float>(q, si, empty, nullptr, 0, heads); },
      "rows expected >= 1, got 0");
  RowCache<float> ok(32, 4);
  ok.append(RowMatrix<float>::Zero(3, 32));
  std::vector<float> bias(12, 0.f);
  expect_error_containing(
      [&] { kernel::inputs_heads<float, float>(q, si, ok, bias.data(), 2, heads); },
      "bias_stride expected >= cached rows 3, got 2");
  RowVector<float> q_bad = RowVector<float>::Zero(31);
  expect_error_containing(
      [&] { kernel::inputs_heads<float, float>(q_bad, si, ok, nullptr, 0, heads); },
      "q.size() expected 32, got 31");
}

}  // namespace
}  // namespace ttx
