// FlashNorm FFN (SPEC.md §2): an FFN after an RMSNorm whose gain was folded into its input
// projection(s), with the scalar s = 1/RMS(a) deferred as far as the activation allows:
// - GLU, any activation: (act(s aW_g + b_g) ⊙ (s aW_u)) W_d = s ((act(s aW_g + b_g) ⊙ aW_u) W_d),
//   one scale on the gate input and one on the output (the up branch has none);
// - ReGLU / bilinear: the activation is positively homogeneous, so both scales move to the
//   output: s^2 ((act(aW_g) ⊙ aW_u) W_d);
// - ReLU MLP: relu(s aW_in) W_out = s (relu(aW_in) W_out);
// - other MLPs (GELU): act(s aW_in + b_in) W_out, the scale applied in the first epilogue;
// then + b_out. Exact for s > 0 (always: s = 1/sqrt(. + eps)).
#pragma once

#include "ttx/core/activation.hpp"
#include "ttx/core/weights.hpp"
#include "ttx/kernel/flashnorm.hpp"

namespace ttx::kernel {

/// Runs the FFN on n tokens a (n x d, accum_t<T>) with the deferred scale; writes out (n x d).
/// `w` holds folded weights (rewrite::fold_norm_into_ffn): w_in (d x f, the GLU gate), w_up
/// (d x f, GLU only), w_out (f x d), row-major, storage T. Preconditions (checked): the up-branch
/// bias b_up must be empty (it would need the scale on the up branch), and for ReLU MLP / ReGLU /
/// bilinear b_in must be empty (a bias breaks positive homogeneity). Allocates n x f scratch.
/// Example: `kernel::flashnorm_ffn<bf16>(x, ffn_bf16, FfnSpec::swiglu(), {1e-6}, y);`
template <class T>
void flashnorm_ffn(const Eigen::Ref<const RowMatrix<accum_t<T>>>& a, const FfnWeights<T>& w,
                   const FfnSpec& spec, const DeferredRms& rms,
                   Eigen::Ref<RowMatrix<accum_t<T>>> out) {
  using A = accum_t<T>;
  const char* fn = "kernel::flashnorm_ffn";
  const Index n = a.rows(), d = a.cols(), f = w.w_in.cols();
  detail::check_shape(fn, "w.w_in", w.w_in, d, f);
  detail::check_shape(fn, "w.w_out", w.w_out, f, d);
  detail::check_shape(fn, "out", out, n, d);
  if (w.b_in.size()) detail::check_dim(fn, "w.b_in.size()", f, w.b_in.size());
  if (w.b_out.size()) detail::check_dim(fn, "w.b_out.size()", d, w.b_out.size());
  const bool glu = spec.kind == FfnKind::glu;
  const bool homogeneous = spec.act == Activation::relu || spec.act == Activation::identity;
  if (glu) {
    detail::check_shape(fn, "w.w_up", w.w_up, d, f);
    detail::require(w.b_up.size() == 0, ErrorKind::unsupported, fn,
                    "w.b_up expected empty (an up-branch bias does not commute with "
                    "the deferred 1/RMS), got ",
                    w.b_up.size(), " values");
  }
  if (homogeneous)
    detail::require(w.b_in.size() == 0, ErrorKind::unsupported, fn,
                    "w.b_in expected empty for a positively homogeneous activation "
                    "(the whole scale is deferred to the output), got ",
                    w.b_in.size(), " values");
  if (n == 0) return;
  const RowVector<A> none;
  const RowVector<A> b_in = w.b_in.template cast<A>();
  const RowVector<A> b_out = w.b_out.template cast<A>();
  RowMatrix<A> H(n, f);
  RowVector<A> s(n);
  // Gate / MLP input: scaled in its epilogue unless the activation lets the scale move on.
  if (homogeneous) {
    // The product reports the per-row scalars (same pass over a) but leaves aW_in unscaled.
    flashnorm_detail::product<T>(fn, a, w.w_in, none, &rms, H, s.data(), /*apply_scale=*/false);
  } else {
    flashnorm_linear<T>(a, w.w_in, b_in, rms, H, s);
  }
  H = H.unaryExpr([&](A v) { return activate(spec.act, v); });
  if (glu) {
    RowMatrix<A> U(n, f);
    linear_unscaled<T>(a, w.w_up, none, U);
    H.array() *= U.array();
  }
  linear_unscaled<T>(H, w.w_out, none, out);
  for (Index r = 0; r < n; ++r) {
    const A post = !glu && !homogeneous ? A(1) : (glu && homogeneous ? s(r) * s(r) : s(r));
    out.row(r) *= post;
    if (b_out.size()) out.row(r) += b_out;
  }
}

}  // namespace ttx::kernel
