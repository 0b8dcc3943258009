// Norm descriptors (SPEC.md §0). RMS(a) = sqrt(mean(a^2) + eps); RMSNorm(a) = a / RMS(a) * g,
// with the gain stored as g (Llama) or as g where the applied gain is 1 + g (Gemma): the
// convention is always explicit, never guessed. LayerNorm(a) = (a - mean) / sqrt(var + eps) * g +
// beta.
#pragma once

namespace ttx {

enum class NormKind { rms, layer };
enum class GainConvention { plain, one_plus };

struct NormSpec {
  NormKind kind = NormKind::rms;
  GainConvention gain = GainConvention::plain;
  double eps = 1e-6;

  static NormSpec rms(double eps = 1e-6, GainConvention g = GainConvention::plain) {
    return NormSpec{NormKind::rms, g, eps};
  }
  static NormSpec layer(double eps = 1e-5) {
    return NormSpec{NormKind::layer, GainConvention::plain, eps};
  }
};

}  // namespace ttx
