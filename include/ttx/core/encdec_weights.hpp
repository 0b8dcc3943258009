// Configuration and weights of an encoder–decoder *decoder stack* (Whisper, T5): token embedding
// (+ learned absolute positions for Whisper), layers of self-attention -> cross-attention to the
// encoder output E -> FFN (WhisperBlockWeights), a final norm and the LM head; optionally T5's
// relative position bias on the self-attention scores. Shared by the reference, the rewrites and
// the runtime so that all three read the same structs.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/weights.hpp"

namespace ttx {

struct EncDecDecoderConfig {
  Index vocab = 0;
  Index layers = 0;
  WhisperBlockConfig block;        ///< self_attn, cross_attn, norm, ffn (shared by all layers)
  bool learned_positions = false;  ///< Whisper: absolute position embeddings
  Index max_positions = 0;         ///< rows of `positions`; also the longest decoder sequence
  NormSpec final_norm_spec = NormSpec::layer(1e-5);
  /// T5 relative position bias on the self-attention scores (0 buckets = none). The table is
  /// EncDecDecoderWeights::relative_bias (buckets x heads), shared by every layer as in T5.
  Index relative_buckets = 0;
  Index relative_max_distance = 128;
};

template <class T>
struct EncDecDecoderWeights {
  RowMatrix<T> embedding;  ///< vocab x d
  RowMatrix<T> positions;  ///< max_positions x d (learned positions only)
  std::vector<WhisperBlockWeights<T>> blocks;
  NormWeights<T> final_norm;
  RowMatrix<T> lm_head;        ///< d x vocab
  RowMatrix<T> relative_bias;  ///< relative_buckets x heads (T5 only)
};

/// The whole decoder stack at another scalar type (see cast_weights in core/weights.hpp).
template <class To, class From>
EncDecDecoderWeights<To> cast_weights(const EncDecDecoderWeights<From>& w) {
  EncDecDecoderWeights<To> o;
  detail::cast_stack<To>(o, w);
  o.relative_bias = cast_weights<To>(w.relative_bias);
  return o;
}

/// T5's causal (decoder, unidirectional) relative position bucket of key position k seen from
/// query position q (HuggingFace `_relative_position_bucket(k - q, bidirectional=False)`).
inline Index t5_relative_bucket(Index query_pos, Index key_pos, Index buckets, Index max_distance) {
  const Index rel = std::max<Index>(0, query_pos - key_pos);  // -min(k - q, 0)
  const Index max_exact = buckets / 2;
  if (rel < max_exact) return rel;
  const Index large =
      max_exact + static_cast<Index>(std::log(static_cast<double>(rel) / max_exact) /
                                     std::log(static_cast<double>(max_distance) / max_exact) *
                                     static_cast<double>(buckets - max_exact));
  return std::min(large, buckets - 1);
}

/// Checks weights against the config (every entry point that takes a whole decoder calls it).
template <class T>
void check_encdec_decoder(const char* fn, const EncDecDecoderConfig& cfg,
                          const EncDecDecoderWeights<T>& w) {
  const AttentionShape& s = cfg.block.self_attn.shape;
  s.validate(fn);
  cfg.block.cross_attn.shape.validate(fn);
  detail::check_dim(fn, "block.cross_attn.shape.d (= self_attn.shape.d)", s.d,
                    cfg.block.cross_attn.shape.d);
  detail::require(cfg.vocab > 0, ErrorKind::shape, fn, "vocab expected > 0, got ", cfg.vocab);
  detail::require(cfg.layers > 0, ErrorKind::shape, fn, "layers expected > 0, got ", cfg.layers);
  detail::check_dim(fn, "blocks.size() (= layers)", cfg.layers, w.blocks.size());
  detail::check_shape(fn, "embedding", w.embedding, cfg.vocab, s.d);
  detail::check_shape(fn, "lm_head", w.lm_head, s.d, cfg.vocab);
  if (cfg.learned_positions)
    detail::check_shape(fn, "positions", w.positions, cfg.max_positions, s.d);
  if (cfg.relative_buckets > 0)
    detail::check_shape(fn, "relative_bias", w.relative_bias, cfg.relative_buckets, s.heads);
}

}  // namespace ttx
