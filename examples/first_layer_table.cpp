// first_layer_table: precompute layer 1 per vocabulary entry (arXiv 2402.13388).
//
// Layer 1's input is a row of the embedding table, a function of the token id alone, so
//   row(t) = [ x_t | RMSNorm(x_t) W_Q | RMSNorm(x_t) W_K | RMSNorm(x_t) W_V ]   (q, k before RoPE)
// can be stored once per token id. At run time a token reads one row instead of the embedding
// row plus all of layer 1's Q/K/V weights; only RoPE (position-dependent) is left to do.
// Two tables: float computed in float (bitwise equal to computing the layer: same kernel), and
// bf16 computed in double and rounded once (half the bytes, one rounding of error).
#include <cmath>
#include <cstdio>
#include <random>
#include <ttx/kernel/first_layer.hpp>
#include <ttx/rewrite/first_layer.hpp>
#include <vector>
#include "random_weights.hpp"

using namespace ttx;

int main() {
  const Index vocab = 2048, d = 256, heads = 4, dk = 64;
  BlockConfig cfg;  // a Llama-like serial pre-norm block
  cfg.kind = BlockKind::serial;
  cfg.attn.shape = {d, heads, heads, dk};
  cfg.attn.rope = RopeSpec::full(dk, RopeLayout::half_split);
  cfg.norm = NormSpec::rms(1e-6);
  cfg.ffn = FfnSpec::swiglu();

  example::RandomWeights random(11);
  const float ws = 1.f / std::sqrt(float(d));
  const RowMatrix<float> embedding = random(vocab, d, 1.f);
  BlockWeights<float> layer1;
  layer1.norm1.gain = RowVector<float>(random(1, d, 0.1f).array() + 1.f);
  layer1.attn.wq = random(d, d, ws);
  layer1.attn.wk = random(d, d, ws);
  layer1.attn.wv = random(d, d, ws);
  layer1.attn.wo = random(d, d, ws);  // not in the table: it reads the attention output

  // Offline, once per model.
  rewrite::FirstLayerOptions exact;
  exact.compute = rewrite::TableCompute::exact;
  const auto table_f32 = rewrite::build_first_layer_table<float>(embedding, layer1, cfg);
  const auto table_bf16 = rewrite::build_first_layer_table<bf16>(embedding, layer1, cfg, exact);
  std::printf(
      "table: %ld tokens x %ld values (residual | q | k | v); f32 %.2f MiB, bf16 %.2f MiB\n",
      long(vocab), long(table_f32.layout.width()), table_f32.bytes() / 1048576.0,
      table_bf16.bytes() / 1048576.0);
  std::printf("it replaces the embedding (%.2f MiB f32) and takes %ld weights off the token path\n",
              table_f32.report.embedding_bytes / 1048576.0,
              long(table_f32.report.weights_off_path));

  // At run time: a prompt through layer 1, looked up vs computed, into vanilla KV caches.
  const std::vector<int> prompt = {1, 17, 42, 7, 311, 99, 5, 2024, 1500, 3, 3, 640};
  const Index n = Index(prompt.size());
  const AttentionShape& s = cfg.attn.shape;
  KVCache<float> computed(s, 64), looked_up(s, 64), looked_up_bf16(s, 64);
  RowMatrix<float> q_c(n, s.q_width()), r_c(n, d), q_t(n, s.q_width()), r_t(n, d);
  RowMatrix<float> q_b(n, s.q_width()), r_b(n, d);
  kernel::first_layer_compute(embedding, layer1, cfg, prompt, computed, q_c, r_c);
  kernel::first_layer_lookup(table_f32, prompt, looked_up, q_t, r_t);
  kernel::first_layer_lookup(table_bf16, prompt, looked_up_bf16, q_b, r_b);

  // Everything layer 1 hands on: rotated q, residual, and the rotated k and v in the cache.
  auto max_dev = [&](const RowMatrix<float>& q, const RowMatrix<float>& r,
                     const KVCache<float>& c) {
    double m = (q - q_c).cwiseAbs().maxCoeff();
    m = std::max(m, double((r - r_c).cwiseAbs().maxCoeff()));
    m = std::max(m, double((c.keys().view() - computed.keys().view()).cwiseAbs().maxCoeff()));
    return std::max(m,
                    double((c.values().view() - computed.values().view()).cwiseAbs().maxCoeff()));
  };
  double top = std::max(q_c.cwiseAbs().maxCoeff(), r_c.cwiseAbs().maxCoeff());
  top = std::max(top, double(computed.keys().view().cwiseAbs().maxCoeff()));
  top = std::max(top, double(computed.values().view().cwiseAbs().maxCoeff()));

  // f32 table: the table builder runs the very kernel the computed path runs (fixed summation
  // order, independent of batching and threads), so the lookup must be bitwise equal: bound 0.
  const double dev_f32 = max_dev(q_t, r_t, looked_up);
  // bf16 table: each value is the double result rounded once to bf16 (<= 2^-8 relative), RoPE
  // then mixes a pair of them (<= sqrt(2) of that); the float computed path adds its own
  // rounding, d·u_f32 relative at most for these normalized d-term products. So eps_bf16 (2^-7)
  // + d·u_f32 times the largest value.
  const double dev_bf16 = max_dev(q_b, r_b, looked_up_bf16);
  const double bound_bf16 = (unit_roundoff<bf16>() + double(d) * unit_roundoff<float>()) * top;

  const bool ok_f32 = dev_f32 == 0.0, ok_bf16 = dev_bf16 <= bound_bf16;
  std::printf("max |table f32 - computed| = %.3g (within bound 0, bitwise): %s\n", dev_f32,
              ok_f32 ? "OK" : "FAILED");
  std::printf("max |table bf16 - computed| = %.3g (within bound %.3g): %s\n", dev_bf16, bound_bf16,
              ok_bf16 ? "OK" : "FAILED");
  return ok_f32 && ok_bf16 ? 0 : 1;
}
