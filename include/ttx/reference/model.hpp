// Reference decoder-only model: embedding (+ learned positions) -> blocks -> final norm -> LM
// head, with per-layer KV caches and greedy generation, so rewrites can be compared on whole
// token streams.
#pragma once

#include <vector>

#include "ttx/reference/block.hpp"

namespace ttx::reference {

using ttx::ModelConfig;
using ttx::ModelWeights;

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
    const Index d = cfg_.block.attn.shape.d;
    RowMatrix<T> X(static_cast<Index>(tokens.size()), d);
    for (Index r = 0; r < X.rows(); ++r) {
      const int t = tokens[static_cast<size_t>(r)];
      detail::require(t >= 0 && t < cfg_.vocab, ErrorKind::shape, "reference::DecoderModel::embed",
                      detail::concat("token id expected in [0, ", cfg_.vocab, "), got ", t));
      X.row(r) = w_.embedding.row(t);
      if (cfg_.learned_positions) {
        const Index pos = position() + r;
        detail::require(pos < cfg_.max_positions, ErrorKind::capacity,
                        "reference::DecoderModel::embed",
                        detail::concat("position expected < max_positions=", cfg_.max_positions,
                                       ", got ", pos));
        X.row(r) += w_.positions.row(pos);
      }
    }
    return X;
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
    detail::require(!prompt.empty(), ErrorKind::shape, "reference::DecoderModel::generate",
                    "prompt expected at least 1 token, got 0");
    std::vector<int> out;
    RowMatrix<T> L = forward(prompt);
    for (Index s = 0; s < steps; ++s) {
      const RowVector<T> last = L.row(L.rows() - 1);
      Index best = 0;
      last.maxCoeff(&best);
      if (logits) logits->push_back(last);
      out.push_back(static_cast<int>(best));
      if (s + 1 < steps) L = forward({static_cast<int>(best)});
    }
    return out;
  }

 private:
  ModelConfig cfg_;
  ModelWeights<T> w_;
  std::vector<KVCache<T>> caches_;
};

}  // namespace ttx::reference
