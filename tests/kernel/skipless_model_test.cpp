// ttx-test-labels: skipless
// The skipless runtime (include/ttx/kernel/skipless_model.hpp) on ordinary (not rewritten)
// weights against the reference DecoderModel, its GEMV against a plain product, identity
// (removed) projections, rollback, byte accounting and bad input. The rewritten weights are
// covered by tests/rewrite/skipless_test.cpp.
#include "ttx/kernel/skipless_model.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/model.hpp"
#include "ttx/rewrite/skipless.hpp"

using namespace ttx;

namespace {

const int kSingleThreaded = [] {  // tiny products: OpenMP threads would only spin
  Eigen::setNbThreads(1);
  return 1;
}();

ModelConfig make_config(BlockKind kind, AttentionShape s, FfnSpec ffn, RopeSpec rope) {
  ModelConfig c;
  c.vocab = 96;
  c.layers = 2;
  c.block.kind = kind;
  c.block.attn = AttentionConfig{s, 0.0, std::move(rope)};
  c.block.ffn = ffn;
  c.final_norm = false;
  return c;
}

ModelWeights<double> make_weights(const ModelConfig& c, Index f, test::Rng& rng) {
  ModelWeights<double> w =
      test::random_model<double>(c, f, rng, test::BiasOptions::all(), /*ffn_bias=*/true);
  for (auto& b : w.blocks) b.norm1 = b.norm2 = {};  // skipless blocks have no norms
  return w;
}

template <class T>
void expect_matches_reference(ModelConfig cfg, Index f, std::uint64_t seed) {
  SCOPED_TRACE(type_name<T>());
  test::Rng rng(seed);
  const ModelWeights<double> w = make_weights(cfg, f, rng);
  // Both paths and the reference see the same (storage-rounded) weights.
  const ModelWeights<T> wt = test::cast<T>(w);
  const ModelWeights<double> wd = test::cast<double>(wt);
  const std::vector<int> toks = {5, 17, 3, 3, 90, 41, 0, 12, 77, 8, 8, 64};
  reference::DecoderModel<double> ref(cfg, wd);
  reference::DecoderModel<float> base(cfg, test::cast<float>(wt));
  kernel::SkiplessModel<T> run(cfg, wt, 16);
  const RowMatrix<double> L_ref = ref.forward(toks);
  const RowMatrix<float> L_base = base.forward(toks);
  const RowMatrix<float> L_run = run.forward(toks);
  EXPECT_TRUE(test::within_rule(L_run, L_base, L_ref,
                                {2.0, test::roundoff_floor<float>(), "same computation, float"},
                                type_name<T>()));
  EXPECT_EQ(run.position(), static_cast<Index>(toks.size()));
}

}  // namespace

TEST(SkiplessModel, GemvMatchesPlainProductOnAwkwardSizes) {
  test::Rng rng(1);
  for (Index in : {1, 3, 4, 7, 9, 33})
    for (Index out : {1, 3, 15, 16, 17, 33, 100}) {
      const RowMatrix<double> W = test::random_matrix<double>(in, out, 1.0, rng);
      const RowVector<double> x = test::random_vector<double>(in, 0.0, 1.0, rng);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        const RowMatrix<T> Wt = W.cast<T>();
        const RowMatrix<double> Wd = Wt.template cast<double>();
        const RowVector<float> xf = x.cast<float>();
        RowVector<float> y(out);
        kernel::skipless_detail::gemv(xf.data(), Wt.data(), in, out, out, y.data());
        const RowVector<float> base = xf * Wt.template cast<float>();
        const RowVector<double> ref = xf.cast<double>() * Wd;
        EXPECT_TRUE(test::within_rule(y, base, ref, {2.0, test::roundoff_floor<float>(), ""},
                                      type_name<T>()))
            << in << "x" << out;
      };
      run(float());
      run(bf16());
      run(f16());
    }
}

TEST(SkiplessModel, SerialGqaMatchesReference) {
  const auto cfg = make_config(BlockKind::skipless_serial, {32, 4, 2, 8}, FfnSpec::swiglu(),
                               RopeSpec::full(8, RopeLayout::half_split));
  expect_matches_reference<float>(cfg, 80, 2);
  expect_matches_reference<bf16>(cfg, 80, 3);
  expect_matches_reference<f16>(cfg, 80, 4);
}

TEST(SkiplessModel, ParallelMhaWithPositionsAndFinalNormsMatchesReference) {
  auto cfg =
      make_config(BlockKind::skipless_parallel, {32, 4, 4, 8}, FfnSpec::mlp(Activation::gelu_tanh),
                  RopeSpec::full(8, RopeLayout::interleaved));
  cfg.learned_positions = true;
  cfg.max_positions = 16;
  cfg.final_norm = true;
  cfg.final_norm_spec = NormSpec::layer(1e-5);
  expect_matches_reference<float>(cfg, 64, 5);
  cfg.final_norm_spec = NormSpec::rms(1e-6, GainConvention::one_plus);
  cfg.block.attn.rope = RopeSpec::none();
  expect_matches_reference<float>(cfg, 64, 6);
}

// An empty projection is the identity: bitwise the same as an explicit identity matrix (x * I
// adds exact zeros in float).
TEST(SkiplessModel, EmptyProjectionIsTheIdentity) {
  for (BlockKind kind : {BlockKind::skipless_serial, BlockKind::skipless_parallel}) {
    const auto cfg = make_config(kind, {32, 4, 4, 8}, FfnSpec::swiglu(),
                                 RopeSpec::full(8, RopeLayout::half_split));
    test::Rng rng(7);
    ModelWeights<float> eye = test::cast<float>(make_weights(cfg, 48, rng));
    for (auto& b : eye.blocks) {
      b.attn.wq = b.attn.wk = b.attn.wv = b.attn.wo = RowMatrix<float>::Identity(32, 32);
    }
    ModelWeights<float> empty = eye;
    for (auto& b : empty.blocks) b.attn.wq = b.attn.wk = b.attn.wv = b.attn.wo = {};
    kernel::SkiplessModel<float> a(cfg, eye, 8), b(cfg, empty, 8);
    const std::vector<int> toks = {1, 2, 3, 4, 5};
    EXPECT_TRUE(test::bitwise_equal(a.forward(toks), b.forward(toks)));
    EXPECT_LT(b.weight_bytes_per_step(), a.weight_bytes_per_step());
  }
}

TEST(SkiplessModel, ResetAndTruncateReplayBitwise) {
  const auto cfg = make_config(BlockKind::skipless_serial, {32, 4, 2, 8}, FfnSpec::swiglu(),
                               RopeSpec::full(8, RopeLayout::half_split));
  test::Rng rng(8);
  kernel::SkiplessModel<bf16> m(cfg, test::cast<bf16>(make_weights(cfg, 48, rng)), 12);
  std::vector<RowVector<float>> first, second;
  const auto t1 = m.generate({4, 5, 6}, 6, &first);
  m.reset();
  EXPECT_EQ(m.position(), 0);
  const auto t2 = m.generate({4, 5, 6}, 6, &second);
  EXPECT_EQ(t1, t2);
  for (size_t i = 0; i < first.size(); ++i) EXPECT_TRUE(test::bitwise_equal(first[i], second[i]));
  // Roll back the last 3 tokens and replay them: the same logits, bitwise.
  const Index n = m.position();
  const RowVector<float> last = first.back();
  m.truncate(n - 3);
  m.step(t1[2]);
  m.step(t1[3]);
  EXPECT_TRUE(test::bitwise_equal(m.step(t1[4]), last));
}

TEST(SkiplessModel, ByteAccounting) {
  const auto cfg =
      make_config(BlockKind::skipless_serial, {32, 4, 2, 8}, FfnSpec::swiglu(), RopeSpec::none());
  test::Rng rng(9);
  const auto w = make_weights(cfg, 48, rng);
  kernel::SkiplessModel<bf16> m(cfg, test::cast<bf16>(w), 4);
  // Everything the model uses except the embedding table, of which one row is read.
  const Index params = rewrite::skipless_parameter_count(cfg, w) - cfg.vocab * 32 + 32;
  EXPECT_EQ(m.weight_bytes_per_step(), static_cast<std::size_t>(params) * sizeof(bf16));
}

TEST(SkiplessModel, BadInputsGiveClearErrors) {
  const auto cfg =
      make_config(BlockKind::skipless_serial, {32, 4, 2, 8}, FfnSpec::swiglu(), RopeSpec::none());
  test::Rng rng(10);
  const ModelWeights<float> w = test::cast<float>(make_weights(cfg, 48, rng));
  {
    ModelConfig c = cfg;
    c.block.kind = BlockKind::parallel;
    EXPECT_THROW(kernel::SkiplessModel<float>(c, w, 4), UnsupportedError);
  }
  {
    ModelWeights<float> bad = w;
    bad.blocks[1].attn.wv = RowMatrix<float>::Zero(32, 8);
    EXPECT_NE(test::error_text([&] {
                kernel::SkiplessModel<float>(cfg, bad, 4);
              }).find("blocks[1].attn.wv expected 32x16, got 32x8"),
              std::string::npos);
    bad = w;
    bad.blocks[0].attn.wk = {};  // GQA: K is 32 x 16, cannot be the identity
    EXPECT_NE(test::error_text([&] { kernel::SkiplessModel<float>(cfg, bad, 4); })
                  .find("blocks[0].attn.wk is empty (the identity, a removed projection), which "
                        "needs a square shape: 32 inputs expected = 16 outputs"),
              std::string::npos);
    bad = w;
    bad.blocks[0].ffn.b_in = RowVector<float>::Zero(3);
    EXPECT_NE(test::error_text([&] {
                kernel::SkiplessModel<float>(cfg, bad, 4);
              }).find("blocks[0].ffn.b_in size expected 48, got 3"),
              std::string::npos);
    bad = w;
    bad.blocks[1].ffn.w_in = RowMatrix<float>::Zero(16, 48);  // P kept, so the FFN reads d = 32
    EXPECT_NE(test::error_text([&] {
                kernel::SkiplessModel<float>(cfg, bad, 4);
              }).find("blocks[1].ffn.w_in expected 32x48, got 16x48"),
              std::string::npos);
    bad = w;
    bad.lm_head = RowMatrix<float>::Zero(32, 5);
    EXPECT_THROW(kernel::SkiplessModel<float>(cfg, bad, 4), ShapeError);
  }
  EXPECT_NE(test::error_text([&] {
              kernel::SkiplessModel<float>(cfg, w, 0);
            }).find("capacity expected > 0, got 0"),
            std::string::npos);
  kernel::SkiplessModel<float> m(cfg, w, 2);
  EXPECT_NE(test::error_text([&] { m.step(96); }).find("token expected in [0, 96), got 96"),
            std::string::npos);
  EXPECT_NE(test::error_text([&] { m.generate({}, 1); }).find("prompt expected at least 1 token"),
            std::string::npos);
  m.step(1);
  m.step(2);
  EXPECT_THROW(m.step(3), CapacityError);
  EXPECT_NE(test::error_text([&] {
              m.step(3);
            }).find("cache capacity expected >= 3 tokens, got capacity 2"),
            std::string::npos);
  EXPECT_EQ(m.position(), 2);  // a refused step changes nothing
  EXPECT_NE(test::error_text([&] { m.truncate(3); }).find("n expected in [0, 2], got 3"),
            std::string::npos);
  ModelConfig lp = cfg;
  lp.learned_positions = true;
  lp.max_positions = 1;
  ModelWeights<float> wp = w;
  wp.positions = RowMatrix<float>::Zero(1, 32);
  kernel::SkiplessModel<float> p(lp, wp, 4);
  p.step(0);
  EXPECT_NE(test::error_text([&] { p.step(0); }).find("position expected < max_positions=1, got 1"),
            std::string::npos);
}
