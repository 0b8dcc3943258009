// RoPE description (SPEC.md §0). Position m rotates pair j by angle m * inv_freq[j] with
// inv_freq[j] = base^(-2j/r) over the rotated width r <= d_k, or a caller-supplied inv_freq
// (Llama-3, NTK, linear scaling). Pair layouts: interleaved (2j, 2j+1), GPT-J / original Llama;
// half-split (j, j + r/2), GPT-NeoX / HuggingFace Llama. Encode rotates by +m*theta, decode by
// -m*theta (same cos, sin negated) and is exact.
#pragma once

#include <cmath>
#include <utility>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

namespace ttx {

enum class RopeLayout { interleaved, half_split };

struct RopeSpec {
  Index rotary_dim = 0;  ///< r: rotated width per head (0 = no RoPE); must be even, <= head_dim
  double base = 10000.0;
  RopeLayout layout = RopeLayout::half_split;
  std::vector<double> inv_freq;  ///< optional override, r/2 entries

  static RopeSpec none() { return RopeSpec{}; }
  static RopeSpec full(Index head_dim, RopeLayout layout, double base = 10000.0) {
    RopeSpec s;
    s.rotary_dim = head_dim;
    s.layout = layout;
    s.base = base;
    return s;
  }

  bool enabled() const { return rotary_dim > 0; }
  Index pairs() const { return rotary_dim / 2; }

  /// inv_freq[j] for j < r/2, in double.
  std::vector<double> frequencies() const {
    if (!inv_freq.empty()) return inv_freq;
    std::vector<double> f(static_cast<size_t>(pairs()));
    for (Index j = 0; j < pairs(); ++j)
      f[static_cast<size_t>(j)] =
          std::pow(base, -2.0 * static_cast<double>(j) / static_cast<double>(rotary_dim));
    return f;
  }

  /// Indices (a, b) of pair j within a head.
  std::pair<Index, Index> pair(Index j) const {
    return layout == RopeLayout::interleaved ? std::pair<Index, Index>{2 * j, 2 * j + 1}
                                             : std::pair<Index, Index>{j, j + rotary_dim / 2};
  }

  void validate(const char* fn, Index head_dim) const {
    if (!enabled()) return;
    detail::require(rotary_dim % 2 == 0 && rotary_dim <= head_dim, ErrorKind::shape, fn,
                    "rope.rotary_dim expected even and <= head_dim=", head_dim, ", got ",
                    rotary_dim);
    detail::require(inv_freq.empty() || static_cast<Index>(inv_freq.size()) == pairs(),
                    ErrorKind::shape, fn, "rope.inv_freq expected ", pairs(), " entries, got ",
                    inv_freq.size());
    detail::require(inv_freq.empty() ? base > 0 : true, ErrorKind::shape, fn,
                    "rope.base expected > 0, got ", base);
  }
};

/// Rotates one head vector (length >= r) in place at position `pos`; sign = +1 encodes, -1 decodes.
/// The angle is formed in double so every implementation sees the same cos/sin.
template <class Head>
inline void rope_rotate_head(Head&& x, const RopeSpec& spec, const std::vector<double>& freqs,
                             double pos, int sign) {
  using S = typename std::decay_t<Head>::Scalar;
  for (Index j = 0; j < spec.pairs(); ++j) {
    const double angle = pos * freqs[static_cast<size_t>(j)];
    const S c = static_cast<S>(std::cos(angle));
    const S s = static_cast<S>(sign * std::sin(angle));
    const auto [a, b] = spec.pair(j);
    const S xa = x(a), xb = x(b);
    x(a) = xa * c - xb * s;
    x(b) = xa * s + xb * c;
  }
}

}  // namespace ttx
