// ttx-test-labels: reference
// Reference decoder model: generate() equals repeated forward(), a whole sequence equals prefill
// plus decode steps, reset(), learned positions, a skipless model without final norm, bad input.
#include "ttx/reference/model.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {

ModelConfig llama_like() {
  ModelConfig c;
  c.vocab = 40;
  c.layers = 2;
  c.block.attn = {{16, 4, 2, 4}, 0.0, RopeSpec::full(4, RopeLayout::half_split)};
  c.block.norm = NormSpec::rms(1e-6);
  c.block.ffn = FfnSpec::swiglu();
  c.final_norm_spec = NormSpec::rms(1e-6);
  return c;
}

}  // namespace

TEST(ReferenceModel, GenerateEqualsRepeatedForward) {
  test::Rng rng(61);
  const ModelConfig cfg = llama_like();
  const auto w = test::random_model<double>(cfg, 32, rng);
  const std::vector<int> prompt{1, 7, 30, 2};
  reference::DecoderModel<double> gen(cfg, w), manual(cfg, w);
  std::vector<RowVector<double>> logits;
  const std::vector<int> tokens = gen.generate(prompt, 5, &logits);
  ASSERT_EQ(tokens.size(), 5u);
  ASSERT_EQ(logits.size(), 5u);
  RowMatrix<double> L = manual.forward(prompt);
  for (size_t s = 0; s < tokens.size(); ++s) {
    const RowVector<double> last = L.row(L.rows() - 1);
    Index best = 0;
    last.maxCoeff(&best);
    EXPECT_EQ(tokens[s], static_cast<int>(best)) << "step " << s;
    EXPECT_TRUE(test::bitwise_equal(logits[s], last)) << "step " << s;
    L = manual.forward({static_cast<int>(best)});
  }
  EXPECT_EQ(gen.position(), static_cast<Index>(prompt.size() + tokens.size() - 1));

  // The whole sequence at once gives the same logits as prefill + decode steps.
  std::vector<int> all = prompt;
  all.insert(all.end(), tokens.begin(), tokens.end() - 1);
  reference::DecoderModel<double> whole(cfg, w);
  const RowMatrix<double> La = whole.forward(all);
  for (size_t s = 0; s < tokens.size(); ++s)
    EXPECT_TRUE(test::close_to(logits[s], La.row(static_cast<Index>(prompt.size() - 1 + s)), 1e-13,
                               "same operations, other grouping", "f64"))
        << "step " << s;

  // reset() forgets the caches: the same prompt gives the same logits again.
  const RowMatrix<double> first = whole.forward(prompt);
  whole.reset();
  EXPECT_EQ(whole.position(), 0);
  EXPECT_TRUE(test::bitwise_equal(whole.forward(prompt), La.topRows(prompt.size())));
  EXPECT_FALSE(test::bitwise_equal(first, La.topRows(prompt.size())));
}

TEST(ReferenceModel, LearnedPositionsAndSkiplessModelsRun) {
  test::Rng rng(62);
  ModelConfig gpt2 = llama_like();
  gpt2.block.attn.rope = RopeSpec::none();
  gpt2.block.norm = NormSpec::layer(1e-5);
  gpt2.block.ffn = FfnSpec::mlp(Activation::gelu_tanh);
  gpt2.final_norm_spec = NormSpec::layer(1e-5);
  gpt2.learned_positions = true;
  gpt2.max_positions = 6;
  reference::DecoderModel<double> m(
      gpt2, test::random_model<double>(gpt2, 32, rng, test::BiasOptions::all(), true));
  const std::vector<int> out = m.generate({3, 4}, 4);
  EXPECT_EQ(out.size(), 4u);
  EXPECT_EQ(m.position(), 5);
  // Position 5 is the last one: one more token fits, two do not.
  EXPECT_TRUE(test::throws<CapacityError>(
      [&] {
        m.forward({1, 2});
      },
      {"reference::DecoderModel::embed", "max_positions=6", "got 6"}));

  ModelConfig skipless = llama_like();
  skipless.block.kind = BlockKind::skipless_parallel;
  skipless.final_norm = false;
  reference::DecoderModel<double> s(skipless, test::random_model<double>(skipless, 32, rng));
  const RowMatrix<double> L = s.forward({0, 39, 5});
  EXPECT_EQ(L.rows(), 3);
  EXPECT_EQ(L.cols(), 40);
  EXPECT_TRUE(L.allFinite());
}

TEST(ReferenceModel, BadInputNamesTheArgument) {
  test::Rng rng(63);
  const ModelConfig cfg = llama_like();
  const auto w = test::random_model<double>(cfg, 32, rng);
  auto bad = w;
  bad.embedding = RowMatrix<double>::Zero(39, 16);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { reference::DecoderModel<double>(cfg, bad); },
      {"reference::DecoderModel", "embedding", "expected 40x16", "got 39x16"}));
  bad = w;
  bad.blocks.pop_back();
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::DecoderModel<double>(cfg, bad); },
                                       {"blocks.size()", "expected 2", "got 1"}));
  bad = w;
  bad.lm_head = RowMatrix<double>::Zero(40, 16);
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::DecoderModel<double>(cfg, bad); },
                                       {"lm_head", "expected 16x40", "got 40x16"}));
  ModelConfig learned = cfg;
  learned.learned_positions = true;
  learned.max_positions = 8;
  EXPECT_TRUE(test::throws<ShapeError>([&] { reference::DecoderModel<double>(learned, w); },
                                       {"positions", "expected 8x16", "got 0x0"}));

  reference::DecoderModel<double> m(cfg, w);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] {
        m.forward({1, 40});
      },
      {"reference::DecoderModel::embed", "token id", "expected in [0, 40)", "got 40"}));
  EXPECT_TRUE(test::throws<ShapeError>([&] { m.forward({-1}); }, {"token id", "got -1"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { m.generate({}, 3); },
      {"reference::DecoderModel::generate", "prompt", "expected at least 1 token", "got 0"}));
  bad = w;
  bad.final_norm.gain = RowVector<double>::Ones(15);
  reference::DecoderModel<double> mn(cfg, bad);
  EXPECT_TRUE(test::throws<ShapeError>(
      [&] { mn.forward({1}); }, {"reference::norm", "gain.size()", "expected 16", "got 15"}));
}
