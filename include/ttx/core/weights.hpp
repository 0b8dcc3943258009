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

// Conversion between scalar types (e.g. build in double, run in float; the oracle in double on a
// model's float weights). Every member is converted with Eigen's cast (round to nearest; no
// overflow check: use ttx::convert_checked for that); empty members stay empty.

template <class To, class From>
RowMatrix<To> cast_weights(const RowMatrix<From>& m) {
  return m.template cast<To>();
}
template <class To, class From>
RowVector<To> cast_weights(const RowVector<From>& v) {
  return v.template cast<To>();
}
template <class To, class From>
NormWeights<To> cast_weights(const NormWeights<From>& w) {
  return {cast_weights<To>(w.gain), cast_weights<To>(w.beta)};
}
template <class To, class From>
AttentionWeights<To> cast_weights(const AttentionWeights<From>& w) {
  return {cast_weights<To>(w.wq), cast_weights<To>(w.wk), cast_weights<To>(w.wv),
          cast_weights<To>(w.wo), cast_weights<To>(w.bq), cast_weights<To>(w.bk),
          cast_weights<To>(w.bv), cast_weights<To>(w.bo)};
}
template <class To, class From>
FfnWeights<To> cast_weights(const FfnWeights<From>& w) {
  return {cast_weights<To>(w.w_in), cast_weights<To>(w.w_up), cast_weights<To>(w.w_out),
          cast_weights<To>(w.b_in), cast_weights<To>(w.b_up), cast_weights<To>(w.b_out)};
}
template <class To, class From>
BlockWeights<To> cast_weights(const BlockWeights<From>& b) {
  return {cast_weights<To>(b.norm1), cast_weights<To>(b.norm2), cast_weights<To>(b.attn),
          cast_weights<To>(b.ffn)};
}
template <class To, class From>
WhisperBlockWeights<To> cast_weights(const WhisperBlockWeights<From>& b) {
  return {cast_weights<To>(b.norm_self),  cast_weights<To>(b.norm_cross),
          cast_weights<To>(b.norm_ffn),   cast_weights<To>(b.self_attn),
          cast_weights<To>(b.cross_attn), cast_weights<To>(b.ffn)};
}
namespace detail {
/// The members every decoder stack's weights have: embedding, positions, blocks, final norm, head.
template <class To, class Out, class In>
void cast_stack(Out& o, const In& w) {
  o.embedding = cast_weights<To>(w.embedding);
  o.positions = cast_weights<To>(w.positions);
  o.blocks.reserve(w.blocks.size());
  for (const auto& b : w.blocks) o.blocks.push_back(cast_weights<To>(b));
  o.final_norm = cast_weights<To>(w.final_norm);
  o.lm_head = cast_weights<To>(w.lm_head);
}
}  // namespace detail

/// The whole model: embedding, positions, every block, final norm, LM head.
///   ttx::ModelWeights<double> wd = ttx::cast_weights<double>(model_f32);
template <class To, class From>
ModelWeights<To> cast_weights(const ModelWeights<From>& w) {
  ModelWeights<To> o;
  detail::cast_stack<To>(o, w);
  return o;
}

}  // namespace ttx
