// Deterministic random encoder–decoder decoder stacks for the encdec tests: Whisper-shaped
// (LayerNorm, GELU MLP with biases, q/v/o attention biases and no k bias, learned positions) and
// T5-shaped (RMSNorm, ReLU MLP, no biases, score scale 1, e > d, relative position bias).
#pragma once

#include "support/random.hpp"
#include "ttx/core/encdec_weights.hpp"

namespace ttx::test {

inline EncDecDecoderConfig whisper_config(Index d, Index heads, Index layers, Index vocab,
                                          Index max_positions, Index kv_heads = 0) {
  EncDecDecoderConfig c;
  c.vocab = vocab;
  c.layers = layers;
  const AttentionShape s{d, heads, kv_heads ? kv_heads : heads, d / heads};
  c.block.self_attn.shape = s;
  c.block.cross_attn.shape = s;
  c.block.norm = NormSpec::layer(1e-5);
  c.block.ffn = FfnSpec::mlp(Activation::gelu_erf);
  c.learned_positions = true;
  c.max_positions = max_positions;
  c.final_norm_spec = NormSpec::layer(1e-5);
  return c;
}

/// T5-style: head_dim * heads = e = ratio * d, score scale 1, relative bias, RMSNorm, ReLU MLP.
inline EncDecDecoderConfig t5_config(Index d, Index heads, Index head_dim, Index layers,
                                     Index vocab) {
  EncDecDecoderConfig c;
  c.vocab = vocab;
  c.layers = layers;
  const AttentionShape s{d, heads, heads, head_dim};
  c.block.self_attn = {s, 1.0, RopeSpec::none()};
  c.block.cross_attn = {s, 1.0, RopeSpec::none()};
  c.block.norm = NormSpec::rms(1e-6);
  c.block.ffn = FfnSpec::mlp(Activation::relu);
  c.learned_positions = false;
  c.final_norm_spec = NormSpec::rms(1e-6);
  c.relative_buckets = 32;
  c.relative_max_distance = 128;
  return c;
}

/// Random weights for `c` (ffn width f). Whisper-like biases when `whisper`; the LM head is
/// scaled by `logit_scale` so that greedy choices have clear margins.
template <class T>
EncDecDecoderWeights<T> random_encdec(const EncDecDecoderConfig& c, Index f, Rng& rng, bool whisper,
                                      double logit_scale = 4.0) {
  const AttentionShape& s = c.block.self_attn.shape;
  EncDecDecoderWeights<T> w;
  w.embedding = random_matrix<T>(c.vocab, s.d, 1.0, rng);
  if (c.learned_positions) w.positions = random_matrix<T>(c.max_positions, s.d, 0.1, rng);
  const BiasOptions b = whisper ? BiasOptions::whisper() : BiasOptions{};
  for (Index l = 0; l < c.layers; ++l) {
    WhisperBlockWeights<T> blk;
    blk.norm_self = random_norm<T>(s.d, c.block.norm, rng);
    blk.norm_cross = random_norm<T>(s.d, c.block.norm, rng);
    blk.norm_ffn = random_norm<T>(s.d, c.block.norm, rng);
    blk.self_attn = random_attention<T>(s, rng, b);
    blk.cross_attn = random_attention<T>(c.block.cross_attn.shape, rng, b);
    if (c.block.self_attn.scale == 1.0) {  // T5 folds 1/sqrt(d_k) into W_Q at initialisation
      blk.self_attn.wq *= T(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
      blk.cross_attn.wq *= T(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
    }
    blk.ffn = random_ffn<T>(s.d, f, c.block.ffn, rng, whisper);
    w.blocks.push_back(std::move(blk));
  }
  w.final_norm = random_norm<T>(s.d, c.final_norm_spec, rng);
  w.lm_head = random_projection<T>(s.d, c.vocab, rng) * T(logit_scale);
  if (c.relative_buckets > 0)
    w.relative_bias = random_matrix<T>(c.relative_buckets, s.heads, 0.5, rng);
  return w;
}

}  // namespace ttx::test
