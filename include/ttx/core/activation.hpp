// FFN descriptors and activations: MLP act(x W_in + b) W_out, and GLU (act(x W_gate) * (x W_up))
// W_out: SwiGLU (SiLU), GeGLU (GELU), ReGLU (ReLU), bilinear (identity).
#pragma once

#include <cmath>

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
    case Activation::relu:
      return x > T(0) ? x : T(0);
    case Activation::gelu_tanh: {
      const T c = T(0.7978845608028654);  // sqrt(2/pi)
      return T(0.5) * x * (T(1) + std::tanh(c * (x + T(0.044715) * x * x * x)));
    }
    case Activation::gelu_erf:
      return T(0.5) * x * (T(1) + std::erf(x / std::sqrt(T(2))));
    case Activation::silu:
      return x / (T(1) + std::exp(-x));
    case Activation::identity:
      return x;
  }
  return x;
}

}  // namespace ttx
