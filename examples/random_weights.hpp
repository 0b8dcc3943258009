// Stand-in weights for the examples: N(0, sd^2) entries from a fixed seed, so every run prints the
// same figures. In an engine these matrices come from the checkpoint instead.
#pragma once

#include <random>
#include <ttx/core/types.hpp>

namespace example {

class RandomWeights {
 public:
  explicit RandomWeights(unsigned long long seed) : rng_(seed) {}

  /// rows x cols, entries N(0, sd^2).
  ttx::RowMatrix<float> operator()(ttx::Index rows, ttx::Index cols, double sd) {
    ttx::RowMatrix<float> m(rows, cols);
    for (ttx::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(sd) * normal_(rng_);
    return m;
  }

 private:
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_{0.f, 1.f};
};

}  // namespace example
