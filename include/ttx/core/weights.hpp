// Plain weight and configuration structs shared by the reference, the rewrites and the runtime.
// Every projection is stored in ttx's (in x out) layout (SPEC.md §0); an empty bias means none.
#pragma once

#include <vector>

#include "ttx/core/activation.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"

namespace ttx {

/// Gain and (LayerNorm only) bias of one norm; an empty beta means none.
template <class T>
struct NormWeights {
  RowVector<T> gain;
  RowVector<T> beta;
};

/// Projections: wq d x e_q, wk d x e, wv d x e, wo e_q x d.
template <class T>
struct AttentionWeights {
  RowMatrix<T> wq, wk, wv, wo;
  RowVector<T> bq, bk, bv, bo;
};

struct AttentionConfig {
  AttentionShape shape;
  double scale = 0.0;  ///< score scale; 0 means 1/sqrt(head_dim)
  RopeSpec rope;       ///< disabled by default

  double effective_scale() const { return scale != 0.0 ? scale : shape.default_scale(); }
};

/// w_in: d x f (MLP input, or GLU gate); w_up: d x f (GLU only); w_out: f x d.
template <class T>
struct FfnWeights {
  RowMatrix<T> w_in, w_up, w_out;
  RowVector<T> b_in, b_up, b_out;
};

enum class BlockKind { serial, parallel, skipless_serial, skipless_parallel };

struct BlockConfig {
  BlockKind kind = BlockKind::serial;
  AttentionConfig attn;
  NormSpec norm;  ///< ignored by skipless blocks
  FfnSpec ffn;
};

/// norm1 feeds attention, norm2 feeds the FFN (parallel GPT-J style: the same weights twice).
template <class T>
struct BlockWeights {
  NormWeights<T> norm1, norm2;
  AttentionWeights<T> attn;
  FfnWeights<T> ffn;
};

struct ModelConfig {
  Index vocab = 0;
  Index layers = 0;
  BlockConfig block;
  bool learned_positions = false;  ///< GPT-2 style absolute position embeddings
  Index max_positions = 0;
  bool final_norm = true;  ///< skipless models may have none
  NormSpec final_norm_spec;
};

template <class T>
struct ModelWeights {
  RowMatrix<T> embedding;  ///< vocab x d
  RowMatrix<T> positions;  ///< max_positions x d (learned positions only)
  std::vector<BlockWeights<T>> blocks;
  NormWeights<T> final_norm;
  RowMatrix<T> lm_head;  ///< d x vocab
};

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

}  // namespace ttx
