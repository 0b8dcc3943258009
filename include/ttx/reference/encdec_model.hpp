// Reference encoder–decoder *decoder* (Whisper, T5): embedding (+ learned positions) -> layers of
// [self-attention, cross-attention to the encoder output E, FFN] -> final norm -> LM head, with a
// per-layer self KV cache and greedy generation. Whisper layers are exactly
// reference::whisper_decoder_block; T5 adds the relative position bias to the self-attention
// scores (the same table in every layer). Cross K/V are recomputed from E on every call: the
// obvious computation, never optimised.
#pragma once

#include <utility>
#include <vector>

#include "ttx/core/encdec_weights.hpp"
#include "ttx/core/greedy.hpp"
#include "ttx/reference/block.hpp"
#include "ttx/reference/model.hpp"

namespace ttx::reference {

using ttx::EncDecDecoderConfig;
using ttx::EncDecDecoderWeights;

/// The T5 self-attention bias of `cfg`/`w` as a ScoreBias (empty when the model has none).
template <class T>
ScoreBias t5_self_bias(const EncDecDecoderConfig& cfg, const EncDecDecoderWeights<T>& w) {
  if (cfg.relative_buckets <= 0) return {};
  const Index buckets = cfg.relative_buckets, dist = cfg.relative_max_distance;
  const RowMatrix<T>* table = &w.relative_bias;
  return [table, buckets, dist](Index head, Index q, Index k) {
    return static_cast<double>((*table)(t5_relative_bucket(q, k, buckets, dist), head));
  };
}

/// One decoder layer: h = X + self(ln(X)); h += cross(ln(h), E); h + ffn(ln(h)).
template <class T>
RowMatrix<T> encdec_decoder_block(const RowMatrix<T>& X, const RowMatrix<T>& E,
                                  const WhisperBlockWeights<T>& w, const WhisperBlockConfig& cfg,
                                  KVCache<T>& self_cache, const ScoreBias& self_bias) {
  if (!self_bias) return whisper_decoder_block<T>(X, E, w, cfg, self_cache);
  RowMatrix<T> h = X + self_attention<T>(norm<T>(X, w.norm_self, cfg.norm), w.self_attn,
                                         cfg.self_attn, self_cache, self_bias);
  h += cross_attention<T>(norm<T>(h, w.norm_cross, cfg.norm), E, w.cross_attn, cfg.cross_attn);
  return h + ffn<T>(norm<T>(h, w.norm_ffn, cfg.norm), w.ffn, cfg.ffn);
}

template <class T>
class EncDecDecoderModel {
 public:
  EncDecDecoderModel(EncDecDecoderConfig cfg, EncDecDecoderWeights<T> w)
      : cfg_(std::move(cfg)), w_(std::move(w)) {
    check_encdec_decoder("reference::EncDecDecoderModel", cfg_, w_);
    caches_.resize(static_cast<size_t>(cfg_.layers));
  }

  const EncDecDecoderConfig& config() const { return cfg_; }
  const EncDecDecoderWeights<T>& weights() const { return w_; }
  Index position() const { return caches_[0].size(); }

  /// Sets the encoder output E (p x d) and forgets the decoded tokens.
  void set_encoder(const RowMatrix<T>& E) {
    detail::check_dim("reference::EncDecDecoderModel::set_encoder", "E.cols()",
                      cfg_.block.self_attn.shape.d, E.cols());
    E_ = E;
    caches_.assign(caches_.size(), KVCache<T>{});
  }

  /// Runs new tokens through the decoder (appending to the self caches); logits (n x vocab).
  RowMatrix<T> forward(const std::vector<int>& tokens) {
    const char* fn = "reference::EncDecDecoderModel::forward";
    detail::require(E_.rows() > 0, ErrorKind::shape, fn,
                    "encoder output expected (call set_encoder first), got none");
    RowMatrix<T> X =
        embed_tokens<T>(fn, tokens, w_.embedding, cfg_.learned_positions ? &w_.positions : nullptr,
                        cfg_.max_positions, position());
    const ScoreBias bias = t5_self_bias(cfg_, w_);  // built per call: it points into w_
    for (Index l = 0; l < cfg_.layers; ++l)
      X = encdec_decoder_block<T>(X, E_, w_.blocks[static_cast<size_t>(l)], cfg_.block,
                                  caches_[static_cast<size_t>(l)], bias);
    X = norm<T>(X, w_.final_norm, cfg_.final_norm_spec);
    return linear<T>(X, w_.lm_head);
  }

  /// Greedy decoding: prefill the prompt, then `steps` tokens; logits of each step to `logits`.
  std::vector<int> generate(const std::vector<int>& prompt, Index steps,
                            std::vector<RowVector<T>>* logits = nullptr) {
    return greedy_generate([this](const std::vector<int>& t) { return forward(t); }, prompt, steps,
                           logits, "reference::EncDecDecoderModel::generate");
  }

 private:
  EncDecDecoderConfig cfg_;
  EncDecDecoderWeights<T> w_;
  RowMatrix<T> E_;
  std::vector<KVCache<T>> caches_;
};

}  // namespace ttx::reference
