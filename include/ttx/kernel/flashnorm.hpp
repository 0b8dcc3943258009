// FlashNorm runtime (SPEC.md §2): an RMSNorm whose gain was folded into the next linear layer
// (rewrite/flashnorm.hpp) runs as one deferred-normalization product,
//   z = (a W*) · (1 / RMS(a)) + c,
// the sum of squares of `a` accumulated in the same pass over `a` as the product (one token, and a
// batch with bf16/half weights; a float-weight batch and double weights: see gemm()). The scalar
// commutes with the product, so this is exact with eps too (eps sits inside the scalar).
// Weights are (in x out) row-major, storage float / double / bfloat16 / half; activations and
// accumulation are accum_t<T> (float, or double for double weights).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"
#include "ttx/kernel/detail/prefetch.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define TTX_FLASHNORM_AVX512 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace ttx::kernel {

/// How the runtime forms the deferred scalar from s = sum(a_i^2) over the n inputs:
/// divide_by_n: 1/sqrt(s/n + eps) (the plain RMSNorm); otherwise 1/sqrt(s + n·eps), valid only
/// when sqrt(n) was folded into W* (rewrite FoldOptions::fold_sqrt_n), since
/// RMS = sqrt(s + n·eps) / sqrt(n).
struct DeferredRms {
  double eps = 1e-6;
  bool divide_by_n = true;

  /// The scalar 1/RMS for a sum of squares `ss` over `n` values, formed in double.
  double scale(double ss, Index n) const {
    const double nn = static_cast<double>(n);
    return divide_by_n ? 1.0 / std::sqrt(ss / nn + eps) : 1.0 / std::sqrt(ss + nn * eps);
  }
};

namespace flashnorm_detail {

template <class T>
using Acc = accum_t<T>;

#ifdef TTX_FLASHNORM_AVX512
// 16 storage values -> 16 floats in a register (bf16: shift into the high half; half: vcvtph2ps).
template <class T>
inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}
template <class T>
inline __m512 load16_masked(const T* p, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const __m256i v = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
}

// Rows of at most kShortRowBytes: the next-but-one 8-row block is prefetched into L2 in address
// order, a few lines per column step. Each sweep reads eight rows side by side, eight streams that
// end after one row; with short rows the hardware prefetcher spends much of each stream
// re-training. Measured (2 threads, a 128 MB read before every call, the GEMV's rate over that
// read's, old and new builds alternating, 3 runs): bf16 4096 x 1536 (3 KB rows) 0.66-0.71 ->
// 0.80-0.86, bf16 2048 x 2560 (5 KB) 0.72-0.75 -> 0.75-0.86, float 4096 x 1280 (5 KB) unchanged
// (0.80-0.82 -> 0.82-0.84). With 16 KB rows (bf16 1024 x 8192) it cost 3 %, so long rows keep the
// hardware prefetcher alone.
constexpr Index kShortRowBytes = 6 << 10;

// z[0:out] += sum_{i in [i0,i1)} a_i W_row_i, eight rows per sweep so z is read and written once
// per eight W rows (z stays in L1) and eight W rows stream at once; returns sum a_i^2 over the same
// rows (the same pass over a). Eight rows instead of four measured 1.14-1.45x faster for bf16
// weights from memory (4096x4096: 45 -> 57 GB/s on 2 threads), the same for float.
template <class T>
inline float gemv_rows_avx512(const float* a, const T* w, Index ldw, Index out, Index i0, Index i1,
                              float* z) {
  const Index full = out / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (out - full)) - 1u);
  float ss = 0.f;
  const Index row_bytes = ldw * static_cast<Index>(sizeof(T));
  const bool prefetch = row_bytes <= kShortRowBytes && full > 0;
  detail::SweepPrefetch pf(w, i1 * row_bytes, 8 * row_bytes, std::max<Index>(1, full / 16));
  Index i = i0;
  for (; i + 8 <= i1; i += 8) {
    if (prefetch) pf.start((i + 16) * row_bytes);
    __m512 av[8];
    for (int r = 0; r < 8; ++r) {
      av[r] = _mm512_set1_ps(a[i + r]);
      ss += a[i + r] * a[i + r];
    }
    const T* w0 = w + i * ldw;
    // Two accumulation chains (rows 0-3 onto z, rows 4-7 from zero), added before the store.
    for (Index j = 0; j < full; j += 16) {
      if (prefetch) pf.step();
      __m512 lo = _mm512_loadu_ps(z + j);
      __m512 hi = _mm512_mul_ps(av[4], load16(w0 + 4 * ldw + j));
      for (int r = 0; r < 4; ++r) {
        lo = _mm512_fmadd_ps(av[r], load16(w0 + r * ldw + j), lo);
        if (r < 3) hi = _mm512_fmadd_ps(av[r + 5], load16(w0 + (r + 5) * ldw + j), hi);
      }
      _mm512_storeu_ps(z + j, _mm512_add_ps(lo, hi));
    }
    if (full < out) {
      __m512 lo = _mm512_maskz_loadu_ps(tail, z + full);
      __m512 hi = _mm512_mul_ps(av[4], load16_masked(w0 + 4 * ldw + full, tail));
      for (int r = 0; r < 4; ++r) {
        lo = _mm512_fmadd_ps(av[r], load16_masked(w0 + r * ldw + full, tail), lo);
        if (r < 3)
          hi = _mm512_fmadd_ps(av[r + 5], load16_masked(w0 + (r + 5) * ldw + full, tail), hi);
      }
      _mm512_mask_storeu_ps(z + full, tail, _mm512_add_ps(lo, hi));
    }
  }
  for (; i + 4 <= i1; i += 4) {
    const __m512 a0 = _mm512_set1_ps(a[i]), a1 = _mm512_set1_ps(a[i + 1]),
                 a2 = _mm512_set1_ps(a[i + 2]), a3 = _mm512_set1_ps(a[i + 3]);
    ss += a[i] * a[i] + a[i + 1] * a[i + 1] + a[i + 2] * a[i + 2] + a[i + 3] * a[i + 3];
    const T* w0 = w + i * ldw;
    const T* w1 = w0 + ldw;
    const T* w2 = w1 + ldw;
    const T* w3 = w2 + ldw;
    for (Index j = 0; j < full; j += 16) {
      __m512 acc = _mm512_loadu_ps(z + j);
      acc = _mm512_fmadd_ps(a0, load16(w0 + j), acc);
      acc = _mm512_fmadd_ps(a1, load16(w1 + j), acc);
      acc = _mm512_fmadd_ps(a2, load16(w2 + j), acc);
      acc = _mm512_fmadd_ps(a3, load16(w3 + j), acc);
      _mm512_storeu_ps(z + j, acc);
    }
    if (full < out) {
      __m512 acc = _mm512_maskz_loadu_ps(tail, z + full);
      acc = _mm512_fmadd_ps(a0, load16_masked(w0 + full, tail), acc);
      acc = _mm512_fmadd_ps(a1, load16_masked(w1 + full, tail), acc);
      acc = _mm512_fmadd_ps(a2, load16_masked(w2 + full, tail), acc);
      acc = _mm512_fmadd_ps(a3, load16_masked(w3 + full, tail), acc);
      _mm512_mask_storeu_ps(z + full, tail, acc);
    }
  }
  for (; i < i1; ++i) {
    const __m512 a0 = _mm512_set1_ps(a[i]);
    ss += a[i] * a[i];
    const T* w0 = w + i * ldw;
    for (Index j = 0; j < full; j += 16)
      _mm512_storeu_ps(z + j, _mm512_fmadd_ps(a0, load16(w0 + j), _mm512_loadu_ps(z + j)));
    if (full < out)
      _mm512_mask_storeu_ps(z + full, tail,
                            _mm512_fmadd_ps(a0, load16_masked(w0 + full, tail),
                                            _mm512_maskz_loadu_ps(tail, z + full)));
  }
  return ss;
}
#endif

// Portable fallback with the same loop order (and the same single pass over a).
template <class T>
inline Acc<T> gemv_rows_portable(const Acc<T>* a, const T* w, Index ldw, Index out, Index i0,
                                 Index i1, Acc<T>* z) {
  Acc<T> ss = 0;
  for (Index i = i0; i < i1; ++i) {
    const Acc<T> ai = a[i];
    ss += ai * ai;
    const T* wi = w + i * ldw;
    for (Index j = 0; j < out; ++j) z[j] += ai * static_cast<Acc<T>>(wi[j]);
  }
  return ss;
}

inline int worker_threads(double work) {
#ifdef _OPENMP
  // Below ~1M multiply-adds a fork/join costs more than it saves.
  return work < 1e6 ? 1 : std::max(1, omp_get_max_threads());
#else
  (void)work;
  return 1;
#endif
}

// z (out) = a (in) W, ss = sum a^2: one pass over a and over W. Threads split the input rows
// (each streams a contiguous block of W into its own partial z), then the partials are summed.
template <class T>
Acc<T> gemv(const Acc<T>* a, Index in, const T* w, Index ldw, Index out, Acc<T>* z) {
  using A = Acc<T>;
  const int nt = std::min<int>(worker_threads(static_cast<double>(in) * static_cast<double>(out)),
                               static_cast<int>(std::max<Index>(1, in / 64)));
  std::fill(z, z + out, A(0));
  auto rows = [&](Index i0, Index i1, A* zz) -> A {
#ifdef TTX_FLASHNORM_AVX512
    if constexpr (std::is_same_v<A, float>) return gemv_rows_avx512<T>(a, w, ldw, out, i0, i1, zz);
#endif
    return gemv_rows_portable<T>(a, w, ldw, out, i0, i1, zz);
  };
  if (nt <= 1) return rows(0, in, z);
  std::vector<A> partial(static_cast<size_t>(out) * static_cast<size_t>(nt - 1), A(0));
  A* const pbuf = partial.data();
  std::vector<A> ss(static_cast<size_t>(nt), A(0));
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
  for (int t = 0; t < nt; ++t) {
    const Index i0 = in * t / nt, i1 = in * (t + 1) / nt;
    A* zz = t == 0 ? z : pbuf + static_cast<size_t>(out) * static_cast<size_t>(t - 1);
    ss[static_cast<size_t>(t)] = rows(i0, i1, zz);
  }
  A total = ss[0];
  for (int t = 1; t < nt; ++t) {
    total += ss[static_cast<size_t>(t)];
    const A* p = partial.data() + static_cast<size_t>(out) * static_cast<size_t>(t - 1);
    for (Index j = 0; j < out; ++j) z[j] += p[j];
  }
  return total;
}

// panel (kw x cw, float) = W[k0:k0+kw, c0:c0+cw] widened. bf16 -> float is a 16-bit shift and
// half -> float one vcvtph2ps per 16 values; Eigen's scalar conversion measured ~10x slower here
// and dominated the batch-16 product.
template <class T>
void widen_panel(const Eigen::Ref<const RowMatrix<T>>& W, Index k0, Index c0, Index kw, Index cw,
                 RowMatrix<float>& panel) {
  panel.resize(kw, cw);
  for (Index r = 0; r < kw; ++r) {
    const T* src = W.data() + (k0 + r) * W.outerStride() + c0;
    float* dst = panel.data() + r * cw;
    Index j = 0;
#ifdef TTX_FLASHNORM_AVX512
    for (; j + 16 <= cw; j += 16) _mm512_storeu_ps(dst + j, load16(src + j));
#endif
    for (; j < cw; ++j) dst[j] = static_cast<float>(src[j]);
  }
}

// Z (n x out) = A (n x in) W for n > 1 (and n = 1 with double weights), and, when `ss` is
// non-null, ss[r] = sum_i A(r, i)^2 for every row.
// bf16/half weights: W is widened to float one (kc x nc) panel at a time (each panel stays in L2)
// and multiplied with Eigen's GEMM, threads over column panels; the thread owning column panel 0
// adds each (n x kw) block of A's squares to ss right before multiplying it (in cache, in k0
// order: race-free and the same for any thread count). float/double weights: Eigen's GEMM on the
// caller's memory packs A with no hook for a side sum, and blocking over k outside it would cost
// ceil(in/kc) read-modify-write passes over Z to save one read of A, so ss is a row pass after.
template <class T>
void gemm(const Eigen::Ref<const RowMatrix<Acc<T>>>& A, const Eigen::Ref<const RowMatrix<T>>& W,
          Eigen::Ref<RowMatrix<Acc<T>>> Z, Acc<T>* ss) {
  using F = Acc<T>;
  const Index n = A.rows();
  if constexpr (std::is_same_v<T, F>) {
    Z.noalias() = A * W;
    if (ss)
      for (Index r = 0; r < n; ++r) ss[r] = A.row(r).squaredNorm();
  } else {
    const Index in = W.rows(), out = W.cols();
    if (in == 0) {  // an empty sum: the k0 loop below would leave Z unwritten
      Z.setZero();
      return;
    }
    constexpr Index kc = 512, nc = 256;
    const Index panels = (out + nc - 1) / nc;
    const int nt =
        std::min<int>(worker_threads(static_cast<double>(n) * static_cast<double>(in * out)),
                      static_cast<int>(panels));
    (void)nt;
    if (ss) std::fill(ss, ss + n, F(0));
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
    for (Index p = 0; p < panels; ++p) {
      thread_local RowMatrix<F> panel;
      const Index c0 = p * nc, cw = std::min(nc, out - c0);
      for (Index k0 = 0; k0 < in; k0 += kc) {
        const Index kw = std::min(kc, in - k0);
        widen_panel<T>(W, k0, c0, kw, cw, panel);
        const auto Ak = A.middleCols(k0, kw);
        if (ss && p == 0)
          for (Index r = 0; r < n; ++r) ss[r] += Ak.row(r).squaredNorm();
        if (k0 == 0)
          Z.middleCols(c0, cw).noalias() = Ak * panel;
        else
          Z.middleCols(c0, cw).noalias() += Ak * panel;
      }
    }
  }
}

template <class T>
void check_linear(const char* fn, Index a_rows, Index a_cols, Index w_rows, Index w_cols,
                  Index bias_size, Index out_rows, Index out_cols) {
  detail::check_dim(fn, "a.cols() (= W.rows(), the input width)", w_rows, a_cols);
  if (bias_size != 0) detail::check_dim(fn, "bias.size() (= W.cols())", w_cols, bias_size);
  if (out_rows != a_rows || out_cols != w_cols)
    detail::raise_mismatch(ErrorKind::shape, fn, "out", detail::concat(a_rows, "x", w_cols),
                           detail::concat(out_rows, "x", out_cols));
}

// The shared core: out = (a W) · scale_r [+ bias], scale_r = 1/RMS(a_r) when `rms` is given,
// else 1. Writes each row's scalar to `scales` (n) when non-null; with apply_scale = false the
// scalars are only reported (a later epilogue applies them).
template <class T>
void product(const char* fn, const Eigen::Ref<const RowMatrix<Acc<T>>>& a,
             const Eigen::Ref<const RowMatrix<T>>& w,
             const Eigen::Ref<const RowVector<Acc<T>>>& bias, const DeferredRms* rms,
             Eigen::Ref<RowMatrix<Acc<T>>> out, Acc<T>* scales, bool apply_scale = true) {
  static_assert(is_storage_type_v<T>,
                "weights must be float, double, Eigen::bfloat16 or Eigen::half");
  using A = Acc<T>;
  check_linear<T>(fn, a.rows(), a.cols(), w.rows(), w.cols(), bias.size(), out.rows(), out.cols());
  if (rms) {
    detail::require(rms->eps >= 0 && std::isfinite(rms->eps), ErrorKind::shape, fn,
                    "rms.eps expected finite and >= 0, got ", rms->eps);
    // RMS(a) of no values is 0/0: refused rather than returning NaN.
    detail::require(a.cols() > 0, ErrorKind::shape, fn,
                    "a.cols() (the RMS's width) expected >= 1, got ", a.cols());
  }
  const Index n = a.rows(), in = a.cols(), outw = w.cols();
  if (n == 0 || outw == 0) return;
  const bool gemv_path =
      n == 1 && w.innerStride() == 1 && out.innerStride() == 1 && !std::is_same_v<A, double>;
  std::vector<A> ss(static_cast<size_t>(n), A(0));
  if (gemv_path) {
    ss[0] = gemv<T>(a.data(), in, w.data(), w.outerStride(), outw, out.data());
  } else {
    gemm<T>(a, w, out, rms ? ss.data() : nullptr);
  }
  for (Index r = 0; r < n; ++r) {
    const A s =
        rms ? static_cast<A>(rms->scale(static_cast<double>(ss[static_cast<size_t>(r)]), in))
            : A(1);
    if (scales) scales[r] = s;
    // Epilogue: one multiply per output (scale before the bias, SPEC.md §2).
    if (rms && apply_scale) out.row(r) *= s;
    if (bias.size() != 0) out.row(r) += bias;
  }
}

}  // namespace flashnorm_detail

/// FlashNorm linear: out = (a W*) · (1/RMS(a)) + bias, row by row (SPEC.md §2, deferred
/// normalization). One token (a is 1 x in; float/bf16/half weights) runs a GEMV that accumulates
/// sum(a^2) in the same pass over a as the product; a batch (n x in) runs a GEMM with the per-row
/// scalars in the epilogue. With bf16/half weights the batch's sums of squares are taken in the
/// GEMM's pass over a too (per k block); with float weights in a batch, and with double weights
/// (Eigen's GEMM on the caller's memory, no hook for it), they are one extra read of a (n x in),
/// small next to W.
///   a:    n x in, row-major, accum_t<T> (float for float/bf16/half weights)
///   w:    in x out, row-major, storage T — W* = diag(g) W from rewrite::fold_norm
///   bias: out values or empty (the norm's beta already folded in, if any)
///   out:  n x out, the caller's memory (must not alias a)
/// Example: `kernel::flashnorm_linear<bf16>(x, folded_bf16, RowVector<float>(), {1e-5}, y);`
template <class T>
void flashnorm_linear(const Eigen::Ref<const RowMatrix<accum_t<T>>>& a,
                      const Eigen::Ref<const RowMatrix<T>>& w,
                      const Eigen::Ref<const RowVector<accum_t<T>>>& bias, const DeferredRms& rms,
                      Eigen::Ref<RowMatrix<accum_t<T>>> out) {
  flashnorm_detail::product<T>("kernel::flashnorm_linear", a, w, bias, &rms, out, nullptr);
}

/// As flashnorm_linear, and also writes each row's 1/RMS(a_r) to `scales` (n values): the FFN and
/// RoPE fusions reuse the scalar of the first product.
template <class T>
void flashnorm_linear(const Eigen::Ref<const RowMatrix<accum_t<T>>>& a,
                      const Eigen::Ref<const RowMatrix<T>>& w,
                      const Eigen::Ref<const RowVector<accum_t<T>>>& bias, const DeferredRms& rms,
                      Eigen::Ref<RowMatrix<accum_t<T>>> out,
                      Eigen::Ref<RowVector<accum_t<T>>> scales) {
  const char* fn = "kernel::flashnorm_linear";
  detail::check_dim(fn, "scales.size() (= a.rows())", a.rows(), scales.size());
  flashnorm_detail::product<T>(fn, a, w, bias, &rms, out, scales.data());
}

/// The product with the scale left for a later epilogue: out = a W (unscaled) and
/// scales_r = 1/RMS(a_r), both from the same pass over a. Used where the scalar goes somewhere
/// cheaper than the output, e.g. into the per-token RoPE tables (kernel::rope_scaled).
template <class T>
void deferred_linear(const Eigen::Ref<const RowMatrix<accum_t<T>>>& a,
                     const Eigen::Ref<const RowMatrix<T>>& w, const DeferredRms& rms,
                     Eigen::Ref<RowMatrix<accum_t<T>>> out,
                     Eigen::Ref<RowVector<accum_t<T>>> scales) {
  const char* fn = "kernel::deferred_linear";
  detail::check_dim(fn, "scales.size() (= a.rows())", a.rows(), scales.size());
  flashnorm_detail::product<T>(fn, a, w, RowVector<accum_t<T>>(), &rms, out, scales.data(),
                               /*apply_scale=*/false);
}

/// Plain linear with the same product code: out = a W + bias (the unfused baseline's product).
template <class T>
void linear_unscaled(const Eigen::Ref<const RowMatrix<accum_t<T>>>& a,
                     const Eigen::Ref<const RowMatrix<T>>& w,
                     const Eigen::Ref<const RowVector<accum_t<T>>>& bias,
                     Eigen::Ref<RowMatrix<accum_t<T>>> out) {
  flashnorm_detail::product<T>("kernel::linear_unscaled", a, w, bias, nullptr, out, nullptr);
}

/// The unfused RMSNorm: out_r = a_r / RMS(a_r) ⊙ gain (gain empty = all ones), RMS with 1/n.
/// Row-wise on n x d; out may alias a.
template <class S>
void rms_normalize(const Eigen::Ref<const RowMatrix<S>>& a,
                   const Eigen::Ref<const RowVector<S>>& gain, double eps,
                   Eigen::Ref<RowMatrix<S>> out) {
  const char* fn = "kernel::rms_normalize";
  detail::check_shape(fn, "out", out, a.rows(), a.cols());
  if (gain.size() != 0) detail::check_dim(fn, "gain.size() (= a.cols())", a.cols(), gain.size());
  const DeferredRms rms{eps, true};
  for (Index r = 0; r < a.rows(); ++r) {
    const S s = static_cast<S>(rms.scale(static_cast<double>(a.row(r).squaredNorm()), a.cols()));
    if (gain.size() != 0)
      out.row(r) = (a.row(r) * s).cwiseProduct(gain);
    else
      out.row(r) = a.row(r) * s;
  }
}

}  // namespace ttx::kernel
