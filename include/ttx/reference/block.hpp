// Reference transformer blocks: pre-norm serial (Llama, GPT-2), parallel attention || FFN
// (GPT-J: both norms equal; Pythia: two norms), skipless serial and parallel (no residual, no
// norm), and the Whisper decoder block (self-attention, cross-attention to the encoder output,
// MLP).
#pragma once

#include "ttx/core/norm.hpp"
#include "ttx/reference/attention.hpp"
#include "ttx/reference/ffn.hpp"
#include "ttx/reference/norm.hpp"

namespace ttx::reference {

using ttx::BlockConfig;
using ttx::BlockKind;
using ttx::BlockWeights;
using ttx::WhisperBlockConfig;
using ttx::WhisperBlockWeights;

/// One block on n new tokens X (n x d) at positions cache.size()...; appends to the cache.
template <class T>
RowMatrix<T> block(const RowMatrix<T>& X, const BlockWeights<T>& w, const BlockConfig& cfg,
                   KVCache<T>& cache, const ScoreBias& bias = {}) {
  switch (cfg.kind) {
    case BlockKind::serial: {
      const RowMatrix<T> h =
          X + self_attention<T>(norm<T>(X, w.norm1, cfg.norm), w.attn, cfg.attn, cache, bias);
      return h + ffn<T>(norm<T>(h, w.norm2, cfg.norm), w.ffn, cfg.ffn);
    }
    case BlockKind::parallel:
      return X + self_attention<T>(norm<T>(X, w.norm1, cfg.norm), w.attn, cfg.attn, cache, bias) +
             ffn<T>(norm<T>(X, w.norm2, cfg.norm), w.ffn, cfg.ffn);
    case BlockKind::skipless_serial:
      return ffn<T>(self_attention<T>(X, w.attn, cfg.attn, cache, bias), w.ffn, cfg.ffn);
    case BlockKind::skipless_parallel:
      return self_attention<T>(X, w.attn, cfg.attn, cache, bias) + ffn<T>(X, w.ffn, cfg.ffn);
  }
  return X;
}

/// x += self_attn(ln(x)); x += cross_attn(ln(x), E); x += mlp(ln(x)).
template <class T>
RowMatrix<T> whisper_decoder_block(const RowMatrix<T>& X, const RowMatrix<T>& E,
                                   const WhisperBlockWeights<T>& w, const WhisperBlockConfig& cfg,
                                   KVCache<T>& self_cache) {
  RowMatrix<T> h = X + self_attention<T>(norm<T>(X, w.norm_self, cfg.norm), w.self_attn,
                                         cfg.self_attn, self_cache);
  h += cross_attention<T>(norm<T>(h, w.norm_cross, cfg.norm), E, w.cross_attn, cfg.cross_attn);
  return h + ffn<T>(norm<T>(h, w.norm_ffn, cfg.norm), w.ffn, cfg.ffn);
}

}  // namespace ttx::reference
