// Reference RMSNorm and LayerNorm, row by row (SPEC.md §0).
#pragma once

#include <cmath>

#include "ttx/core/error.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

namespace ttx::reference {

using ttx::NormWeights;

/// RMS(a) = sqrt(mean(a^2) + eps) of one row.
template <class T, class D>
T rms(const Eigen::MatrixBase<D>& a, double eps) {
  T ss = T(0);
  for (Index i = 0; i < a.size(); ++i) ss += T(a(i)) * T(a(i));
  return std::sqrt(ss / T(a.size()) + T(eps));
}

/// Applies the norm described by `spec` to each row of X.
template <class T>
RowMatrix<T> norm(const RowMatrix<T>& X, const NormWeights<T>& w, const NormSpec& spec) {
  const Index n = X.cols();
  detail::check_dim("reference::norm", "gain.size()", n, w.gain.size());
  if (w.beta.size() != 0) detail::check_dim("reference::norm", "beta.size()", n, w.beta.size());
  RowVector<T> g = w.gain;
  if (spec.gain == GainConvention::one_plus) g.array() += T(1);
  RowMatrix<T> Y(X.rows(), n);
  for (Index r = 0; r < X.rows(); ++r) {
    if (spec.kind == NormKind::rms) {
      Y.row(r) = X.row(r) / rms<T>(X.row(r), spec.eps);
    } else {
      const T mean = X.row(r).sum() / T(n);
      const RowVector<T> c = X.row(r).array() - mean;
      const T var = c.squaredNorm() / T(n);
      Y.row(r) = c / std::sqrt(var + T(spec.eps));
    }
    Y.row(r).array() *= g.array();
    if (w.beta.size() != 0) Y.row(r) += w.beta;
  }
  return Y;
}

}  // namespace ttx::reference
