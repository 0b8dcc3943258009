// ttx-test-labels: flashnorm
// FlashNorm offline transforms against the reference in double (SPEC.md §5 rule): gain folding
// for Llama (g), Gemma (1+g) and LayerNorm (beta into the bias) with one or several consumers,
// the sqrt(n) fold, mean-centering (one layer and the whole residual stream), whole models folded
// end to end (same greedy tokens), norm cancellation (eligibility, transform, the eps bound) and
// QK-norm gains in the RoPE tables; bad input.
#include "ttx/rewrite/flashnorm.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/tolerance.hpp"
#include "ttx/kernel/flashnorm.hpp"
#include "ttx/kernel/rope_tables.hpp"
#include "ttx/reference/model.hpp"

using namespace ttx;

namespace {

template <class F>
void expect_error(F&& f, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "expected a ttx::Error containing: " << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

struct Family {
  const char* name;
  NormSpec spec;
};
const std::vector<Family>& families() {
  static const std::vector<Family> f = {
      {"llama", NormSpec::rms(1e-6)},
      {"gemma", NormSpec::rms(1e-6, GainConvention::one_plus)},
      {"layernorm", NormSpec::layer(1e-5)},
  };
  return f;
}

// The folded path's floor: roundoff of the working precision, plus one more rounding of W* to the
// storage type when that is narrower than the accumulator (bf16: the gain product is re-rounded).
template <class T>
double fold_floor() {
  return test::roundoff_floor<accum_t<T>>() +
         (std::is_same_v<T, accum_t<T>> ? 0.0 : unit_roundoff<T>());
}

template <class C>
NormWeights<C> unit_norm(Index d) {
  return {RowVector<C>::Ones(d), {}};
}

}  // namespace

template <class T>
class FoldNorm : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, bf16>;
TYPED_TEST_SUITE(FoldNorm, StorageTypes);

// Norm -> linear (+ bias) vs the folded linear run by kernel::flashnorm_linear. LayerNorm's
// mean-centering stays at runtime here (the input is centred before the deferred product).
TYPED_TEST(FoldNorm, SingleConsumerMatchesNormThenLinear) {
  using T = TypeParam;
  using C = accum_t<T>;
  test::Rng rng(101);
  const Index n = 5, d = 48, out = 37;
  for (const Family& fam : families()) {
    for (bool sqrt_n : {false, true}) {
      RowMatrix<double> X = test::random_matrix<double>(n, d, 1.0, rng);
      X.array() += 0.7;  // a non-zero mean: LayerNorm must remove it
      const auto g = test::cast<T>(test::random_norm<double>(d, fam.spec, rng));
      const RowMatrix<T> W = test::random_projection<T>(d, out, rng);
      const RowVector<T> c = test::random_vector<T>(out, 0, 0.05, rng);
      const RowMatrix<double> ref =
          reference::linear<double>(reference::norm<double>(X, test::cast<double>(g), fam.spec),
                                    W.template cast<double>(), c.template cast<double>());
      const RowMatrix<C> Xc = X.cast<C>();
      const RowMatrix<C> base =
          reference::linear<C>(reference::norm<C>(Xc, test::cast<C>(g), fam.spec),
                               W.template cast<C>(), c.template cast<C>());
      rewrite::FoldOptions opt;
      opt.fold_sqrt_n = sqrt_n;
      const auto folded = rewrite::fold_norm(fam.spec, g, W, c, opt);
      EXPECT_EQ(folded.divide_by_n, !sqrt_n);
      EXPECT_EQ(folded.needs_centered_input, fam.spec.kind == NormKind::layer);
      RowMatrix<C> in = Xc;
      if (folded.needs_centered_input) in.colwise() -= in.rowwise().mean();
      RowMatrix<C> cand(n, out);
      kernel::flashnorm_linear<T>(in, folded.w, folded.b.template cast<C>(),
                                  {folded.eps, folded.divide_by_n}, cand);
      EXPECT_TRUE(test::within_rule(cand, base, ref,
                                    {2.0, fold_floor<T>(), "W* rounded once to the storage type"},
                                    type_name<T>()))
          << fam.name << " sqrt_n=" << sqrt_n;
      if (fam.spec.gain == GainConvention::one_plus) {
        // The convention is read from the spec, never guessed: folding g instead of 1 + g fails.
        NormSpec wrong = fam.spec;
        wrong.gain = GainConvention::plain;
        const auto bad = rewrite::fold_norm(wrong, g, W, c, opt);
        RowMatrix<C> out_bad(n, out);
        kernel::flashnorm_linear<T>(in, bad.w, bad.b.template cast<C>(), {bad.eps, bad.divide_by_n},
                                    out_bad);
        EXPECT_FALSE(
            test::within_rule(out_bad, base, ref, {2.0, fold_floor<T>(), ""}, type_name<T>()));
      }
    }
  }
}

// Several consumers: Q, K, V (and a fused QKV, which is bitwise the three folds side by side),
// gate and up of a GLU, the final norm into an untied LM head; run on the reference machinery
// with all-ones-gain norms.
TYPED_TEST(FoldNorm, SeveralConsumers) {
  using T = TypeParam;
  using C = accum_t<T>;
  test::Rng rng(102);
  const Index n = 4, d = 32, f = 56, vocab = 50;
  const AttentionShape s{d, 4, 2, 8};
  for (const Family& fam : families()) {
    const RowMatrix<double> X = test::random_matrix<double>(n, d, 1.0, rng);
    const auto g = test::cast<T>(test::random_norm<double>(d, fam.spec, rng));
    const auto attn =
        test::cast<T>(test::random_attention<double>(s, rng, test::BiasOptions::all()));
    const auto ffn = test::cast<T>(test::random_ffn<double>(d, f, FfnSpec::swiglu(), rng));
    const RowMatrix<T> head = test::random_projection<T>(d, vocab, rng);
    const auto fa = rewrite::fold_norm_into_attention(fam.spec, g, attn);
    const auto ff = rewrite::fold_norm_into_ffn(fam.spec, g, ffn, FfnSpec::swiglu());
    const RowMatrix<double> Nd = reference::norm<double>(X, test::cast<double>(g), fam.spec);
    const RowMatrix<C> Xc = X.cast<C>();
    const RowMatrix<C> Nc = reference::norm<C>(Xc, test::cast<C>(g), fam.spec);
    // The folded layers read the weightless norm: same kind (LayerNorm still centres), gain 1.
    NormSpec unit_spec = fam.spec;
    unit_spec.gain = GainConvention::plain;
    const RowMatrix<C> Uc = reference::norm<C>(Xc, unit_norm<C>(d), unit_spec);
    auto check = [&](const RowMatrix<T>& w0, const RowVector<T>& b0, const RowMatrix<T>& w1,
                     const RowVector<T>& b1, const char* what) {
      const RowMatrix<double> ref =
          reference::linear<double>(Nd, w0.template cast<double>(), b0.template cast<double>());
      const RowMatrix<C> base =
          reference::linear<C>(Nc, w0.template cast<C>(), b0.template cast<C>());
      const RowMatrix<C> cand =
          reference::linear<C>(Uc, w1.template cast<C>(), b1.template cast<C>());
      EXPECT_TRUE(test::within_rule(cand, base, ref,
                                    {2.0, fold_floor<T>(), "W* rounded once to the storage type"},
                                    type_name<T>()))
          << fam.name << " " << what;
    };
    check(attn.wq, attn.bq, fa.wq, fa.bq, "Q");
    check(attn.wk, attn.bk, fa.wk, fa.bk, "K");
    check(attn.wv, attn.bv, fa.wv, fa.bv, "V");
    check(ffn.w_in, ffn.b_in, ff.w_in, ff.b_in, "gate");
    check(ffn.w_up, ffn.b_up, ff.w_up, ff.b_up, "up");
    EXPECT_TRUE(test::bitwise_equal(fa.wo, attn.wo));
    EXPECT_TRUE(test::bitwise_equal(ff.w_out, ffn.w_out));
    // Fused QKV: the same per-element double operations, so bitwise the separate folds.
    RowMatrix<T> qkv(d, s.q_width() + 2 * s.kv_width());
    qkv << attn.wq, attn.wk, attn.wv;
    RowVector<T> bqkv(qkv.cols());
    bqkv << attn.bq, attn.bk, attn.bv;
    const auto fused = rewrite::fold_norm(fam.spec, g, qkv, bqkv);
    RowMatrix<T> sep(d, qkv.cols());
    sep << fa.wq, fa.wk, fa.wv;
    RowVector<T> bsep(qkv.cols());
    bsep << fa.bq, fa.bk, fa.bv;
    EXPECT_TRUE(test::bitwise_equal(fused.w, sep)) << fam.name;
    EXPECT_TRUE(test::bitwise_equal(fused.b, bsep)) << fam.name;
    // Fused gate_up (d x 2f, one matrix for both GLU input branches): bitwise the two folds side
    // by side, and as a consumer within the rule.
    RowMatrix<T> gate_up(d, 2 * f);
    gate_up << ffn.w_in, ffn.w_up;
    const auto fgu = rewrite::fold_norm(fam.spec, g, gate_up);
    RowMatrix<T> gu_sep(d, 2 * f);
    gu_sep << ff.w_in, ff.w_up;
    EXPECT_TRUE(test::bitwise_equal(fgu.w, gu_sep)) << fam.name;
    if (fgu.b.size() != 0) {  // LayerNorm: beta W of both branches
      RowVector<T> gu_bsep(2 * f);
      gu_bsep << ff.b_in, ff.b_up;
      EXPECT_TRUE(test::bitwise_equal(fgu.b, gu_bsep)) << fam.name;
    }
    check(gate_up, RowVector<T>(), fgu.w, fgu.b, "gate_up fused");
    // Final norm into an untied head (no head bias: only the RMS families have no beta).
    if (fam.spec.kind == NormKind::rms) {
      const auto fh = rewrite::fold_final_norm(fam.spec, g, head, rewrite::HeadTying::untied);
      check(head, RowVector<T>(), fh.w, RowVector<T>(), "lm_head");
    }
  }
}

TEST(FoldNormHead, TiedHeadIsRefused) {
  test::Rng rng(103);
  const auto g = test::random_norm<float>(16, NormSpec::rms(), rng);
  const RowMatrix<float> E = test::random_matrix<float>(30, 16, 1.0, rng);
  const RowMatrix<float> head = E.transpose();
  expect_error(
      [&] { rewrite::fold_final_norm(NormSpec::rms(), g, head, rewrite::HeadTying::tied); },
      "lm_head expected untied, got tied");
  expect_error(
      [&] { rewrite::fold_final_norm(NormSpec::rms(), g, head, rewrite::HeadTying::untied, E); },
      "got a matrix equal to embedding^T (tied in fact)");
  // A PyTorch-layout head (vocab x d, read as d x vocab through a transposed map) is accepted.
  const auto fh = rewrite::fold_final_norm(NormSpec::rms(), g, from_pytorch(E.data(), 30, 16),
                                           rewrite::HeadTying::untied);
  EXPECT_EQ(fh.w.rows(), 16);
  EXPECT_EQ(fh.w.cols(), 30);
}

// A layer whose output is the LayerNorm's whole input: centring it (V* = V - rowmean(V),
// b* = b - mean(b)) makes the LayerNorm an RMSNorm with the same eps, gain and beta.
TYPED_TEST(FoldNorm, CenteredWriterTurnsLayerNormIntoRmsNorm) {
  using T = TypeParam;
  using C = accum_t<T>;
  test::Rng rng(104);
  const Index n = 6, din = 20, d = 36;
  const NormSpec ln = NormSpec::layer(1e-5);
  const RowMatrix<double> X = test::random_matrix<double>(n, din, 1.0, rng);
  const RowMatrix<T> V = test::random_projection<T>(din, d, rng);
  RowVector<T> b = test::random_vector<T>(d, 0.3, 0.05, rng);  // a bias with a mean to remove
  const auto g = test::cast<T>(test::random_norm<double>(d, ln, rng));
  const auto cw = rewrite::center_output(V, b);
  const RowMatrix<double> ref = reference::norm<double>(
      reference::linear<double>(X, V.template cast<double>(), b.template cast<double>()),
      test::cast<double>(g), ln);
  const RowMatrix<C> Xc = X.cast<C>();
  const RowMatrix<C> base = reference::norm<C>(
      reference::linear<C>(Xc, V.template cast<C>(), b.template cast<C>()), test::cast<C>(g), ln);
  const RowMatrix<C> cand =
      reference::norm<C>(reference::linear<C>(Xc, cw.w.template cast<C>(), cw.b.template cast<C>()),
                         test::cast<C>(g), NormSpec::rms(ln.eps));
  EXPECT_TRUE(test::within_rule(cand, base, ref,
                                {2.0, fold_floor<T>(), "V* rounded once to the storage type"},
                                type_name<T>()));
}

namespace {

ModelConfig gpt2_config() {
  ModelConfig c;
  c.vocab = 64;
  c.layers = 2;
  c.block.kind = BlockKind::serial;
  c.block.attn = AttentionConfig{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  c.block.norm = NormSpec::layer(1e-5);
  c.block.ffn = FfnSpec::mlp(Activation::gelu_tanh);
  c.learned_positions = true;
  c.max_positions = 40;
  c.final_norm = true;
  c.final_norm_spec = NormSpec::layer(1e-5);
  return c;
}
ModelConfig llama_config() {
  ModelConfig c;
  c.vocab = 64;
  c.layers = 2;
  c.block.kind = BlockKind::serial;
  c.block.attn = AttentionConfig{{32, 4, 2, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
  c.block.norm = NormSpec::rms(1e-6);
  c.block.ffn = FfnSpec::swiglu();
  c.final_norm_spec = NormSpec::rms(1e-6);
  return c;
}
ModelConfig gemma_config() {
  ModelConfig c = llama_config();
  c.block.attn = AttentionConfig{{32, 4, 1, 8}, 0.0, RopeSpec::full(8, RopeLayout::interleaved)};
  c.block.norm = NormSpec::rms(1e-6, GainConvention::one_plus);
  c.block.ffn = FfnSpec::geglu();
  c.final_norm_spec = c.block.norm;
  return c;
}
ModelConfig pythia_parallel_config() {
  ModelConfig c = gpt2_config();
  c.block.kind = BlockKind::parallel;
  c.learned_positions = false;
  c.block.attn.rope = RopeSpec::full(8, RopeLayout::half_split);
  c.block.attn.rope.rotary_dim = 4;  // partial rotary, as Pythia
  return c;
}

struct ModelCase {
  const char* name;
  ModelConfig cfg;
  bool biases;
};

}  // namespace

// A 2-layer model folded end to end runs on the reference machinery (its norms are weightless:
// gain 1, no beta; LayerNorms became RMSNorms) and gives the same greedy tokens over 16 steps and
// logits within the rule. Storage float, double and bf16 (bf16 weights run in float).
TYPED_TEST(FoldNorm, WholeModelSameGreedyTokens) {
  using T = TypeParam;
  using C = accum_t<T>;
  const std::vector<ModelCase> cases = {{"gpt2", gpt2_config(), true},
                                        {"llama", llama_config(), false},
                                        {"gemma", gemma_config(), false},
                                        {"pythia-parallel", pythia_parallel_config(), true}};
  for (const ModelCase& mc : cases) {
    test::Rng rng(105);
    const auto wd = test::random_model<double>(
        mc.cfg, 48, rng, mc.biases ? test::BiasOptions::all() : test::BiasOptions{}, mc.biases);
    const auto w = test::cast<T>(wd);  // the stored weights
    const auto folded = rewrite::fold_model(mc.cfg, w);
    EXPECT_EQ(folded.centered, mc.cfg.block.norm.kind == NormKind::layer) << mc.name;
    EXPECT_EQ(folded.config.block.norm.kind, NormKind::rms) << mc.name;
    const RowVector<T> ones = RowVector<T>::Ones(32);
    for (const auto& b : folded.weights.blocks) {
      EXPECT_TRUE(test::bitwise_equal(b.norm1.gain, ones)) << mc.name;
      EXPECT_EQ(b.norm1.beta.size(), 0) << mc.name;
      EXPECT_TRUE(test::bitwise_equal(b.norm2.gain, ones)) << mc.name;
      EXPECT_EQ(b.norm2.beta.size(), 0) << mc.name;
    }
    // The final RMSNorm folds into the (untied) head; a final LayerNorm keeps gain and beta.
    EXPECT_EQ(folded.final_norm_folded, mc.cfg.final_norm_spec.kind == NormKind::rms) << mc.name;
    if (folded.final_norm_folded) {
      EXPECT_TRUE(test::bitwise_equal(folded.weights.final_norm.gain, ones)) << mc.name;
      EXPECT_EQ(folded.weights.final_norm.beta.size(), 0) << mc.name;
      EXPECT_EQ(folded.config.final_norm_spec.gain, GainConvention::plain) << mc.name;
    }
    const std::vector<int> prompt = {3, 17, 5, 42};
    const Index steps = 16;
    reference::DecoderModel<double> ref_model(mc.cfg, test::cast<double>(w));
    reference::DecoderModel<C> base_model(mc.cfg, test::cast<C>(w));
    reference::DecoderModel<C> cand_model(folded.config, test::cast<C>(folded.weights));
    std::vector<RowVector<double>> lr;
    std::vector<RowVector<C>> lb, lc;
    const auto tr = ref_model.generate(prompt, steps, &lr);
    const auto tb = base_model.generate(prompt, steps, &lb);
    const auto tc = cand_model.generate(prompt, steps, &lc);
    EXPECT_EQ(tc, tr) << mc.name;
    EXPECT_EQ(tb, tr) << mc.name;
    // Logits of the first step (same prefix for all three by construction) within the rule.
    RowMatrix<double> R(1, mc.cfg.vocab);
    RowMatrix<C> B(1, mc.cfg.vocab), Cd(1, mc.cfg.vocab);
    R.row(0) = lr[0];
    B.row(0) = lb[0];
    Cd.row(0) = lc[0];
    // Floor: a 2-layer model chains ~10 dependent roundings (16 units, mattering only for f64,
    // where the baseline is the reference itself) plus W* rounded once to a narrower T.
    const double floor = fold_floor<T>() + test::roundoff_floor<C>(16.0);
    EXPECT_TRUE(test::within_rule(Cd, B, R, {2.0, floor, "folded weights rounded once to T"},
                                  type_name<T>()))
        << mc.name;
    if (tc == tr) {  // same tokens: every step's logits are comparable
      RowMatrix<double> RA(steps, mc.cfg.vocab);
      RowMatrix<C> BA(steps, mc.cfg.vocab), CA(steps, mc.cfg.vocab);
      for (Index s = 0; s < steps; ++s) {
        RA.row(s) = lr[static_cast<size_t>(s)];
        BA.row(s) = lb[static_cast<size_t>(s)];
        CA.row(s) = lc[static_cast<size_t>(s)];
      }
      EXPECT_TRUE(test::within_rule(CA, BA, RA, {2.0, floor, "folded weights rounded once to T"},
                                    type_name<T>()))
          << mc.name << " all steps";
    }
  }
}

TEST(CenterResidual, ConditionIsCheckedFromTheConfig) {
  test::Rng rng(106);
  ModelConfig rms = llama_config();
  const auto w = test::random_model<float>(rms, 16, rng);
  expect_error([&] { rewrite::center_residual_writers(rms, w); },
               "block.norm.kind expected LayerNorm (an RMSNorm reader sees the stream's mean), got "
               "RMSNorm");
  ModelConfig ln = gpt2_config();
  ln.final_norm = false;
  const auto w2 = test::random_model<float>(ln, 16, rng, test::BiasOptions::all(), true);
  expect_error([&] { rewrite::center_residual_writers(ln, w2); },
               "final norm expected a LayerNorm (the LM head must not read the raw stream), got "
               "none");
  ModelConfig skip = gpt2_config();
  skip.block.kind = BlockKind::skipless_serial;
  expect_error([&] { rewrite::fold_model(skip, w2); }, "block.kind expected serial or parallel");
  // After centring, every writer's rows are zero-mean (the stream is), checked on the result.
  const auto c = rewrite::center_residual_writers(gpt2_config(), w2);
  EXPECT_LT(c.embedding.rowwise().mean().cwiseAbs().maxCoeff(), 1e-6f);
  EXPECT_LT(c.positions.rowwise().mean().cwiseAbs().maxCoeff(), 1e-6f);
  EXPECT_LT(c.blocks[1].attn.wo.rowwise().mean().cwiseAbs().maxCoeff(), 1e-6f);
  EXPECT_LT(c.blocks[0].ffn.w_out.rowwise().mean().cwiseAbs().maxCoeff(), 1e-6f);
  EXPECT_LT(std::abs(c.blocks[0].ffn.b_out.mean()), 1e-6f);
  EXPECT_LT(std::abs(c.blocks[1].attn.bo.mean()), 1e-6f);
}

// fold_model with a tied LM head must not fold the final norm (the embedding rows would be scaled
// too): the final norm keeps its gain and convention, the head is untouched, the model still gives
// the reference's tokens. The same weights declared untied do fold it (the option is read).
TEST(FoldModel, TiedHeadKeepsTheFinalNorm) {
  test::Rng rng(112);
  const ModelConfig cfg = gemma_config();
  auto w = test::random_model<float>(cfg, 48, rng);
  w.lm_head = w.embedding.transpose();
  rewrite::ModelFoldOptions tied;
  tied.head = rewrite::HeadTying::tied;
  const auto folded = rewrite::fold_model(cfg, w, tied);
  EXPECT_FALSE(folded.final_norm_folded);
  EXPECT_TRUE(test::bitwise_equal(folded.weights.lm_head, w.lm_head));
  EXPECT_TRUE(test::bitwise_equal(folded.weights.final_norm.gain, w.final_norm.gain));
  EXPECT_EQ(folded.config.final_norm_spec.gain, GainConvention::one_plus);
  EXPECT_NE(folded.notes.find("final norm kept (tied LM head)"), std::string::npos) << folded.notes;
  const std::vector<int> prompt = {3, 17, 5, 42};
  reference::DecoderModel<double> ref_model(cfg, test::cast<double>(w));
  reference::DecoderModel<float> cand_model(folded.config, folded.weights);
  EXPECT_EQ(cand_model.generate(prompt, 8), ref_model.generate(prompt, 8));
  EXPECT_TRUE(rewrite::fold_model(cfg, w).final_norm_folded);
}

// Gemma's 1 + g is formed in double, never in the storage type: with small g (0.003 .. 0.012,
// where T(1 + g) != 1 + g: bf16 rounds 1.003 to 1, half to 1.0029297) every element of W* is
// T(double(1 + g_i) * double(W_ij)) bitwise (1 + g_i is exact in double: g_i has 8 or 11 bits).
template <class T>
void one_plus_formed_in_double() {
  test::Rng rng(113);
  const Index d = 24, out = 40;
  NormWeights<T> g{RowVector<T>(d), {}};
  for (Index i = 0; i < d; ++i) g.gain(i) = static_cast<T>((i % 2 ? -0.003 : 0.003) * (1 + i % 4));
  const RowMatrix<T> W = test::random_projection<T>(d, out, rng);
  RowMatrix<T> want(d, out);
  for (Index i = 0; i < d; ++i) {
    const double a = 1.0 + static_cast<double>(g.gain(i));
    ASSERT_NE(static_cast<double>(static_cast<T>(a)), a) << "g_i must not be absorbed by T(1 + g)";
    for (Index j = 0; j < out; ++j) want(i, j) = static_cast<T>(a * static_cast<double>(W(i, j)));
  }
  const auto f = rewrite::fold_norm(NormSpec::rms(1e-6, GainConvention::one_plus), g, W);
  EXPECT_TRUE(test::bitwise_equal(f.w, want)) << type_name<T>();
}

TEST(FoldNormOnePlus, GainFormedInDouble) {
  one_plus_formed_in_double<bf16>();
  one_plus_formed_in_double<f16>();
}

// ---------------------------------------------------------------------------------------------
// Norm cancellation.

TEST(NormCancellation, EligibilityNamesTheReason) {
  rewrite::CancellationSite qkv;
  qkv.q_norm = qkv.k_norm = qkv.v_norm = true;
  auto c = rewrite::check_norm_cancellation(qkv);
  EXPECT_TRUE(c.drop_q && c.drop_k && c.drop_v && c.norm_removed) << c.explain();
  EXPECT_TRUE(c.reasons.empty()) << c.explain();

  rewrite::CancellationSite qk = qkv;
  qk.v_norm = false;
  c = rewrite::check_norm_cancellation(qk);
  EXPECT_TRUE(c.drop_q && c.drop_k);
  EXPECT_FALSE(c.drop_v);
  EXPECT_FALSE(c.norm_removed);
  EXPECT_NE(c.explain().find("QK-norm only: the scalar is dropped on Q and K and kept on V"),
            std::string::npos)
      << c.explain();
  EXPECT_NE(c.explain().find("V path bypasses the second norm"), std::string::npos);

  rewrite::CancellationSite biased = qkv;
  biased.k_bias = true;
  c = rewrite::check_norm_cancellation(biased);
  EXPECT_FALSE(c.drop_k);
  EXPECT_TRUE(c.drop_q && c.drop_v);
  EXPECT_NE(c.explain().find("K projection has a bias"), std::string::npos) << c.explain();

  rewrite::CancellationSite bypass = qkv;
  bypass.other_readers = true;
  c = rewrite::check_norm_cancellation(bypass);
  EXPECT_TRUE(c.drop_q && c.drop_k && c.drop_v);
  EXPECT_FALSE(c.norm_removed);
  EXPECT_NE(c.explain().find("another reader of the normed input bypasses the second norm"),
            std::string::npos);

  rewrite::CancellationSite ln = qkv;
  ln.input_norm = NormSpec::layer();
  c = rewrite::check_norm_cancellation(ln);
  EXPECT_FALSE(c.any());
  EXPECT_NE(c.explain().find("LayerNorm"), std::string::npos);

  test::Rng rng(107);
  const auto g = test::random_norm<float>(8, NormSpec::rms(), rng);
  const RowMatrix<float> w = test::random_projection<float>(8, 8, rng);
  rewrite::CancellationSite none;  // no second norms at all
  expect_error([&] { rewrite::cancel_norm(none, g, w, w, w); },
               "site expected at least one eligible path, got none: Q path bypasses");
}

// QKV-norm (and QK-only) layer: per head, RMSNorm2(RMSNorm1(a) W) vs RMSNorm2(a W*). Without
// eps2 the identity is exact; with eps2 the measured relative error of every head vector equals
// the derived |sqrt(1+r) - 1| and stays within (and close to) the bound r/2.
TEST(NormCancellation, TransformAndEpsBound) {
  test::Rng rng(108);
  const Index n = 6, d = 32, heads = 4, dk = 8;
  const NormSpec first = NormSpec::rms(1e-6);
  for (double eps2 : {1e-6, 1e-2}) {
    for (double amp : {0.3, 3.0}) {  // RMS(a) below and above 1: r < 0 and r > 0
      const RowMatrix<double> X = test::random_matrix<double>(n, d, amp, rng);
      const auto g1 = test::random_norm<double>(d, first, rng);
      const RowMatrix<double> wq = test::random_projection<double>(d, heads * dk, rng);
      const RowMatrix<double> wk = test::random_projection<double>(d, heads * dk, rng);
      const RowMatrix<double> wv = test::random_projection<double>(d, heads * dk, rng);
      rewrite::CancellationSite site;
      site.q_norm = site.k_norm = site.v_norm = true;
      const auto cp = rewrite::cancel_norm(site, g1, wq, wk, wv);
      ASSERT_TRUE(cp.check.norm_removed);
      const RowMatrix<double> N1 = reference::norm<double>(X, g1, first);
      for (int p = 0; p < 3; ++p) {
        const RowMatrix<double>& w = p == 0 ? wq : (p == 1 ? wk : wv);
        const RowMatrix<double>& ws = p == 0 ? cp.wq : (p == 1 ? cp.wk : cp.wv);
        const RowMatrix<double> Yhat = N1 * w;  // vanilla input of the second norm
        const RowMatrix<double> Y = X * ws;     // cancelled: no 1/RMS1
        for (Index r = 0; r < n; ++r) {
          const double rms1 = reference::rms<double>(X.row(r), first.eps);
          for (Index h = 0; h < heads; ++h) {
            const RowVector<double> yh = Yhat.row(r).segment(h * dk, dk);
            const RowVector<double> y = Y.row(r).segment(h * dk, dk);
            const RowVector<double> van = yh / reference::rms<double>(yh, eps2);
            const RowVector<double> can = y / reference::rms<double>(y, eps2);
            const double err = (can - van).norm() / van.norm();
            const auto e = rewrite::cancellation_error(eps2, rms1, yh.squaredNorm() / dk);
            EXPECT_NEAR(err, e.exact, 1e-12 + 1e-6 * e.exact);
            EXPECT_LE(err, e.bound * (1 + 1e-9) + 1e-15);
            EXPECT_GE(err, 0.45 * e.bound)
                << "bound is not tight: err " << err << " bound " << e.bound;
            // Without eps2 the cancellation is exact (to double roundoff).
            const RowVector<double> van0 = yh / reference::rms<double>(yh, 0.0);
            const RowVector<double> can0 = y / reference::rms<double>(y, 0.0);
            EXPECT_LT((can0 - van0).norm() / van0.norm(), 1e-13);
          }
        }
      }
    }
  }
}

// The same layer with QK-norm only, weights stored as T (float, bf16) and run in float, against
// the double reference. Q and K (each with its own weights) drop 1/RMS(a): their extra error is
// the eps2 term, bounded above per head by rewrite::cancellation_error (max over rows and heads,
// added to the floor; it dominates at eps2 = 1e-2). V keeps its scalar (no V norm) and matches
// the unfused V within the rule. Floor: float roundoff plus W* rounded once to T (u_T).
template <class T>
void cancellation_within_rule(double eps2) {
  test::Rng rng(109);
  const Index n = 5, d = 32, heads = 4, dk = 8;
  const NormSpec first = NormSpec::rms(1e-6), second = NormSpec::rms(eps2);
  const RowMatrix<double> X = test::random_matrix<double>(n, d, 2.0, rng);
  const auto g1 = test::cast<T>(test::random_norm<double>(d, first, rng));
  const RowMatrix<T> wq = test::random_projection<T>(d, heads * dk, rng);
  const RowMatrix<T> wk = test::random_projection<T>(d, heads * dk, rng);
  const RowMatrix<T> wv = test::random_projection<T>(d, heads * dk, rng);
  rewrite::CancellationSite site;
  site.q_norm = site.k_norm = true;  // QK-norm only
  const auto cp = rewrite::cancel_norm(site, g1, wq, wk, wv);
  ASSERT_TRUE(cp.check.drop_q && cp.check.drop_k && !cp.check.drop_v);
  auto per_head_norm = [&](auto Y) {
    using S = typename decltype(Y)::Scalar;
    for (Index r = 0; r < Y.rows(); ++r)
      for (Index h = 0; h < heads; ++h) {
        auto seg = Y.row(r).segment(h * dk, dk);
        seg /= reference::rms<S>(seg, second.eps);
      }
    return Y;
  };
  const auto g1f = test::cast<float>(g1);
  const RowMatrix<double> N1 = reference::norm<double>(X, test::cast<double>(g1), first);
  const RowMatrix<float> Xf = X.cast<float>();
  const RowMatrix<float> N1f = reference::norm<float>(Xf, g1f, first);
  const double floor = test::roundoff_floor<float>() + unit_roundoff<T>();
  auto dropped = [&](const RowMatrix<T>& w, const RowMatrix<T>& ws, const char* what) {
    const RowMatrix<double> Yhat = N1 * w.template cast<double>();  // vanilla second-norm input
    const RowMatrix<double> ref = per_head_norm(Yhat);
    const RowMatrix<float> base = per_head_norm(RowMatrix<float>(N1f * w.template cast<float>()));
    RowMatrix<float> raw(n, heads * dk);
    kernel::linear_unscaled<T>(Xf, ws, RowVector<float>(), raw);  // no 1/RMS(a)
    const RowMatrix<float> cand = per_head_norm(raw);
    double bound = 0;
    for (Index r = 0; r < n; ++r)
      for (Index h = 0; h < heads; ++h) {
        const RowVector<double> yh = Yhat.row(r).segment(h * dk, dk);
        bound = std::max(bound, rewrite::cancellation_error(
                                    second.eps, reference::rms<double>(X.row(r), first.eps),
                                    yh.squaredNorm() / dk)
                                    .bound);
      }
    EXPECT_TRUE(test::within_rule(cand, base, ref,
                                  {2.0, floor + bound,
                                   detail::concat("eps2 cancellation bound ", bound,
                                                  " + W* rounded once to ", type_name<T>())},
                                  type_name<T>()))
        << what << " eps2=" << eps2;
  };
  dropped(wq, cp.wq, "Q");
  dropped(wk, cp.wk, "K");
  // V keeps its scalar: the deferred product with 1/RMS(a) on the folded V weights.
  RowMatrix<float> v(n, heads * dk);
  kernel::flashnorm_linear<T>(Xf, cp.wv, RowVector<float>(), {first.eps}, v);
  const RowMatrix<float> vb = N1f * wv.template cast<float>();
  const RowMatrix<double> vref = N1 * wv.template cast<double>();
  EXPECT_TRUE(test::within_rule(v, vb, vref,
                                {2.0, floor, detail::concat("W* rounded once to ", type_name<T>())},
                                type_name<T>()))
      << "V eps2=" << eps2;
}

TEST(NormCancellation, StoragePathsWithinRulePlusEpsBound) {
  for (double eps2 : {1e-6, 1e-2}) {
    cancellation_within_rule<float>(eps2);
    cancellation_within_rule<bf16>(eps2);
  }
}

// QK-norm gain shared by all heads folded into the per-position RoPE tables (2x2 per pair):
// RoPE(RMSNorm_head(y) ⊙ g) == table(m, g) applied to y / RMS_head(y); interleaved and half-split
// pairs, full and partial rotary width, unequal pair gains (not a rotation, still exact) and equal
// ones (pairs_equal: a scaled rotation, gain_p == gain_q).
TEST(QkGainRope, FoldedIntoTablesMatchesReference) {
  test::Rng rng(110);
  const Index n = 5, heads = 3, dk = 8;
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    for (Index r : {dk, Index(6)}) {
      for (GainConvention conv : {GainConvention::plain, GainConvention::one_plus}) {
        for (bool equal_pairs : {false, true}) {
          RopeSpec rope = RopeSpec::full(dk, layout);
          rope.rotary_dim = r;
          const NormSpec qk = NormSpec::rms(1e-6, conv);
          auto g = test::random_norm<double>(dk, qk, rng);
          // Equal gains within every pair of this layout: the table is a scaled rotation.
          if (equal_pairs)
            for (Index j = 0; j < rope.pairs(); ++j)
              g.gain(rope.pair(j).second) = g.gain(rope.pair(j).first);
          const RowMatrix<double> Y = test::random_matrix<double>(n, heads * dk, 1.0, rng);
          auto normed_heads = [&](auto M, auto gain) {
            using S = typename decltype(M)::Scalar;
            for (Index i = 0; i < M.rows(); ++i)
              for (Index h = 0; h < heads; ++h) {
                RowMatrix<S> seg = M.row(i).segment(h * dk, dk);
                NormWeights<S> nw{gain, {}};
                M.row(i).segment(h * dk, dk) = reference::norm<S>(seg, nw, qk).row(0);
              }
            return M;
          };
          const Index start = 3;
          const RowMatrix<double> ref =
              reference::rope<double>(normed_heads(Y, g.gain), heads, dk, rope, start);
          const RowMatrix<float> Yf = Y.cast<float>();
          const RowVector<float> gf = g.gain.cast<float>();
          const RowMatrix<float> base =
              reference::rope<float>(normed_heads(Yf, gf), heads, dk, rope, start);
          // Folded: per-head 1/RMS without gain (NormSpec plain, gain 1), then the gain tables.
          const auto fold = rewrite::fold_qk_gain_into_rope(rope, dk, qk, gf);
          EXPECT_EQ(fold.pairs_equal, equal_pairs);
          if (equal_pairs) {
            EXPECT_EQ(fold.gain_p, fold.gain_q);
          }
          RowMatrix<float> cand = Yf;
          for (Index i = 0; i < n; ++i)
            for (Index h = 0; h < heads; ++h) {
              auto seg = cand.row(i).segment(h * dk, dk);
              seg /= reference::rms<float>(seg, qk.eps);
            }
          kernel::rope_scaled<float>(cand, heads, dk, rope, start, RowVector<float>::Ones(n), 1.0,
                                     fold.gain_p, fold.gain_q, fold.pass);
          EXPECT_TRUE(
              test::within_rule(cand, base, ref, {2.0, test::roundoff_floor<float>(), ""}, "f32"))
              << "layout " << static_cast<int>(layout) << " r=" << r
              << " equal_pairs=" << equal_pairs;
        }
      }
    }
  }
}

TEST(FlashNormRewriteErrors, BadInputNamesTheArgument) {
  test::Rng rng(111);
  const RowMatrix<float> W = test::random_projection<float>(16, 8, rng);
  auto g = test::random_norm<float>(15, NormSpec::rms(), rng);
  expect_error([&] { rewrite::fold_norm(NormSpec::rms(), g, W); },
               "norm.gain.size() (= W.rows(), the input width) expected 16, got 15");
  g = test::random_norm<float>(16, NormSpec::rms(), rng);
  expect_error(
      [&] {
        rewrite::fold_norm(NormSpec::rms(), g, W, RowVector<float>(RowVector<float>::Ones(7)));
      },
      "bias.size() (= W.cols()) expected 8, got 7");
  auto withbeta = g;
  withbeta.beta = RowVector<float>::Zero(16);
  expect_error([&] { rewrite::fold_norm(NormSpec::rms(), withbeta, W); },
               "norm.beta expected empty for an RMSNorm, got 16 values");
  auto shortbeta = test::random_norm<float>(16, NormSpec::layer(), rng);
  shortbeta.beta = RowVector<float>::Zero(3);
  expect_error([&] { rewrite::fold_norm(NormSpec::layer(), shortbeta, W); },
               "norm.beta.size() expected 16, got 3");
  expect_error([&] { rewrite::fold_norm(NormSpec::rms(-1.0), g, W); },
               "spec.eps expected finite and >= 0, got -1");
  expect_error([&] { rewrite::center_output(W, RowVector<float>(RowVector<float>::Ones(9))); },
               "bias.size() (= W.cols()) expected 8, got 9");
  expect_error(
      [&] {
        rewrite::fold_qk_gain_into_rope(RopeSpec::full(8, RopeLayout::interleaved), 8,
                                        NormSpec::rms(), RowVector<float>::Ones(24));
      },
      "gain.size() (= head_dim, one gain shared by all heads) expected 8, got 24");
  rewrite::CancellationSite s;
  s.q_norm = true;
  expect_error(
      [&] { rewrite::cancel_norm(s, g, W, W, RowMatrix<float>(RowMatrix<float>::Ones(15, 8))); },
      "wv.rows() (= wq.rows()) expected 16, got 15");
}
