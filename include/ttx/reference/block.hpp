// Reference transformer blocks: pre-norm serial (Llama, GPT-2), parallel attention || FFN
// (GPT-J: both norms equal; Pythia: two norms), skipless serial and parallel (no residual, no
// norm), and the Whisper decoder block (self-attention, cross-attention to the encoder output, MLP).
#pragma once

#include "ttx/core/norm.hpp"
#include "ttx/reference/attention.hpp"
#include "ttx/reference/ffn.hpp"
#include "ttx/reference/norm.hpp"

namespace ttx::reference {

enum class BlockKind { serial, parallel, skipless_serial, skipless_parallel };

struct BlockConfig {
  BlockKind kind = BlockKind::serial;
  AttentionConfig attn;
  NormSpec norm;  ///< ignored by skipless blocks
  FfnSpec ffn;
};

/// norm1 feeds attention, norm2 feeds the FFN (parallel GPT-J style: pass the same weights twice).
template <class T>
struct BlockWeights {
  NormWeights<T> norm1, norm2;
  AttentionWeights<T> attn;
  FfnWeights<T> ffn;
};

/// One block on n new tokens X (n x d) at positions cache.size()...; appends to the cache.
template <class T>
RowMatrix<T> block(const RowMatrix<T>& X, const BlockWeights<T>& w, const BlockConfig& cfg,
                   KVCache<T>& cache, const ScoreBias& bias = {}) {
  switch (cfg.kind) {
    case BlockKind::serial: {
      const RowMatrix<T> h = X + self_attention<T>(norm<T>(X, w.norm1, cfg.norm), w.attn, cfg.attn,
                                                   cache, bias);
      return h + ffn<T>(norm<T>(h, w.norm2, cfg.norm), w.ffn, cfg.ffn);
    }
    case BlockKind::parallel:
      return X +
             self_attention<T>(norm<T>(X, w.norm1, cfg.norm), w.attn, cfg.attn, cache, bias) +
             ffn<T>(norm<T>(X, w.norm2, cfg.norm), w.ffn, cfg.ffn);
    case BlockKind::skipless_serial:
      return ffn<T>(self_attention<T>(X, w.attn, cfg.attn, cache, bias), w.ffn, cfg.ffn);
    case BlockKind::skipless_parallel:
      return self_attention<T>(X, w.attn, cfg.attn, cache, bias) + ffn<T>(X, w.ffn, cfg.ffn);
  }
  return X;
}

struct WhisperBlockConfig {
  AttentionConfig self_attn;
  AttentionConfig cross_attn;
  NormSpec norm = NormSpec::layer(1e-5);
  FfnSpec ffn = FfnSpec::mlp(Activation::gelu_erf);
};

/// Whisper decoder block weights (q/v/o biases, no k bias, as Whisper has them).
template <class T>
struct WhisperBlockWeights {
  NormWeights<T> norm_self, norm_cross, norm_ffn;
  AttentionWeights<T> self_attn, cross_attn;
  FfnWeights<T> ffn;
};

/// x += self_attn(ln(x)); x += cross_attn(ln(x), E); x += mlp(ln(x)).
template <class T>
RowMatrix<T> whisper_decoder_block(const RowMatrix<T>& X, const RowMatrix<T>& E,
                                   const WhisperBlockWeights<T>& w, const WhisperBlockConfig& cfg,
                                   KVCache<T>& self_cache) {
  RowMatrix<T> h =
      X + self_attention<T>(norm<T>(X, w.norm_self, cfg.norm), w.self_attn, cfg.self_attn,
                            self_cache);
  h += cross_attention<T>(norm<T>(h, w.norm_cross, cfg.norm), E, w.cross_attn, cfg.cross_attn);
  return h + ffn<T>(norm<T>(h, w.norm_ffn, cfg.norm), w.ffn, cfg.ffn);
}

}  // namespace ttx::reference
