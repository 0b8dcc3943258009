// flashnorm_fold_fused_linear: FlashNorm for the RMSNorm in front of attention.
//
// Vanilla:   xn = x / RMS(x) ⊙ g,   q = xn W_Q,  k = xn W_K,  v = xn W_V
// FlashNorm: fold the gain into the weights once at load time (W* = diag(g) W), then run
//            q = (x W_Q*) · 1/RMS(x): the scalar is formed from sum(x^2) in the same pass over x
//            as the product, so the normalized vector xn is never written.
// One token (GEMV) and a prefill batch (GEMM), Llama-3-like GQA proportions at a small size.
#include <cmath>
#include <cstdio>
#include <random>
#include <ttx/kernel/flashnorm.hpp>
#include <ttx/rewrite/flashnorm.hpp>
#include "random_weights.hpp"

using namespace ttx;

int main() {
  const AttentionShape shape{512, 8, 2, 64};  // d, heads, kv_heads, head_dim: Q 512, K/V 128 wide
  const Index d = shape.d, batch = 16;
  const NormSpec spec = NormSpec::rms(1e-6);  // Llama: plain gain (Gemma: GainConvention::one_plus)

  example::RandomWeights random(7);
  const float ws = 1.f / std::sqrt(float(d));
  NormWeights<float> norm;
  norm.gain = RowVector<float>(random(1, d, 0.1f).array() + 1.f);  // trained-like gains, 1 ± 0.1
  AttentionWeights<float> w;
  w.wq = random(d, shape.q_width(), ws);
  w.wk = random(d, shape.kv_width(), ws);
  w.wv = random(d, shape.kv_width(), ws);
  w.wo = random(shape.q_width(), d, ws);

  // Offline, once: the gain goes into W_Q, W_K and W_V (W_O is untouched). Computed in double.
  const AttentionWeights<float> folded = rewrite::fold_norm_into_attention(spec, norm, w);
  const kernel::DeferredRms rms{spec.eps, /*divide_by_n=*/true};

  const RowMatrix<float> X = random(batch, d, 1.f);  // residual-stream rows (token 0 = decode)
  double max_dev = 0, bound = 0;
  for (const Index rows : {Index(1), batch}) {  // one decode token, then a prefill batch
    const auto x = X.topRows(rows);
    RowMatrix<float> xn(rows, d);
    kernel::rms_normalize<float>(x, norm.gain, spec.eps, xn);  // the vanilla norm
    const RowMatrix<float>* Ws[] = {&w.wq, &w.wk, &w.wv};
    const RowMatrix<float>* Fs[] = {&folded.wq, &folded.wk, &folded.wv};
    for (int p = 0; p < 3; ++p) {
      const Index out = Ws[p]->cols();
      RowMatrix<float> vanilla(rows, out), flash(rows, out);
      kernel::linear_unscaled<float>(xn, *Ws[p], RowVector<float>(), vanilla);
      kernel::flashnorm_linear<float>(x, *Fs[p], RowVector<float>(), rms, flash);
      max_dev = std::max(max_dev, double((flash - vanilla).cwiseAbs().maxCoeff()));
      // Bound (Higham, Thm 3.1, worst case): each path returns the exact sum_i xn_i W_ij with
      // every term perturbed by at most d·u (a d-term dot product) + d/2·u (1/RMS from a d-term
      // sum of squares) + 8u (gain product or fold, sqrt, scale); two paths: twice that, times
      // sum_i |xn_i W_ij|, evaluated in double. A gain applied twice or not at all is O(0.1 |y|),
      // far above it (a wrong eps is not: at RMS ~ 1 it moves y by ~eps, below any float bound).
      const double gamma = (1.5 * double(d) + 8) * unit_roundoff<float>();
      const RowMatrix<double> mag = xn.cast<double>().cwiseAbs() * Ws[p]->cast<double>().cwiseAbs();
      bound = std::max(bound, 2 * gamma * mag.maxCoeff());
    }
    std::printf("%-16s Q/K/V for %2ld token(s): max |flashnorm - vanilla| so far %.3g\n",
                rows == 1 ? "decode (GEMV)" : "prefill (GEMM)", long(rows), max_dev);
  }

  const bool ok = max_dev <= bound;
  std::printf("max |flashnorm - vanilla| = %.3g (within bound %.3g): %s\n", max_dev, bound,
              ok ? "OK" : "FAILED");
  std::printf("the normalized activations xn (%ld floats per token) are never materialized\n",
              long(d));
  return ok ? 0 : 1;
}
