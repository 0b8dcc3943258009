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

  /// Values per key in the lane tables: r/2 (half-split) or r (interleaved).
  Index lanes() const { return layout_ == RopeLayout::interleaved ? rotary_dim_ : pairs(); }

  /// cos/sin of position m as the tables a vectorised rotation multiplies lane by lane, in chunks
  /// of 16 lanes placed `stride` floats apart (lane x at c[(x / 16) * stride + x % 16]), zero past
  /// lanes() up to the next multiple of 16. Half-split: c[p] = cos(m t_p), s[p] = sign sin(m t_p),
  /// and pair p, (x_p, x_{p+r/2}), becomes (x_p c_p - x_{p+r/2} s_p, x_p s_p + x_{p+r/2} c_p).
  /// Interleaved: one entry per value, c = (c_p, c_p), s = sign (-s_p, +s_p), so a head rotates as
  /// x c + swap(x) s (swap exchanges each pair's two values). sign -1 un-rotates.
  void at_lanes(Index m, float sign, float* c, float* s, Index stride) const {
    const Index h = pairs();
    const double* ch = cos_hi_.data() + (m / kLow) * h;
    const double* sh = sin_hi_.data() + (m / kLow) * h;
    const double* cl = cos_lo_.data() + (m % kLow) * h;
    const double* sl = sin_lo_.data() + (m % kLow) * h;
    const bool interleaved = layout_ == RopeLayout::interleaved;
#ifdef TTX_DECODE_AVX512
    // Eight pairs per step: cos(a + b) = cos a cos b - sin a sin b in double with one product
    // fused (as std::fma below), rounded to float once.
    const Index steps = interleaved ? (h + 7) / 8 : (h + 15) / 16 * 2;
    const __m512 sgn = _mm512_set1_ps(sign);
    const __m512 alt = _mm512_set_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    for (Index k = 0; k < steps; ++k) {
      const Index p = 8 * k;
      const __mmask8 m8 = p >= h       ? __mmask8(0)
                          : h - p >= 8 ? __mmask8(0xFF)
                                       : static_cast<__mmask8>((1u << (h - p)) - 1u);
      const __m512d vch = _mm512_maskz_loadu_pd(m8, ch + p),
                    vsh = _mm512_maskz_loadu_pd(m8, sh + p);
      const __m512d vcl = _mm512_maskz_loadu_pd(m8, cl + p),
                    vsl = _mm512_maskz_loadu_pd(m8, sl + p);
      const __m256 cf = _mm512_cvtpd_ps(_mm512_fmsub_pd(vch, vcl, _mm512_mul_pd(vsh, vsl)));
      const __m256 sf = _mm512_cvtpd_ps(_mm512_fmadd_pd(vsh, vcl, _mm512_mul_pd(vch, vsl)));
      if (interleaved) {  // pairs 8k..8k+7 fill lanes 16k..16k+15: chunk k
        const __m512 c16 = _mm512_permutexvar_ps(dup, _mm512_zextps256_ps512(cf));
        const __m512 s16 = _mm512_permutexvar_ps(dup, _mm512_zextps256_ps512(sf));
        _mm512_storeu_ps(c + k * stride, c16);
        _mm512_storeu_ps(s + k * stride, _mm512_mul_ps(_mm512_mul_ps(s16, sgn), alt));
      } else {  // pairs 8k..8k+7 are lanes 8k..: half of chunk k / 2
        float* cd = c + (k / 2) * stride + (k % 2) * 8;
        float* sd = s + (k / 2) * stride + (k % 2) * 8;
        _mm256_storeu_ps(cd, cf);
        _mm256_storeu_ps(sd, _mm256_mul_ps(sf, _mm512_castps512_ps256(sgn)));
      }
    }
#else
    const Index n_lanes = lanes(), padded = (n_lanes + 15) / 16 * 16;
    for (Index x = 0; x < padded; ++x) {
      float cx = 0, sx = 0;
      if (x < n_lanes) {
        const Index p = interleaved ? x / 2 : x;
        cx = static_cast<float>(std::fma(ch[p], cl[p], -(sh[p] * sl[p])));
        sx = sign * static_cast<float>(std::fma(sh[p], cl[p], ch[p] * sl[p]));
        if (interleaved && x % 2 == 0) sx = -sx;
      }
      c[(x / 16) * stride + x % 16] = cx;
      s[(x / 16) * stride + x % 16] = sx;
    }
#endif
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

}  // namespace ttx::kernel::detail
