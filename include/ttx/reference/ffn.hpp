// Reference feed-forward layers: MLP act(x W_in + b_in) W_out + b_out with ReLU or GELU (tanh or
// erf), and GLU (act(x W_gate) * (x W_up)) W_out: SwiGLU (SiLU), GeGLU (GELU), ReGLU (ReLU),
// bilinear (identity).
#pragma once

#include <cmath>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"
#include "ttx/reference/linear.hpp"

namespace ttx::reference {

using ttx::FfnWeights;

template <class T>
RowMatrix<T> ffn(const RowMatrix<T>& X, const FfnWeights<T>& w, const FfnSpec& spec) {
  const char* fn = "reference::ffn";
  const Index d = X.cols(), f = w.w_in.cols();
  detail::check_shape(fn, "w_in", w.w_in, d, f);
  detail::check_shape(fn, "w_out", w.w_out, f, d);
  // Named here so a wrong bias is reported as b_in/b_up/b_out, not as linear's anonymous b.
  if (w.b_in.size() != 0) detail::check_dim(fn, "b_in.size()", f, w.b_in.size());
  if (spec.kind == FfnKind::glu && w.b_up.size() != 0)
    detail::check_dim(fn, "b_up.size()", f, w.b_up.size());
  if (w.b_out.size() != 0) detail::check_dim(fn, "b_out.size()", d, w.b_out.size());
  RowMatrix<T> H = linear<T>(X, w.w_in, w.b_in);
  H = H.unaryExpr([&](T v) { return activate(spec.act, v); });
  if (spec.kind == FfnKind::glu) {
    detail::check_shape(fn, "w_up", w.w_up, d, f);
    H.array() *= linear<T>(X, w.w_up, w.b_up).array();
  }
  return linear<T>(H, w.w_out, w.b_out);
}

}  // namespace ttx::reference
