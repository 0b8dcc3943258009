// ttx-test-labels: golden reference
// The reference oracle against PyTorch (fixtures from tools/gen_golden.py, written the way each
// model family writes its computation: HF Llama, GPT-J, nn.MultiheadAttention, Whisper, T5,
// nn.LayerNorm / HF RMSNorms, the family MLPs and a 2-layer Llama-like decoder).
//
// Every comparison runs twice:
//  * double: the oracle in double against PyTorch in float64. Both are exact up to double
//    roundoff of computations a few dozen operations deep (observed ~1e-15); the bound 1e-12 is
//    three orders above that and ten below any real mistake (a wrong sign, bias or pair is O(1)).
//  * float: the oracle in float against the same float64 golden, held to SPEC.md §5's rule with
//    PyTorch's own float32 run of the same code (fixture tensor `<name>_f32`) as the baseline:
//    err(ttx f32) <= 2 * err(PyTorch f32) + 4 u(f32). Both carry float roundoff of the same
//    depth (inputs and weights rounded once, sums of <= 64 terms, two layers at most), so a
//    correct oracle lands within a small factor of PyTorch's ~1e-7, and the 4u floor covers a
//    baseline that happens to be unusually accurate.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>
#include <vector>

#include "support/fixture.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/model.hpp"

using namespace ttx;

namespace {

template <class T>
class Golden : public ::testing::Test {};

struct TypeNames {
  template <class T>
  static std::string GetName(int) {
    return type_name<T>();
  }
};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Golden, Scalars, TypeNames);

/// Checks `got` (computed by the oracle in T) against fixture tensor `t` as described above.
template <class T, class D>
void expect_golden(const test::Fixture& fx, const std::string& t, const Eigen::MatrixBase<D>& got) {
  const RowMatrix<double> golden = fx.matrix(t);
  const RowMatrix<double> value = got.template cast<double>();
  if constexpr (std::is_same_v<T, double>) {
    EXPECT_TRUE(test::close_to(value, golden, 1e-12,
                               "PyTorch float64 vs oracle in double: both exact to double "
                               "roundoff (~1e-15) of a shallow computation",
                               type_name<T>()))
        << "tensor " << t;
  } else {
    const RowMatrix<double> torch_f32 = fx.matrix(t + "_f32");
    test::Tolerance tol{2.0, test::roundoff_floor<float>(),
                        "baseline is PyTorch's own float32 run of the same family code; same "
                        "roundoff depth (one or two layers, sums of <= 64 terms)"};
    EXPECT_TRUE(test::within_rule(value, torch_f32, golden, tol, type_name<T>())) << "tensor " << t;
  }
}

template <class T>
AttentionWeights<T> attention_weights(const test::Fixture& fx, const std::string& pre = "") {
  AttentionWeights<T> w;
  w.wq = fx.matrix<T>(pre + "wq");
  w.wk = fx.matrix<T>(pre + "wk");
  w.wv = fx.matrix<T>(pre + "wv");
  w.wo = fx.matrix<T>(pre + "wo");
  const auto bias = [&](const char* name, RowVector<T>& b) {
    if (fx.has(pre + name)) b = fx.vector<T>(pre + name);
  };
  bias("bq", w.bq);
  bias("bk", w.bk);
  bias("bv", w.bv);
  bias("bo", w.bo);
  return w;
}

/// Prefill of `prefill` rows of X, then one decode step per remaining row; returns all outputs.
template <class T>
RowMatrix<T> prefill_then_decode(const RowMatrix<T>& X, Index prefill, const AttentionWeights<T>& w,
                                 const AttentionConfig& cfg, reference::KVCache<T>& cache,
                                 const reference::ScoreBias& bias = {}) {
  RowMatrix<T> Y(X.rows(), w.wo.cols());
  Y.topRows(prefill) = reference::self_attention<T>(X.topRows(prefill), w, cfg, cache, bias);
  for (Index r = prefill; r < X.rows(); ++r)
    Y.row(r) = reference::self_attention<T>(X.row(r), w, cfg, cache, bias);
  return Y;
}

}  // namespace

// nn.Linear with its weight in PyTorch's (out x in) layout: WeightLayout::out_in and the
// from_pytorch() transposed map, both without a copy of the weight.
TYPED_TEST(Golden, LinearPytorchLayout) {
  using T = TypeParam;
  const test::Fixture fx("linear_pytorch_layout");
  const RowMatrix<T> W = fx.matrix<T>("w_out_in");  // 16 x 24 = (out x in)
  const RowVector<T> b = fx.vector<T>("b");
  const RowMatrix<T> X = fx.matrix<T>("x");
  expect_golden<T>(fx, "y", reference::linear<T>(X, W, b, WeightLayout::out_in));
  expect_golden<T>(fx, "y", reference::linear<T>(X, from_pytorch(W.data(), W.rows(), W.cols()), b));
}

// HF LlamaAttention: GQA, half-split RoPE (rotate_half) with Llama-3 scaled inv_freq supplied by
// the caller, prefill 5 then 3 decode steps; outputs and both caches (keys stored rotated).
TYPED_TEST(Golden, LlamaAttentionGqaHalfSplitRope) {
  using T = TypeParam;
  const test::Fixture fx("llama_attention");
  AttentionConfig cfg{{32, 4, 2, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  const RowVector<double> inv = fx.vector("inv_freq");
  cfg.rope.inv_freq.assign(inv.data(), inv.data() + inv.size());
  const RowMatrix<T> X = fx.matrix<T>("x");
  reference::KVCache<T> cache;
  const RowMatrix<T> Y = prefill_then_decode<T>(X, 5, attention_weights<T>(fx), cfg, cache);
  expect_golden<T>(fx, "y_prefill", Y.topRows(5));
  expect_golden<T>(fx, "y_decode", Y.bottomRows(3));
  expect_golden<T>(fx, "k_cache", cache.k);
  expect_golden<T>(fx, "v_cache", cache.v);
}

// GPT-J: interleaved partial rotary (rotary_dim 4 of head_dim 8, rotate_every_two).
TYPED_TEST(Golden, GptjAttentionInterleavedPartialRotary) {
  using T = TypeParam;
  const test::Fixture fx("gptj_attention");
  AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::full(8, RopeLayout::interleaved)};
  cfg.rope.rotary_dim = 4;
  const RowMatrix<T> X = fx.matrix<T>("x");
  reference::KVCache<T> cache;
  const RowMatrix<T> Y = prefill_then_decode<T>(X, 5, attention_weights<T>(fx), cfg, cache);
  expect_golden<T>(fx, "y_prefill", Y.topRows(5));
  expect_golden<T>(fx, "y_decode", Y.bottomRows(2));
  expect_golden<T>(fx, "k_cache", cache.k);
}

// torch.nn.MultiheadAttention with q/k/v/o biases, causal prompt then decode steps; the fixture
// keeps PyTorch's (out x in) weights, transposed here.
TYPED_TEST(Golden, TorchMultiheadAttentionWithBiases) {
  using T = TypeParam;
  const test::Fixture fx("torch_mha");
  AttentionWeights<T> w;
  w.wq = fx.matrix<T>("wq_out_in").transpose();
  w.wk = fx.matrix<T>("wk_out_in").transpose();
  w.wv = fx.matrix<T>("wv_out_in").transpose();
  w.wo = fx.matrix<T>("wo_out_in").transpose();
  w.bq = fx.vector<T>("bq");
  w.bk = fx.vector<T>("bk");
  w.bv = fx.vector<T>("bv");
  w.bo = fx.vector<T>("bo");
  const AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  const RowMatrix<T> X = fx.matrix<T>("x");
  reference::KVCache<T> cache;
  const RowMatrix<T> Y = prefill_then_decode<T>(X, 5, w, cfg, cache);
  expect_golden<T>(fx, "y_prefill", Y.topRows(5));
  expect_golden<T>(fx, "y_decode", Y.bottomRows(2));
}

// Whisper: self-attention (q/v/o biases, no k bias) prefill 4 + 2 decode, cross-attention to the
// encoder output, and the whole decoder layer (LayerNorm, GELU-erf MLP) over the same steps.
TYPED_TEST(Golden, WhisperSelfCrossAndDecoderLayer) {
  using T = TypeParam;
  const test::Fixture fx("whisper");
  const AttentionShape s{32, 4, 4, 8};
  WhisperBlockConfig cfg;
  cfg.self_attn = {s, 0.0, RopeSpec::none()};
  cfg.cross_attn = {s, 0.0, RopeSpec::none()};
  WhisperBlockWeights<T> w;
  w.self_attn = attention_weights<T>(fx, "self_");
  w.cross_attn = attention_weights<T>(fx, "cross_");
  ASSERT_EQ(w.self_attn.bk.size(), 0) << "Whisper has no k bias";
  const auto layer_norm = [&](const std::string& name, NormWeights<T>& n) {
    n.gain = fx.vector<T>(name + "_g");
    n.beta = fx.vector<T>(name + "_b");
  };
  layer_norm("ln_self", w.norm_self);
  layer_norm("ln_cross", w.norm_cross);
  layer_norm("ln_ffn", w.norm_ffn);
  w.ffn.w_in = fx.matrix<T>("fc1");
  w.ffn.b_in = fx.vector<T>("fc1_b");
  w.ffn.w_out = fx.matrix<T>("fc2");
  w.ffn.b_out = fx.vector<T>("fc2_b");
  const RowMatrix<T> X = fx.matrix<T>("x");
  const RowMatrix<T> E = fx.matrix<T>("enc");

  reference::KVCache<T> cache;
  expect_golden<T>(fx, "self_y", prefill_then_decode<T>(X, 4, w.self_attn, cfg.self_attn, cache));
  expect_golden<T>(fx, "cross_y",
                   reference::cross_attention<T>(X, E, w.cross_attn, cfg.cross_attn));

  reference::KVCache<T> layer_cache;
  RowMatrix<T> Y(X.rows(), X.cols());
  Y.topRows(4) = reference::whisper_decoder_block<T>(X.topRows(4), E, w, cfg, layer_cache);
  for (Index r = 4; r < X.rows(); ++r)
    Y.row(r) = reference::whisper_decoder_block<T>(X.row(r), E, w, cfg, layer_cache);
  expect_golden<T>(fx, "layer_y", Y);
}

// nn.LayerNorm, LlamaRMSNorm (plain gain) and GemmaRMSNorm (applied gain 1 + g).
TYPED_TEST(Golden, LayerNormAndRmsNormConventions) {
  using T = TypeParam;
  const test::Fixture fx("norms");
  const RowMatrix<T> X = fx.matrix<T>("x");
  expect_golden<T>(
      fx, "layer_y",
      reference::norm<T>(X, {fx.vector<T>("ln_g"), fx.vector<T>("ln_b")}, NormSpec::layer(1e-5)));
  expect_golden<T>(fx, "rms_y",
                   reference::norm<T>(X, {fx.vector<T>("rms_g"), {}}, NormSpec::rms(1e-6)));
  expect_golden<T>(fx, "gemma_y",
                   reference::norm<T>(X, {fx.vector<T>("gemma_g"), {}},
                                      NormSpec::rms(1e-6, GainConvention::one_plus)));
}

// LlamaMLP (SwiGLU), GPT-J MLP (tanh GELU, biases), Whisper MLP (erf GELU, biases), T5 ReLU.
TYPED_TEST(Golden, FeedForwardFamilies) {
  using T = TypeParam;
  const test::Fixture fx("ffn");
  const RowMatrix<T> X = fx.matrix<T>("x");
  FfnWeights<T> swiglu;
  swiglu.w_in = fx.matrix<T>("swiglu_w_gate");
  swiglu.w_up = fx.matrix<T>("swiglu_w_up");
  swiglu.w_out = fx.matrix<T>("swiglu_w_down");
  expect_golden<T>(fx, "swiglu_y", reference::ffn<T>(X, swiglu, FfnSpec::swiglu()));

  FfnWeights<T> tanh_mlp;
  tanh_mlp.w_in = fx.matrix<T>("tanh_fc_in");
  tanh_mlp.b_in = fx.vector<T>("tanh_b_in");
  tanh_mlp.w_out = fx.matrix<T>("tanh_fc_out");
  tanh_mlp.b_out = fx.vector<T>("tanh_b_out");
  expect_golden<T>(fx, "tanh_y",
                   reference::ffn<T>(X, tanh_mlp, FfnSpec::mlp(Activation::gelu_tanh)));

  FfnWeights<T> erf_mlp;
  erf_mlp.w_in = fx.matrix<T>("erf_fc1");
  erf_mlp.b_in = fx.vector<T>("erf_b1");
  erf_mlp.w_out = fx.matrix<T>("erf_fc2");
  erf_mlp.b_out = fx.vector<T>("erf_b2");
  expect_golden<T>(fx, "erf_y", reference::ffn<T>(X, erf_mlp, FfnSpec::mlp(Activation::gelu_erf)));

  FfnWeights<T> relu;
  relu.w_in = fx.matrix<T>("relu_wi");
  relu.w_out = fx.matrix<T>("relu_wo");
  expect_golden<T>(fx, "relu_y", reference::ffn<T>(X, relu, FfnSpec::mlp(Activation::relu)));
}

// T5 decoder self-attention: scale 1 and an additive relative-position bias (HF's buckets,
// tabulated by the generator per head, query position and key position).
TYPED_TEST(Golden, T5RelativeBiasScaleOne) {
  using T = TypeParam;
  const test::Fixture fx("t5_attention");
  const AttentionConfig cfg{{32, 4, 4, 8}, 1.0, RopeSpec::none()};
  const RowMatrix<double> B = fx.matrix("bias");
  const Index P = B.cols();
  ASSERT_EQ(B.rows(), cfg.shape.heads * P);
  const reference::ScoreBias bias = [&B, P](Index h, Index q, Index k) { return B(h * P + q, k); };
  const RowMatrix<T> X = fx.matrix<T>("x");
  ASSERT_EQ(X.rows(), P);
  reference::KVCache<T> cache;
  expect_golden<T>(fx, "y",
                   prefill_then_decode<T>(X, 6, attention_weights<T>(fx), cfg, cache, bias));
}

// A 2-layer pre-norm Llama-like decoder: prompt logits, then greedy tokens and their logits.
TYPED_TEST(Golden, LlamaLikeDecoderLogitsAndGreedyTokens) {
  using T = TypeParam;
  const test::Fixture fx("llama_model");
  ModelConfig cfg;
  cfg.vocab = 48;
  cfg.layers = 2;
  cfg.block.kind = BlockKind::serial;
  cfg.block.attn = {{32, 4, 2, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  cfg.block.norm = NormSpec::rms(1e-6);
  cfg.block.ffn = FfnSpec::swiglu();
  cfg.final_norm_spec = NormSpec::rms(1e-6);
  ModelWeights<T> w;
  w.embedding = fx.matrix<T>("embedding");
  for (Index l = 0; l < cfg.layers; ++l) {
    const std::string p = "l" + std::to_string(l) + "_";
    BlockWeights<T> b;
    b.norm1.gain = fx.vector<T>(p + "norm1");
    b.norm2.gain = fx.vector<T>(p + "norm2");
    b.attn = attention_weights<T>(fx, p);
    b.ffn.w_in = fx.matrix<T>(p + "w_gate");
    b.ffn.w_up = fx.matrix<T>(p + "w_up");
    b.ffn.w_out = fx.matrix<T>(p + "w_down");
    w.blocks.push_back(b);
  }
  w.final_norm.gain = fx.vector<T>("final_norm");
  w.lm_head = fx.matrix<T>("lm_head");

  const RowVector<double> prompt_ids = fx.vector("prompt");
  std::vector<int> prompt;
  for (Index i = 0; i < prompt_ids.size(); ++i) prompt.push_back(static_cast<int>(prompt_ids(i)));
  const RowVector<double> want = fx.vector("tokens");
  const Index steps = want.size();

  reference::DecoderModel<T> model(cfg, w);
  expect_golden<T>(fx, "prompt_logits", model.forward(prompt));

  model.reset();
  std::vector<RowVector<T>> logits;
  const std::vector<int> got = model.generate(prompt, steps, &logits);
  ASSERT_EQ(static_cast<Index>(got.size()), steps);
  for (Index s = 0; s < steps; ++s)
    EXPECT_EQ(got[static_cast<size_t>(s)], static_cast<int>(want(s)))
        << "greedy step " << s
        << " (smallest top-2 logit gap in PyTorch: " << fx.scalar("min_top2_gap") << ")";
  RowMatrix<T> L(steps, cfg.vocab);
  for (Index s = 0; s < steps; ++s) L.row(s) = logits[static_cast<size_t>(s)];
  expect_golden<T>(fx, "step_logits", L);
}
