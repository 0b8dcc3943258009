// FlashNorm, offline part (SPEC.md §2): fold norm gains (and LayerNorm biases) into the next
// linear layers, centre a residual stream so every LayerNorm becomes an RMSNorm, fold sqrt(n)
// into the gain, check and apply norm cancellation, and fold shared QK-norm gains into RoPE
// tables. Every transform is computed in double and rounded once to the storage type T; the norm's
// gain convention always comes from the NormSpec (GainConvention), never guessed.
//
// Identities (row vectors, W in x out):
//   RMSNorm(a) W + c = (a / RMS(a)) W* + c,             W* = diag(g) W   (diag(1+g): Gemma)
//   LayerNorm(a) W + c = ((a-mean)/sigma) W* + c*,      c* = c + beta W
//   RMS(a) = sqrt(sum a^2 + n eps) / sqrt(n)            (fold sqrt(n) into W*: no 1/n at runtime)
//   centred writers: if every row of the residual stream is zero-mean, LayerNorm == RMSNorm (same
//   eps), and a linear layer's output y = xV + b is zero-mean for every x iff each row of V and b
//   is zero-mean: V* = V - rowmean(V), b* = b - mean(b).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

namespace ttx::rewrite {

/// Options for gain folding.
struct FoldOptions {
  /// Fold sqrt(n) into W* so the runtime forms 1/sqrt(sum a^2 + n eps) (no division by n);
  /// the result's `divide_by_n` is then false.
  bool fold_sqrt_n = false;
};

/// A linear layer with a norm folded in: run it as out = (a W*) / RMS(a) + b, e.g. with
/// kernel::flashnorm_linear and kernel::DeferredRms{eps, divide_by_n}.
template <class T>
struct FoldedLinear {
  RowMatrix<T> w;  ///< in x out: diag(gain) W (times sqrt(in) when fold_sqrt_n)
  RowVector<T> b;  ///< c + beta W, or empty when the layer and the norm have no bias
  double eps = 0;
  bool divide_by_n = true;
  /// LayerNorm: the input must be zero-mean for the RMS form to be the norm (centre the layer
  /// that writes it: center_output / center_residual_writers), otherwise centre at runtime.
  bool needs_centered_input = false;
};

/// The applied gain in double: g (GainConvention::plain) or 1 + g (one_plus), formed in double.
template <class D>
RowVector<double> applied_gain(const NormSpec& spec, const Eigen::MatrixBase<D>& gain) {
  RowVector<double> g = gain.template cast<double>();
  if (spec.gain == GainConvention::one_plus) g.array() += 1.0;
  return g;
}

namespace flashnorm_detail {

inline void check_spec(const char* fn, const NormSpec& spec) {
  detail::require(spec.eps >= 0 && std::isfinite(spec.eps), ErrorKind::shape, fn,
                  "spec.eps expected finite and >= 0, got ", spec.eps);
}

template <class T>
void check_norm(const char* fn, const NormSpec& spec, const NormWeights<T>& norm, Index n) {
  check_spec(fn, spec);
  detail::check_dim(fn, "norm.gain.size() (= W.rows(), the input width)", n, norm.gain.size());
  if (norm.beta.size() != 0) {
    detail::require(spec.kind == NormKind::layer, ErrorKind::shape, fn,
                    "norm.beta expected empty for an RMSNorm, got ", norm.beta.size(), " values");
    detail::check_dim(fn, "norm.beta.size()", n, norm.beta.size());
  }
}

template <class T>
RowVector<T> empty_or_cast(const RowVector<double>& v, bool keep) {
  return keep ? RowVector<T>(v.template cast<T>()) : RowVector<T>();
}

}  // namespace flashnorm_detail

/// Folds the norm (gain, and a LayerNorm's beta) into the linear layer that reads it:
/// W* = diag(g) W (g or 1+g per spec.gain, times sqrt(in) with fold_sqrt_n), b* = b + beta W.
///   norm: gain (in), beta (in, LayerNorm only, may be empty)
///   w:    in x out (ttx layout; pass from_pytorch(...) for PyTorch's out x in, no copy). For a
///         fused QKV or gate_up projection pass the fused matrix: the gain scales its rows.
///   bias: out or empty
/// Example: `auto q = rewrite::fold_norm(NormSpec::rms(1e-6), n1, Wq);`
template <class T, class DW>
FoldedLinear<T> fold_norm(const NormSpec& spec, const NormWeights<T>& norm,
                          const Eigen::MatrixBase<DW>& w, const RowVector<T>& bias = RowVector<T>(),
                          const FoldOptions& opt = {}) {
  const char* fn = "rewrite::fold_norm";
  flashnorm_detail::check_norm(fn, spec, norm, w.rows());
  if (bias.size() != 0) detail::check_dim(fn, "bias.size() (= W.cols())", w.cols(), bias.size());
  const RowMatrix<double> W = w.template cast<double>();
  RowVector<double> g = applied_gain(spec, norm.gain);
  if (opt.fold_sqrt_n) g *= std::sqrt(static_cast<double>(w.rows()));
  FoldedLinear<T> r;
  r.w = (g.transpose().asDiagonal() * W).template cast<T>();
  const bool has_beta = norm.beta.size() != 0;
  RowVector<double> b = bias.size() ? RowVector<double>(bias.template cast<double>())
                                    : RowVector<double>::Zero(w.cols());
  if (has_beta) b.noalias() += norm.beta.template cast<double>() * W;
  r.b = flashnorm_detail::empty_or_cast<T>(b, has_beta || bias.size() != 0);
  r.eps = spec.eps;
  r.divide_by_n = !opt.fold_sqrt_n;
  r.needs_centered_input = spec.kind == NormKind::layer;
  return r;
}

/// Folds norm1 into the Q, K and V projections of one attention layer (and beta into bq, bk,
/// bv); W_O and b_O are copied unchanged. The runtime normalizes with 1/RMS (see FoldedLinear).
template <class T>
AttentionWeights<T> fold_norm_into_attention(const NormSpec& spec, const NormWeights<T>& norm,
                                             const AttentionWeights<T>& w,
                                             const FoldOptions& opt = {}) {
  AttentionWeights<T> r = w;
  auto q = fold_norm(spec, norm, w.wq, w.bq, opt);
  auto k = fold_norm(spec, norm, w.wk, w.bk, opt);
  auto v = fold_norm(spec, norm, w.wv, w.bv, opt);
  r.wq = std::move(q.w);
  r.bq = std::move(q.b);
  r.wk = std::move(k.w);
  r.bk = std::move(k.b);
  r.wv = std::move(v.w);
  r.bv = std::move(v.b);
  return r;
}

/// Folds norm2 into the FFN's input projection(s): w_in (MLP input or GLU gate) and, for a GLU,
/// w_up (and beta into b_in, b_up). w_out and b_out are copied unchanged.
template <class T>
FfnWeights<T> fold_norm_into_ffn(const NormSpec& spec, const NormWeights<T>& norm,
                                 const FfnWeights<T>& w, const FfnSpec& ffn,
                                 const FoldOptions& opt = {}) {
  FfnWeights<T> r = w;
  auto in = fold_norm(spec, norm, w.w_in, w.b_in, opt);
  r.w_in = std::move(in.w);
  r.b_in = std::move(in.b);
  if (ffn.kind == FfnKind::glu) {
    auto up = fold_norm(spec, norm, w.w_up, w.b_up, opt);
    r.w_up = std::move(up.w);
    r.b_up = std::move(up.b);
  }
  return r;
}

/// Whether the LM head shares its matrix with the token embedding.
enum class HeadTying { untied, tied };

/// Folds the final norm into an untied LM head (d x vocab). A tied head is refused
/// (UnsupportedError): the embedding rows would be scaled too. Also refused when `lm_head`
/// is bitwise the transpose of `embedding` (vocab x d, optional: pass an empty matrix to skip the
/// check), i.e. tied in fact though declared untied.
template <class T, class DH>
FoldedLinear<T> fold_final_norm(const NormSpec& spec, const NormWeights<T>& norm,
                                const Eigen::MatrixBase<DH>& lm_head, HeadTying tying,
                                const RowMatrix<T>& embedding = RowMatrix<T>(),
                                const FoldOptions& opt = {}) {
  const char* fn = "rewrite::fold_final_norm";
  detail::require(tying == HeadTying::untied, ErrorKind::unsupported, fn,
                  "lm_head expected untied, got tied (folding the final norm into a tied head "
                  "would scale the token embedding too: untie it first)");
  if (embedding.size() != 0 && embedding.rows() == lm_head.cols() &&
      embedding.cols() == lm_head.rows())
    detail::require(!(embedding.transpose() == lm_head), ErrorKind::unsupported, fn,
                    "lm_head expected untied, got a matrix equal to embedding^T (tied in fact)");
  return fold_norm(spec, norm, lm_head, RowVector<T>(), opt);
}

// ---------------------------------------------------------------------------------------------
// Mean-centering folded into the writers of a LayerNorm's input.

/// A linear layer whose output is zero-mean for every input: V* = V - rowmean(V) (each row of
/// V (in x out) minus its mean over the out dimension), b* = b - mean(b). Exact only where this
/// layer's output is the norm's whole input (or every writer of a residual stream is centred).
template <class T>
struct CenteredLinear {
  RowMatrix<T> w;
  RowVector<T> b;  ///< empty when the input bias was empty
};

template <class T, class DW>
CenteredLinear<T> center_output(const Eigen::MatrixBase<DW>& w,
                                const RowVector<T>& bias = RowVector<T>()) {
  const char* fn = "rewrite::center_output";
  if (bias.size() != 0) detail::check_dim(fn, "bias.size() (= W.cols())", w.cols(), bias.size());
  detail::require(w.cols() > 0, ErrorKind::shape, fn, "W.cols() expected > 0, got 0");
  RowMatrix<double> W = w.template cast<double>();
  W.colwise() -= W.rowwise().mean();
  CenteredLinear<T> r;
  r.w = W.template cast<T>();
  if (bias.size() != 0) {
    RowVector<double> b = bias.template cast<double>();
    b.array() -= b.mean();
    r.b = b.template cast<T>();
  }
  return r;
}

/// Centres every writer into the residual stream: token embeddings, learned positions, every
/// attention output projection (wo, bo) and FFN down projection (w_out, b_out). Afterwards each
/// row of the stream is zero-mean, so every LayerNorm reading it equals an RMSNorm with the same
/// eps. Condition (checked from the config, UnsupportedError otherwise): pre-norm blocks (serial
/// or parallel) whose every norm is a LayerNorm, and a final LayerNorm — the stream's only readers
/// must be LayerNorms, which ignore its mean. A tied LM head must keep the uncentred embedding
/// (ModelWeights stores the head separately, so it is left as it is).
template <class T>
ModelWeights<T> center_residual_writers(const ModelConfig& cfg, const ModelWeights<T>& w) {
  const char* fn = "rewrite::center_residual_writers";
  detail::require(cfg.block.kind == BlockKind::serial || cfg.block.kind == BlockKind::parallel,
                  ErrorKind::unsupported, fn,
                  "block.kind expected serial or parallel (a residual stream read through norms), "
                  "got a skipless block");
  detail::require(cfg.block.norm.kind == NormKind::layer, ErrorKind::unsupported, fn,
                  "block.norm.kind expected LayerNorm (an RMSNorm reader sees the stream's mean), "
                  "got RMSNorm");
  detail::require(
      cfg.final_norm && cfg.final_norm_spec.kind == NormKind::layer, ErrorKind::unsupported, fn,
      "final norm expected a LayerNorm (the LM head must not read the raw stream), got " +
          std::string(cfg.final_norm ? "RMSNorm" : "none"));
  detail::check_dim(fn, "blocks.size()", cfg.layers, static_cast<Index>(w.blocks.size()));
  ModelWeights<T> r = w;
  auto center_rows = [](const RowMatrix<T>& m) {
    RowMatrix<double> x = m.template cast<double>();
    x.colwise() -= x.rowwise().mean();
    return RowMatrix<T>(x.template cast<T>());
  };
  r.embedding = center_rows(w.embedding);
  if (cfg.learned_positions) r.positions = center_rows(w.positions);
  for (auto& b : r.blocks) {
    auto o = center_output(b.attn.wo, b.attn.bo);
    b.attn.wo = std::move(o.w);
    b.attn.bo = std::move(o.b);
    auto d = center_output(b.ffn.w_out, b.ffn.b_out);
    b.ffn.w_out = std::move(d.w);
    b.ffn.b_out = std::move(d.b);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Whole model.

struct ModelFoldOptions {
  HeadTying head = HeadTying::untied;
};

/// A model whose norms are weightless: every block norm is an RMSNorm with gain 1 (plain
/// convention, no beta), so it runs on the ordinary reference machinery and gives the same tokens.
template <class T>
struct FoldedModel {
  ModelConfig config;
  ModelWeights<T> weights;
  bool centered = false;           ///< LayerNorm model: writers centred, LayerNorms -> RMSNorms
  bool final_norm_folded = false;  ///< final gain moved into lm_head (untied, no beta)
  std::string notes;               ///< what was left in place and why
};

/// Folds every norm of a pre-norm model (serial or parallel) into the layers that read it.
/// RMSNorm models (plain or 1+g gains): gains go into wq/wk/wv, w_in/w_up and (untied, always
/// for RMSNorm) lm_head. LayerNorm models: center_residual_writers first (its condition applies),
/// then each LayerNorm is an RMSNorm with the same eps; betas go into the biases. A final
/// LayerNorm's beta has nowhere to go (ModelWeights has no LM-head bias), so such a final norm
/// keeps its gain and beta as an RMSNorm; so does any final norm before a tied head.
template <class T>
FoldedModel<T> fold_model(const ModelConfig& cfg, const ModelWeights<T>& w,
                          const ModelFoldOptions& opt = {}) {
  const char* fn = "rewrite::fold_model";
  detail::require(cfg.block.kind == BlockKind::serial || cfg.block.kind == BlockKind::parallel,
                  ErrorKind::unsupported, fn,
                  "block.kind expected serial or parallel, got a skipless block (no norms)");
  detail::check_dim(fn, "blocks.size()", cfg.layers, static_cast<Index>(w.blocks.size()));
  FoldedModel<T> r;
  r.config = cfg;
  const bool layer = cfg.block.norm.kind == NormKind::layer;
  r.weights = layer ? center_residual_writers(cfg, w) : w;
  r.centered = layer;
  const Index d = cfg.block.attn.shape.d;
  // After centring, a LayerNorm acts as an RMSNorm of the same eps; its gain/beta fold as usual.
  NormSpec fold_spec = cfg.block.norm;
  const NormSpec ones = NormSpec::rms(cfg.block.norm.eps, GainConvention::plain);
  NormWeights<T> unit;
  unit.gain = RowVector<T>::Ones(d);
  for (auto& b : r.weights.blocks) {
    b.attn = fold_norm_into_attention(fold_spec, b.norm1, b.attn);
    b.ffn = fold_norm_into_ffn(fold_spec, b.norm2, b.ffn, cfg.block.ffn);
    b.norm1 = unit;
    b.norm2 = unit;
  }
  r.config.block.norm = ones;
  if (cfg.final_norm) {
    const NormSpec& fs = cfg.final_norm_spec;
    r.config.final_norm_spec = NormSpec::rms(fs.eps, fs.gain);
    if (opt.head == HeadTying::untied && w.final_norm.beta.size() == 0) {
      r.weights.lm_head = fold_final_norm(fs, w.final_norm, w.lm_head, HeadTying::untied).w;
      r.weights.final_norm = unit;
      r.config.final_norm_spec = NormSpec::rms(fs.eps, GainConvention::plain);
      r.final_norm_folded = true;
    } else {
      r.notes = opt.head == HeadTying::tied
                    ? "final norm kept (tied LM head)"
                    : "final norm kept as an RMSNorm with gain and beta (no LM-head bias to take "
                      "beta W)";
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Norm cancellation: RMSNorm -> bias-free linear -> RMSNorm.

/// Describes one attention input: a first norm, then the Q, K, V projections, each possibly
/// followed by its own per-head norm (QK-norm, QKV-norm).
struct CancellationSite {
  NormSpec input_norm = NormSpec::rms();
  bool q_norm = false, k_norm = false, v_norm = false;  ///< per-head norm right after projection
  bool q_bias = false, k_bias = false, v_bias = false;  ///< projection biases (before that norm)
  /// The normed input is also read by a path with no second norm (e.g. a parallel FFN, or an MLA
  /// latent consumer without a latent norm).
  bool other_readers = false;
};

/// Which paths may drop the first norm's 1/RMS(a) and why the others may not.
struct CancellationCheck {
  bool drop_q = false, drop_k = false, drop_v = false;
  bool norm_removed = false;         ///< no reader needs 1/RMS(a) at all: skip its sum of squares
  std::vector<std::string> reasons;  ///< one sentence per path or condition that is not eligible
  bool any() const { return drop_q || drop_k || drop_v; }
  std::string explain() const {
    std::string s;
    for (const auto& r : reasons) s += (s.empty() ? "" : "; ") + r;
    return s;
  }
};

/// RMSNorm2(s · y) = RMSNorm2(y) for a scalar s > 0 without eps, so a path "first RMSNorm ->
/// bias-free projection -> its own RMSNorm" may drop s = 1/RMS(a) (fold the first gain into W).
/// Not eligible: a bias on the projection (norm(s y + b) != norm(y + b)), a path without a second
/// norm, a LayerNorm first norm (its centring does not cancel; only RMSNorm is supported here).
/// QK-norm only (no V norm): the scalar is dropped on Q and K and kept on V.
inline CancellationCheck check_norm_cancellation(const CancellationSite& s) {
  CancellationCheck c;
  if (s.input_norm.kind != NormKind::rms) {
    c.reasons.push_back("the first norm is a LayerNorm: its mean-centering does not cancel");
    return c;
  }
  auto path = [&](const char* name, bool has_norm, bool has_bias, bool& drop) {
    if (!has_norm)
      c.reasons.push_back(detail::concat(name, " path bypasses the second norm (no ", name,
                                         "-norm): it keeps 1/RMS(a)"));
    else if (has_bias)
      c.reasons.push_back(detail::concat(name,
                                         " projection has a bias: norm(s*y + b) != "
                                         "norm(y + b), it keeps 1/RMS(a)"));
    else
      drop = true;
  };
  path("Q", s.q_norm, s.q_bias, c.drop_q);
  path("K", s.k_norm, s.k_bias, c.drop_k);
  path("V", s.v_norm, s.v_bias, c.drop_v);
  if (c.drop_q && c.drop_k && !s.v_norm)
    c.reasons.push_back("QK-norm only: the scalar is dropped on Q and K and kept on V");
  if (s.other_readers)
    c.reasons.push_back(
        "another reader of the normed input bypasses the second norm: 1/RMS(a) is still needed");
  c.norm_removed = c.drop_q && c.drop_k && c.drop_v && !s.other_readers;
  return c;
}

/// Projections after cancellation: the first norm's gain folded into each (W* = diag(g) W); run
/// the paths with drop_* on the raw input a (no 1/RMS(a)), the others with it.
template <class T>
struct CancelledProjections {
  RowMatrix<T> wq, wk, wv;
  CancellationCheck check;
};

/// Applies norm cancellation to one site (see check_norm_cancellation). Throws UnsupportedError
/// naming the reasons when no path is eligible. wq: d x e_q, wk, wv: d x e.
template <class T>
CancelledProjections<T> cancel_norm(const CancellationSite& site, const NormWeights<T>& first,
                                    const RowMatrix<T>& wq, const RowMatrix<T>& wk,
                                    const RowMatrix<T>& wv) {
  const char* fn = "rewrite::cancel_norm";
  CancelledProjections<T> r;
  r.check = check_norm_cancellation(site);
  detail::require(r.check.any(), ErrorKind::unsupported, fn,
                  "site expected at least one eligible path, got none: " + r.check.explain());
  detail::check_dim(fn, "wk.rows() (= wq.rows())", wq.rows(), wk.rows());
  detail::check_dim(fn, "wv.rows() (= wq.rows())", wq.rows(), wv.rows());
  r.wq = fold_norm(site.input_norm, first, wq).w;
  r.wk = fold_norm(site.input_norm, first, wk).w;
  r.wv = fold_norm(site.input_norm, first, wv).w;
  return r;
}

/// The error of dropping s = 1/RMS1(a) before a second RMSNorm with eps2 > 0. With y_hat the
/// vanilla input of the second norm (the normed a times W*), m = mean(y_hat^2) over the normed
/// group (one head) and R = RMS1(a) (including eps1), the cancelled output is the vanilla one
/// times sqrt(1 + r), r = eps2 (1 - 1/R^2) / (m + eps2/R^2): the relative error is exactly
/// |sqrt(1 + r) - 1| (uniform over the group) and at most r/2 for r >= 0 (R >= 1), |r| for r < 0.
/// So it is about eps2 / (2 RMS(y_hat)^2): eps times a modest factor.
struct CancellationError {
  double exact = 0;  ///< |sqrt(1 + r) - 1|
  double bound = 0;  ///< r/2 (r >= 0) or |r| (r < 0)
};
inline CancellationError cancellation_error(double eps2, double rms1, double mean_sq_yhat) {
  const double inv_r2 = 1.0 / (rms1 * rms1);
  const double r = eps2 * (1.0 - inv_r2) / (mean_sq_yhat + eps2 * inv_r2);
  return {std::abs(std::sqrt(1.0 + r) - 1.0), r >= 0 ? r / 2 : -r};
}

// ---------------------------------------------------------------------------------------------
// QK-norm gains into the RoPE tables.

/// A QK-norm gain (head_dim values, shared by all heads) as the RoPE table sees it: per pair j
/// with dims (p, q) = rope.pair(j), gain_p[j] = g_p and gain_q[j] = g_q; `pass` for the
/// non-rotated dims rotary_dim..head_dim-1. Feed the three vectors to kernel::build_rope_table /
/// kernel::rope_scaled: the table entry becomes s R(m theta) diag(g_p, g_q), which is exact. It
/// is a (scaled) rotation only when g_p = g_q for every pair (`pairs_equal`); otherwise the table
/// needs four entries per pair instead of two. Not foldable into one shared table: per-head
/// gains (one table per head would be needed), and the per-head 1/RMS of the QK-norm itself.
struct QkGainRope {
  std::vector<double> gain_p, gain_q, pass;
  bool pairs_equal = true;
};

template <class D>
QkGainRope fold_qk_gain_into_rope(const RopeSpec& rope, Index head_dim, const NormSpec& qk_norm,
                                  const Eigen::MatrixBase<D>& gain) {
  const char* fn = "rewrite::fold_qk_gain_into_rope";
  rope.validate(fn, head_dim);
  detail::check_dim(fn, "gain.size() (= head_dim, one gain shared by all heads)", head_dim,
                    gain.size());
  const RowVector<double> g = applied_gain(qk_norm, gain);
  QkGainRope r;
  for (Index j = 0; j < rope.pairs(); ++j) {
    const auto [p, q] = rope.pair(j);
    r.gain_p.push_back(g(p));
    r.gain_q.push_back(g(q));
    r.pairs_equal = r.pairs_equal && g(p) == g(q);
  }
  for (Index i = rope.rotary_dim; i < head_dim; ++i) r.pass.push_back(g(i));
  return r;
}

}  // namespace ttx::rewrite
