// slim_kcache_decode: slim attention's K-only cache for one self-attention layer (MHA, RoPE).
//
// Vanilla: cache K and V (2e values per token). Slim: cache K only (e values, half the memory)
// and recover V = K W_KV with W_KV = W_K^{-1} W_V, solved once offline in double. Decode never
// forms V: per head it streams the keys once, U_i = softmax(q_i K_i^T) K, then head_i =
// U_i W_KV,i. Both paths prefill the same prompt and decode the same tokens; their outputs must
// agree to rounding.
#include <cmath>
#include <cstdio>
#include <random>
#include <ttx/cache/k_cache.hpp>
#include <ttx/cache/kv_cache.hpp>
#include <ttx/kernel/decode.hpp>
#include <ttx/kernel/slim_attention.hpp>
#include <ttx/rewrite/slim.hpp>
#include "random_weights.hpp"

using namespace ttx;

// The vanilla layer for one token at position `pos`: project, rotate q and k, append k and v,
// attend over the KV cache, output projection. This is the code the K-only cache replaces.
void vanilla_step(const RowVector<float>& x, const AttentionWeights<float>& w,
                  const AttentionConfig& cfg, const std::vector<double>& freqs,
                  KVCache<float>& cache, RowVector<float>& y) {
  const AttentionShape& s = cfg.shape;
  const Index pos = cache.size();
  RowVector<float> q = x * w.wq, k = x * w.wk, v = x * w.wv, heads(s.q_width());
  for (Index i = 0; i < s.heads; ++i)
    rope_rotate_head(q.segment(i * s.head_dim, s.head_dim), cfg.rope, freqs, double(pos), +1);
  for (Index g = 0; g < s.kv_heads; ++g)
    rope_rotate_head(k.segment(g * s.head_dim, s.head_dim), cfg.rope, freqs, double(pos), +1);
  cache.append(k, v);
  kernel::DecodeOptions opt;
  opt.scale = cfg.effective_scale();
  kernel::decode_vanilla<float>(q, cache, s, opt, heads);
  y = heads * w.wo;
}

int main() {
  const Index d = 256, heads = 4, dk = 64, prompt_len = 24, steps = 24, capacity = 64;
  AttentionConfig cfg;
  cfg.shape = {d, heads, heads, dk};  // MHA: e = d, W_K is square
  cfg.rope = RopeSpec::full(dk, RopeLayout::half_split);

  example::RandomWeights random(3);
  const float ws = 1.f / std::sqrt(float(d));
  AttentionWeights<float> w;
  w.wq = random(d, d, ws);
  w.wk = random(d, d, ws);
  w.wv = random(d, d, ws);
  w.wo = random(d, d, ws);

  // Offline, once per layer: W_KV by an LU solve in double, stored as float, with a report.
  const rewrite::SlimAttention<float> slim = rewrite::slim_attention<float>(w, cfg);
  const rewrite::SlimReport& rep = slim.report;
  std::printf(
      "rewrite: basis %s, cond(W_K) ~ %.3g, max |W_KV| = %.3g, residual %.2g, "
      "error gain %.3g, saves %lld bytes/token (f32)\n",
      rewrite::name(rep.basis), rep.cond_estimate, rep.max_abs_transform, rep.residual,
      rep.error_gain, rep.bytes_per_token_saved);

  // The caches: the KCache holds raw keys, rotated on read by the decode kernel.
  KVCache<float> kv(cfg.shape, capacity);
  KCache<float> kc(cfg.shape, capacity, KeyStorage::raw, slim.cached_width);
  kernel::SlimWorkspace ws_slim;
  ws_slim.reserve(slim, capacity);  // decode steps then allocate nothing
  const auto freqs = cfg.rope.frequencies();

  // Prefill: slim does the whole prompt at once; vanilla goes token by token (same causal result).
  const RowMatrix<float> prompt = random(prompt_len, d, 1.f);
  RowMatrix<float> y_slim(prompt_len, d);
  kernel::slim_prefill(prompt, slim, kc, y_slim, ws_slim);
  double max_dev = 0, max_y = 0;
  RowVector<float> y_van(d), y(d);
  for (Index t = 0; t < prompt_len; ++t) {
    vanilla_step(prompt.row(t), w, cfg, freqs, kv, y_van);
    max_dev = std::max(max_dev, double((y_slim.row(t) - y_van).cwiseAbs().maxCoeff()));
    max_y = std::max(max_y, double(y_van.cwiseAbs().maxCoeff()));
  }
  // Decode: one new token per step (in a model, the next layer input of the sampled token).
  for (Index t = 0; t < steps; ++t) {
    const RowVector<float> x = random(1, d, 1.f);
    kernel::slim_decode(x, slim, kc, y, ws_slim);
    vanilla_step(x, w, cfg, freqs, kv, y_van);
    max_dev = std::max(max_dev, double((y - y_van).cwiseAbs().maxCoeff()));
    max_y = std::max(max_y, double(y_van.cwiseAbs().maxCoeff()));
  }

  std::printf(
      "%ld prompt + %ld decoded tokens; cache bytes: vanilla KVCache %zu, slim KCache %zu "
      "(%.2fx)\n",
      long(prompt_len), long(steps), kv.bytes(), kc.bytes(),
      double(kc.bytes()) / double(kv.bytes()));
  // Bound: each output is a chain of float products (projection, scores, weighted sum, W_O) of
  // length <= d, whose rounding errors grow like sqrt(d)·u for random-signed terms; 8 covers
  // the four products and the softmax with a margin. The slim path also rounds K and W_KV,
  // which the inverse amplifies by the report's error gain (||W_K|| ||W_KV|| / ||W_V||, ~ sqrt of
  // cond). A wrong W_KV or a key rotated at the wrong position gives errors of order max|y|.
  const double bound =
      8 * std::sqrt(double(d)) * unit_roundoff<float>() * (1 + rep.error_gain) * max_y;
  const bool ok = max_dev <= bound && 2 * kc.bytes() == kv.bytes();
  std::printf("max |slim - vanilla| = %.3g (within bound %.3g): %s\n", max_dev, bound,
              ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
