// skipless_merge: remove Q and P from a skipless transformer (arXiv 2404.12362).
//
// A skipless block (no residual, no norm) y = ffn(attn(x)) has only linear maps between block l-1's
// FFN output and block l's attention input, so that stream can change basis by W_Q,l: block l-1's
// FFN output matrix absorbs W_Q (O* = O W_Q), W_K and W_V absorb its inverse (K* = W_Q^{-1} W_K,
// solved in double), and the query projection becomes the identity. Inside a block, the attention
// output projection P merges into the FFN input (M* = P M). Same tokens, fewer weights to read.
// A small Mistral-like shape (GQA: 8 query heads, 2 KV heads) with ReLU MLPs and a final LayerNorm.
#include <Eigen/QR>
#include <Eigen/SVD>
#include <cmath>
#include <cstdio>
#include <random>
#include <ttx/kernel/skipless_model.hpp>
#include <ttx/rewrite/skipless.hpp>
#include <vector>
#include "random_weights.hpp"

using namespace ttx;

int main() {
  const Index d = 128, ffn = 512, layers = 4, vocab = 512;
  ModelConfig cfg;
  cfg.vocab = vocab;
  cfg.layers = layers;
  cfg.block.kind = BlockKind::skipless_serial;
  cfg.block.attn.shape = {d, 8, 2, 16};  // e_q = d: W_Q is square and can be absorbed
  cfg.block.attn.rope = RopeSpec::full(16, RopeLayout::half_split);
  cfg.block.ffn = FfnSpec::mlp(Activation::relu);
  cfg.final_norm = true;
  cfg.final_norm_spec = NormSpec::layer(1e-5);

  example::RandomWeights random(13);
  auto sd = [](Index in) { return 1.0 / std::sqrt(double(in)); };
  ModelWeights<float> w;  // ReLU with He-scaled inputs keeps activations at a steady scale
  w.embedding = random(vocab, d, 1.0);
  const AttentionShape& s = cfg.block.attn.shape;
  for (Index l = 0; l < layers; ++l) {
    BlockWeights<float> b;
    // W_Q conditioned like a trained projection: orthogonal times singular values in [0.5, 1.5].
    Eigen::HouseholderQR<Eigen::MatrixXf> qr(random(d, d, 1.0));
    const Eigen::MatrixXf Q = qr.householderQ();
    b.attn.wq = Q * Eigen::VectorXf::LinSpaced(d, 0.5f, 1.5f).asDiagonal();
    b.attn.wk = random(d, s.kv_width(), sd(d));
    b.attn.wv = random(d, s.kv_width(), sd(d));
    b.attn.wo = random(s.q_width(), d, sd(s.q_width()));
    b.ffn.w_in = random(d, ffn, std::sqrt(2.0) * sd(d));
    b.ffn.w_out = random(ffn, d, sd(ffn));
    w.blocks.push_back(std::move(b));
  }
  w.final_norm.gain = RowVector<float>::Ones(d);
  w.final_norm.beta = RowVector<float>::Zero(d);
  w.lm_head = random(d, vocab, sd(d));

  // Offline, once: Q and P removed in double, stored as float, with a report per block.
  const rewrite::SkiplessResult<float> merged = rewrite::skipless<float>(cfg, w);
  std::printf("%s", merged.report.summary().c_str());

  // Run: vanilla and merged weights through the same runtime (an empty matrix = the identity),
  // plus the vanilla weights in double as the yardstick for float rounding.
  const Index steps = 24;
  const std::vector<int> prompt = {1, 17, 42, 7, 311, 99, 5, 200};
  kernel::SkiplessModel<float> vanilla(cfg, w, 64), slim(cfg, merged.weights, 64);
  kernel::SkiplessModel<double> exact(cfg, cast_weights<double>(w), 64);
  const std::vector<int> tokens_v = vanilla.generate(prompt, steps);
  vanilla.reset();
  const std::vector<int> tokens_m = slim.generate(prompt, steps);
  slim.reset();

  std::vector<int> stream = prompt;  // the same inputs for all three: prompt + vanilla's tokens
  stream.insert(stream.end(), tokens_v.begin(), tokens_v.end() - 1);
  const RowMatrix<float> L_v = vanilla.forward(stream), L_m = slim.forward(stream);
  const RowMatrix<double> L_x = exact.forward(stream);
  const double dev = (L_m - L_v).cast<double>().cwiseAbs().maxCoeff();
  const double err_v = (L_v.cast<double>() - L_x).cwiseAbs().maxCoeff();
  // Bound (SPEC §5 rule): x* K* = (x W_Q)(W_Q^{-1} W_K) amplifies the rounding of the merged
  // weights by at most kappa_2(W_Q), so |merged - exact| <= 2 kappa |vanilla - exact| + floor and
  // |merged - vanilla| <= (1 + 2 kappa) |vanilla - exact| + floor, floor = u_f32 max|logit|.
  // kappa_2 from the singular values: the report's cond is an LU 1-norm estimate, which can be
  // up to d times larger (it is ~140 here for kappa_2 = 3) and would make the bound that loose.
  double kappa = 1;
  for (const auto& b : w.blocks) {
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(b.attn.wq.cast<double>());
    const auto& sv = svd.singularValues();
    kappa = std::max(kappa, sv(0) / sv(sv.size() - 1));
  }
  const double bound = (1 + 2 * kappa) * err_v + unit_roundoff<float>() * L_x.cwiseAbs().maxCoeff();
  const bool same_tokens = tokens_m == tokens_v, ok = dev <= bound && same_tokens;

  const auto big = rewrite::skipless_savings(
      {4096, 32, 32, 8, 128, 14336, 32000, FfnKind::glu, BlockKind::skipless_serial, false});
  std::printf(
      "weights read per token: %ld -> %ld (%.1f%% fewer); a skipless Mistral-7B shape: "
      "%.1f%% fewer\n",
      long(merged.report.weights_before), long(merged.report.weights_after),
      100 * merged.report.fraction_removed(), 100 * big.fraction_of_total());
  std::printf("kappa_2(W_Q) = %.3g (report's 1-norm estimate %.3g)\n", kappa,
              merged.report.max_cond);
  std::printf("greedy tokens, %ld generated: %s\n", long(steps),
              same_tokens ? "identical" : "DIFFERENT");
  std::printf("max |merged - vanilla| logits = %.3g (within bound %.3g): %s\n", dev, bound,
              ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
