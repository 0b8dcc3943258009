// Reference feed-forward layers: MLP act(x W_in + b_in) W_out + b_out with ReLU or GELU (tanh or
// erf), and GLU (act(x W_gate) * (x W_up)) W_out: SwiGLU (SiLU), GeGLU (GELU), ReGLU (ReLU),
// bilinear (identity).
#pragma once

#include <cmath>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"
#include "ttx/reference/linear.hpp"

namespace ttx {

enum class Activation { relu, gelu_tanh, gelu_erf, silu, identity };
enum class FfnKind { mlp, glu };

struct FfnSpec {
  FfnKind kind = FfnKind::glu;
  Activation act = Activation::silu;

  static FfnSpec mlp(Activation a) { return {FfnKind::mlp, a}; }
  static FfnSpec swiglu() { return {FfnKind::glu, Activation::silu}; }
  static FfnSpec geglu() { return {FfnKind::glu, Activation::gelu_tanh}; }
  static FfnSpec reglu() { return {FfnKind::glu, Activation::relu}; }
  static FfnSpec bilinear() { return {FfnKind::glu, Activation::identity}; }
};

template <class T>
inline T activate(Activation a, T x) {
  switch (a) {
    case Activation::relu: return x > T(0) ? x : T(0);
    case Activation::gelu_tanh: {
      const T c = T(0.7978845608028654);  // sqrt(2/pi)
      return T(0.5) * x * (T(1) + std::tanh(c * (x + T(0.044715) * x * x * x)));
    }
    case Activation::gelu_erf: return T(0.5) * x * (T(1) + std::erf(x / std::sqrt(T(2))));
    case Activation::silu: return x / (T(1) + std::exp(-x));
    case Activation::identity: return x;
  }
  return x;
}

}  // namespace ttx

namespace ttx::reference {

/// w_in: d x f (the MLP input, or the GLU gate); w_up: d x f (GLU only); w_out: f x d.
template <class T>
struct FfnWeights {
  RowMatrix<T> w_in, w_up, w_out;
  RowVector<T> b_in, b_up, b_out;
};

template <class T>
RowMatrix<T> ffn(const RowMatrix<T>& X, const FfnWeights<T>& w, const FfnSpec& spec) {
  const char* fn = "reference::ffn";
  const Index d = X.cols(), f = w.w_in.cols();
  detail::check_shape(fn, "w_in", w.w_in, d, f);
  detail::check_shape(fn, "w_out", w.w_out, f, d);
  RowMatrix<T> H = linear<T>(X, w.w_in, w.b_in);
  H = H.unaryExpr([&](T v) { return activate(spec.act, v); });
  if (spec.kind == FfnKind::glu) {
    detail::check_shape(fn, "w_up", w.w_up, d, f);
    H.array() *= linear<T>(X, w.w_up, w.b_up).array();
  }
  return linear<T>(H, w.w_out, w.b_out);
}

}  // namespace ttx::reference
