// whisper_shared_encoder_cache: one encoder cache shared by the cross-attention of every layer.
//
// Vanilla Whisper decoding builds, per decoder layer l, a cross cache K_l = E W_K,l and
// V_l = E W_V,l + b_V,l from the encoder output E (p x d): 2e values per encoder row per layer.
// The inputs form keeps E itself (d values per row, once for all layers) and moves W_K and W_V
// to the query side and the output side (no inverse, nothing solved):
//   q~_i = scale (x W_Q,i + b_Q,i) W_K,i^T,   head_i = softmax(q~_i E^T) E W_V,i,
//   b_V folds into the output bias (softmax rows sum to 1), b_K drops out (a per-query constant).
// Whisper-tiny shapes: d = 384, 6 heads of 64, 4 decoder layers, p = 1500 encoder frames.
#include <cmath>
#include <cstdio>
#include <random>
#include <ttx/cache/e_cache.hpp>
#include <ttx/cache/kv_cache.hpp>
#include <ttx/kernel/encdec.hpp>
#include <ttx/rewrite/encdec.hpp>
#include <vector>
#include "random_weights.hpp"

using namespace ttx;

int main() {
  const Index d = 384, heads = 6, dk = 64, layers = 4, frames = 1500, tokens = 8;
  AttentionConfig cfg;  // cross-attention: no RoPE; scale 0 means 1/sqrt(head_dim)
  cfg.shape = {d, heads, heads, dk};

  example::RandomWeights random(5);
  const float ws = 1.f / std::sqrt(float(d));
  std::vector<AttentionWeights<float>> cross(static_cast<size_t>(layers));
  for (auto& w : cross) {  // Whisper has q, v and o biases, no k bias
    w.wq = random(d, d, ws), w.wk = random(d, d, ws), w.wv = random(d, d, ws);
    w.wo = random(d, d, ws);
    w.bq = random(1, d, 0.1f), w.bv = random(1, d, 0.1f), w.bo = random(1, d, 0.1f);
  }
  const RowMatrix<float> E = random(frames, d, 1.f);  // the encoder output (after its final norm)

  // Vanilla: per layer a cross KV cache, built once per utterance.
  std::vector<KVCache<float>> kv;
  std::size_t kv_bytes = 0;
  for (const auto& w : cross) {
    kv.emplace_back(cfg.shape, frames);
    kv.back().append(E * w.wk, (E * w.wv).rowwise() + w.bv);
    kv_bytes += kv.back().bytes();
  }
  // Slim: the weights rewritten once per model, E stored once per utterance for all layers.
  std::vector<rewrite::InputsAttention<float>> slim;
  for (const auto& w : cross) slim.push_back(rewrite::inputs_attention<float>(w, cfg));
  ECache<float> encoder(d, frames);
  encoder.assign(E);

  // Decode: every layer's cross-attention for a few decoder tokens. x stands for the layer's
  // normed decoder stream (in a model it comes from the self-attention sublayer).
  double max_dev = 0, max_y = 0;
  RowVector<float> heads_v(d), heads_s(d);
  for (Index t = 0; t < tokens; ++t)
    for (Index l = 0; l < layers; ++l) {
      const auto& w = cross[size_t(l)];
      const auto& s = slim[size_t(l)];
      const RowVector<float> x = random(1, d, 1.f);
      const RowVector<float> q = x * w.wq + w.bq;
      kernel::kv_heads(q, kv[size_t(l)], cfg.scale, nullptr, heads_v);
      const RowVector<float> y_van = heads_v * w.wo + w.bo;
      const RowVector<float> qs = x * s.wq + s.bq;  // scale already folded into wq, bq
      kernel::inputs_heads(qs, s, encoder.rows(), nullptr, heads_s);
      const RowVector<float> y_slim = heads_s * s.wo + s.bo;
      max_dev = std::max(max_dev, double((y_slim - y_van).cwiseAbs().maxCoeff()));
      max_y = std::max(max_y, double(y_van.cwiseAbs().maxCoeff()));
    }

  std::printf("%ld layers read one encoder output of %ld frames x d=%ld\n", long(layers),
              long(frames), long(d));
  std::printf("cross cache bytes: vanilla %ld x KVCache = %zu, shared ECache = %zu (1/%.0f)\n",
              long(layers), kv_bytes, encoder.bytes(), double(kv_bytes) / encoder.bytes());
  // Bound: both paths are chains of float products of length <= d (projections, scores, weighted
  // sums, W_O) whose rounding errors grow like sqrt(d)·u for random-signed terms; 8 covers the
  // few products, the reassociation (q W_K^T) E^T vs q (E W_K)^T and the softmax. There is no
  // inverse, so no condition number enters. A missing b_V fold or scale is of order max|y|.
  const double bound = 8 * std::sqrt(double(d)) * unit_roundoff<float>() * max_y;
  const bool ok = max_dev <= bound;
  std::printf("max |shared encoder - vanilla| = %.3g (within bound %.3g): %s\n", max_dev, bound,
              ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
