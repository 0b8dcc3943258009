// Reference decoder-only model: embedding (+ learned positions) -> blocks -> final norm -> LM
// head, with per-layer KV caches and greedy generation, so rewrites can be compared on whole
// token streams.
#pragma once

#include <vector>

#include "ttx/core/greedy.hpp"
#include "ttx/reference/block.hpp"

namespace ttx::reference {

using ttx::ModelConfig;
using ttx::ModelWeights;

/// Input rows of a decoder stack: embedding.row(t) (+ positions.row(start + r) when `positions` is
/// given) for tokens[r]. ShapeError for an id outside [0, embedding.rows()), CapacityError for a
/// position >= max_positions; `fn` names the caller.
template <class T>
RowMatrix<T> embed_tokens(const char* fn, const std::vector<int>& tokens,
                          const RowMatrix<T>& embedding, const RowMatrix<T>* positions,
                          Index max_positions, Index start) {
  RowMatrix<T> X(static_cast<Index>(tokens.size()), embedding.cols());
  for (Index r = 0; r < X.rows(); ++r) {
    const int t = tokens[static_cast<size_t>(r)];
    detail::require(t >= 0 && t < embedding.rows(), ErrorKind::shape, fn,
                    "token id expected in [0, ", embedding.rows(), "), got ", t);
    X.row(r) = embedding.row(t);
    if (positions) {
      const Index pos = start + r;
      detail::require(pos < max_positions, ErrorKind::capacity, fn,
                      "position expected < max_positions=", max_positions, ", got ", pos);
      X.row(r) += positions->row(pos);
    }
  }
  return X;
}

template <class T>
class DecoderModel {
 public:
  DecoderModel(ModelConfig cfg, ModelWeights<T> w) : cfg_(std::move(cfg)), w_(std::move(w)) {
    const char* fn = "reference::DecoderModel";
    const Index d = cfg_.block.attn.shape.d;
    detail::check_shape(fn, "embedding", w_.embedding, cfg_.vocab, d);
    detail::check_dim(fn, "blocks.size()", cfg_.layers, static_cast<Index>(w_.blocks.size()));
    detail::check_shape(fn, "lm_head", w_.lm_head, d, cfg_.vocab);
    if (cfg_.learned_positions)
      detail::check_shape(fn, "positions", w_.positions, cfg_.max_positions, d);
    caches_.resize(static_cast<size_t>(cfg_.layers));
  }

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights<T>& weights() const { return w_; }
  Index position() const { return caches_.empty() ? 0 : caches_[0].size(); }
  const std::vector<KVCache<T>>& caches() const { return caches_; }
  void reset() { caches_.assign(caches_.size(), KVCache<T>{}); }

  /// Input rows of the first block for `tokens` placed at positions position()...
  RowMatrix<T> embed(const std::vector<int>& tokens) const {
    return embed_tokens<T>("reference::DecoderModel::embed", tokens, w_.embedding,
                           cfg_.learned_positions ? &w_.positions : nullptr, cfg_.max_positions,
                           position());
  }

  /// Runs the new tokens through the model (appending to the caches); logits (n x vocab).
  RowMatrix<T> forward(const std::vector<int>& tokens) {
    RowMatrix<T> X = embed(tokens);
    for (Index l = 0; l < cfg_.layers; ++l)
      X = block<T>(X, w_.blocks[static_cast<size_t>(l)], cfg_.block,
                   caches_[static_cast<size_t>(l)]);
    if (cfg_.final_norm) X = norm<T>(X, w_.final_norm, cfg_.final_norm_spec);
    return linear<T>(X, w_.lm_head);
  }

  /// Greedy decoding: prefill the prompt, then `steps` tokens. Each step's logits go to
  /// `logits` when given (row i: logits that chose token i).
  std::vector<int> generate(const std::vector<int>& prompt, Index steps,
                            std::vector<RowVector<T>>* logits = nullptr) {
    return greedy_generate([this](const std::vector<int>& t) { return forward(t); }, prompt, steps,
                           logits, "reference::DecoderModel::generate");
  }

 private:
  ModelConfig cfg_;
  ModelWeights<T> w_;
  std::vector<KVCache<T>> caches_;
};

}  // namespace ttx::reference
