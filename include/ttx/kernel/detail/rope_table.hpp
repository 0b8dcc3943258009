// cos/sin of m * inv_freq[p] for every cache position m, without a trigonometric call per key:
// m = 64 * hi + lo, and cos/sin(m t) follow from the tables for hi and lo by the angle-addition
// formula in double (error ~1e-16, far below the float rounding applied afterwards). The tables
// depend only on the RopeSpec, so they are kept per calling thread and reused across decode calls
// (a decode step re-reads every position; recomputing 64 * r/2 + n/64 * r/2 sines per call would
// cost more than the kernel at small n).
#pragma once

#include <cmath>
#include <vector>

#include "ttx/core/rope.hpp"
#include "ttx/core/types.hpp"
#include "ttx/kernel/detail/decode_simd.hpp"

namespace ttx::kernel::detail {

class RopeTable {
 public:
  static constexpr Index kLow = 64;

  /// Makes the table describe `spec` and cover positions [0, n).
  void prepare(const RopeSpec& spec, Index n) {
    if (!same_spec(spec)) {
      rotary_dim_ = spec.rotary_dim;
      base_ = spec.base;
      layout_ = spec.layout;
      inv_freq_ = spec.inv_freq;
      freqs_ = spec.frequencies();
      const Index h = spec.pairs();
      cos_lo_.assign(static_cast<size_t>(kLow * h), 0.0);
      sin_lo_.assign(static_cast<size_t>(kLow * h), 0.0);
      for (Index lo = 0; lo < kLow; ++lo)
        for (Index p = 0; p < h; ++p) {
          const double a = static_cast<double>(lo) * freqs_[static_cast<size_t>(p)];
          cos_lo_[static_cast<size_t>(lo * h + p)] = std::cos(a);
          sin_lo_[static_cast<size_t>(lo * h + p)] = std::sin(a);
        }
      cos_hi_.clear();
      sin_hi_.clear();
      hi_rows_ = 0;
    }
    const Index need = (n + kLow - 1) / kLow;
    if (need > hi_rows_) {
      const Index h = pairs();
      cos_hi_.resize(static_cast<size_t>(need * h));
      sin_hi_.resize(static_cast<size_t>(need * h));
      for (Index hi = hi_rows_; hi < need; ++hi)
        for (Index p = 0; p < h; ++p) {
          const double a = static_cast<double>(hi * kLow) * freqs_[static_cast<size_t>(p)];
          cos_hi_[static_cast<size_t>(hi * h + p)] = std::cos(a);
          sin_hi_[static_cast<size_t>(hi * h + p)] = std::sin(a);
        }
      hi_rows_ = need;
    }
  }

  Index pairs() const { return rotary_dim_ / 2; }
  Index rotary_dim() const { return rotary_dim_; }
  RopeLayout layout() const { return layout_; }

  /// c[p] = cos(m t_p), s[p] = sign * sin(m t_p) as floats, p < r/2.
  void at(Index m, float sign, float* c, float* s) const {
    const Index h = pairs();
    const double* ch = cos_hi_.data() + (m / kLow) * h;
    const double* sh = sin_hi_.data() + (m / kLow) * h;
    const double* cl = cos_lo_.data() + (m % kLow) * h;
    const double* sl = sin_lo_.data() + (m % kLow) * h;
    for (Index p = 0; p < h; ++p) {
      c[p] = static_cast<float>(ch[p] * cl[p] - sh[p] * sl[p]);
      s[p] = sign * static_cast<float>(sh[p] * cl[p] + ch[p] * sl[p]);
    }
  }

 private:
  bool same_spec(const RopeSpec& s) const {
    return rotary_dim_ == s.rotary_dim && base_ == s.base && layout_ == s.layout &&
           inv_freq_ == s.inv_freq && !freqs_.empty();
  }
  Index rotary_dim_ = -1;
  double base_ = 0;
  RopeLayout layout_ = RopeLayout::half_split;
  std::vector<double> inv_freq_, freqs_;
  std::vector<double> cos_lo_, sin_lo_, cos_hi_, sin_hi_;
  Index hi_rows_ = 0;
};

/// The calling thread's table (kernels prepare it before starting worker threads).
inline RopeTable& thread_rope_table() {
  static thread_local RopeTable table;
  return table;
}

/// out (head_dim floats) = x rotated by the pairs' (c, s) over the first r values; rest copied.
template <class T>
inline void rotate_head(const T* x, float* out, Index head_dim, Index r, RopeLayout layout,
                        const float* c, const float* s) {
  const Index h = r / 2;
  if (layout == RopeLayout::half_split) {
    for (Index p = 0; p < h; ++p) {
      const float a = to_float(x[p]), b = to_float(x[p + h]);
      out[p] = a * c[p] - b * s[p];
      out[p + h] = a * s[p] + b * c[p];
    }
  } else {
    for (Index p = 0; p < h; ++p) {
      const float a = to_float(x[2 * p]), b = to_float(x[2 * p + 1]);
      out[2 * p] = a * c[p] - b * s[p];
      out[2 * p + 1] = a * s[p] + b * c[p];
    }
  }
  for (Index t = r; t < head_dim; ++t) out[t] = to_float(x[t]);
}

}  // namespace ttx::kernel::detail
