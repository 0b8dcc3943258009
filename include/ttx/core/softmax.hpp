// Softmax, stable (subtract the max) and online (running max and sum, mergeable across key
// blocks with a log-sum-exp rescale, as FlashAttention does).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "ttx/core/types.hpp"

namespace ttx {

/// In-place stable softmax of a row (any Eigen dense row/vector expression with lvalue access).
template <class Row>
inline void stable_softmax(Row&& row) {
  using S = typename std::decay_t<Row>::Scalar;
  if (row.size() == 0) return;
  const S m = row.maxCoeff();
  if (m == -std::numeric_limits<S>::infinity()) {  // every score masked: define as zeros
    row.setZero();
    return;
  }
  S sum = S(0);
  for (Index i = 0; i < row.size(); ++i) {
    row(i) = std::exp(row(i) - m);
    sum += row(i);
  }
  row /= sum;
}

/// Running softmax statistics for one query over a stream of scores.
template <class A = float>
struct OnlineSoftmax {
  A max = -std::numeric_limits<A>::infinity();
  A sum = A(0);

  /// Takes a block's maximum; returns the factor by which earlier accumulations must be scaled.
  A rescale_to(A block_max) {
    if (block_max <= max) return A(1);
    const A factor =
        (max == -std::numeric_limits<A>::infinity()) ? A(0) : std::exp(max - block_max);
    sum *= factor;
    max = block_max;
    return factor;
  }
  /// Adds one score (after rescale_to); returns its unnormalised weight exp(score - max).
  A add(A score) {
    const A w = std::exp(score - max);
    sum += w;
    return w;
  }
  /// Merges another partial state; returns {scale for this one's accumulator, scale for other's}.
  std::pair<A, A> merge(const OnlineSoftmax& other) {
    const A m = std::max(max, other.max);
    if (m == -std::numeric_limits<A>::infinity()) return {A(1), A(0)};
    const A a = (max == -std::numeric_limits<A>::infinity()) ? A(0) : std::exp(max - m);
    const A b = (other.max == -std::numeric_limits<A>::infinity()) ? A(0) : std::exp(other.max - m);
    sum = sum * a + other.sum * b;
    max = m;
    return {a, b};
  }
};

}  // namespace ttx
