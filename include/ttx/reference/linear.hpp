// Reference linear layer: Y = X W + b (SPEC.md §0, row vectors). W in ttx's (in x out) layout or
// PyTorch's (out x in) layout, read in place (a transposed view, never a copy).
#pragma once

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

namespace ttx::reference {

/// Y (n x out) = X (n x in) * W + b. `layout` says how W is stored; b may be empty (no bias).
template <class T, class DX, class DW>
RowMatrix<T> linear(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DW>& W,
                    const RowVector<T>& b = RowVector<T>(),
                    WeightLayout layout = WeightLayout::in_out) {
  const Index in = layout == WeightLayout::in_out ? W.rows() : W.cols();
  const Index out = layout == WeightLayout::in_out ? W.cols() : W.rows();
  detail::check_dim("reference::linear", "X.cols() (= W's input width)", in, X.cols());
  if (b.size() != 0) detail::check_dim("reference::linear", "b.size()", out, b.size());
  RowMatrix<T> Y(X.rows(), out);
  if (layout == WeightLayout::in_out)
    Y.noalias() = X.template cast<T>() * W.template cast<T>();
  else
    Y.noalias() = X.template cast<T>() * W.template cast<T>().transpose();
  if (b.size() != 0) Y.rowwise() += b;
  return Y;
}

}  // namespace ttx::reference
