// Reference RoPE on projected Q or K rows (n x heads*head_dim): each head's first r values are
// rotated pairwise at position start+row (SPEC.md §0). sign = +1 encodes, -1 decodes.
#pragma once

#include "ttx/core/error.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/types.hpp"

namespace ttx::reference {

template <class T>
RowMatrix<T> rope(const RowMatrix<T>& X, Index heads, Index head_dim, const RopeSpec& spec,
                  Index start_pos, int sign = +1) {
  spec.validate("reference::rope", head_dim);
  detail::check_dim("reference::rope", "X.cols() (= heads*head_dim)", heads * head_dim, X.cols());
  RowMatrix<T> Y = X;
  if (!spec.enabled()) return Y;
  const auto freqs = spec.frequencies();
  for (Index r = 0; r < Y.rows(); ++r)
    for (Index h = 0; h < heads; ++h)
      rope_rotate_head(Y.row(r).segment(h * head_dim, head_dim), spec, freqs,
                       static_cast<double>(start_pos + r), sign);
  return Y;
}

}  // namespace ttx::reference
