// Slim attention (SPEC.md §1), offline part: from a self-attention layer's weights, the weights of
// an exact rewrite that caches one row per token instead of a key and a value row.
//
//   CacheForm::keys    cache K (or K* = X [W_K | W_extra]); V = K W_KV with W_KV = W_K^{-1} W_V.
//   CacheForm::values  cache V (or V*);                      K = V W_VK with W_VK = W_V^{-1} W_K.
//   CacheForm::inputs  cache the layer input X;              scores q_i W_K,i^T X^T, head (s X)
//   W_V,i.
//
// How the inverse is formed depends on the shape (e = h_kv * d_k, d the model width):
//   e == d        square: LU solve W_K W_KV = W_V in double (ttx::solve, never an explicit
//   inverse). e >  d        right inverse W_K^+ = W_K^T (W_K W_K^T)^{-1}, formed as Q R^{-T} from
//   W_K^T = Q R
//                 (same matrix, without squaring the condition number); W_KV = W_K^+ W_V is e x e.
//   d/2 < e < d   completion W_K* = [W_K | W_extra] (d x d), W_extra an orthonormal basis of the
//                 complement of W_K's column space (from a QR of W_K) scaled to W_K's RMS column
//                 norm; the cache holds K* (width d), K is its first e columns, V = K* W_K*^{-1}
//                 W_V.
//   e <= d/2      no K- or V-only cache is smaller than the vanilla one: UnsupportedError.
//
// Biases fold exactly: V = (K - b_K) W_KV + b_V, and the constant row passes through softmax
// (rows sum to 1) into the output bias, c* = c + (b_V - b_K W_KV) W_O. Without RoPE b_K also leaves
// the cache (it shifts all of a query's scores equally); with RoPE the cached keys keep b_K (the
// rotation of b_K depends on the key position), and the fold uses b_V - b_K W_KV. The query bias
// stays. Everything is computed in double and stored at the requested precision, with a report.
#pragma once

#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/linalg.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

namespace ttx::rewrite {

/// What one cached row per token holds.
enum class CacheForm {
  keys,    ///< the keys (K-cache); values are recomputed from them through W_KV
  values,  ///< the values (V-cache); keys are recomputed through W_VK (no RoPE)
  inputs   ///< the layer input X (X-cache); no inverse at all (no RoPE)
};

/// How the cached basis was obtained for the layer's shape.
enum class Basis {
  square,         ///< e == d: W_K itself is inverted
  right_inverse,  ///< e > d: W_K^+ = W_K^T (W_K W_K^T)^{-1}
  completed,      ///< d/2 < e < d: W_K* = [W_K | W_extra] is inverted
  identity        ///< CacheForm::inputs: the cache holds X, nothing is inverted
};

inline const char* name(CacheForm f) {
  switch (f) {
    case CacheForm::keys:
      return "CacheForm::keys";
    case CacheForm::values:
      return "CacheForm::values";
    default:
      return "CacheForm::inputs";
  }
}
inline const char* name(Basis b) {
  switch (b) {
    case Basis::square:
      return "square";
    case Basis::right_inverse:
      return "right_inverse";
    case Basis::completed:
      return "completed";
    default:
      return "identity";
  }
}

/// Values per token each cache form stores for a shape (vanilla: 2e). keys/values: e when e >= d,
/// d otherwise (the completed basis); inputs: d.
inline Index cached_width(CacheForm form, const AttentionShape& s) {
  if (form == CacheForm::inputs) return s.d;
  return s.kv_width() >= s.d ? s.kv_width() : s.d;
}

struct SlimOptions {
  CacheForm form = CacheForm::keys;
  /// Flag (or, with `strict`, refuse) a basis whose estimated condition number exceeds this;
  /// 0 = no threshold. A singular basis is always an error.
  double max_condition = 0;
  /// Refuse with NumericalError instead of flagging: condition above `max_condition`, or a
  /// transformed weight that is not representable in the storage type.
  bool strict = false;
};

/// What the rewrite did and what it costs or saves.
struct SlimReport {
  CacheForm form = CacheForm::keys;
  Basis basis = Basis::square;
  std::string weight_type, cache_type;  ///< type_name of the stored weights and of the cache
  /// 1-norm condition estimate of the inverted matrix (W_K, W_K*, R of W_K^T = QR, or W_V ...);
  /// 1 for CacheForm::inputs.
  double cond_estimate = 1;
  double max_abs_transform = 0;  ///< max |W_KV| (keys) or max |W_VK| (values); 0 for inputs
  /// ||W_C M - W_target||_F / ||W_target||_F in double (W_K W_KV vs W_V for keys); 0 for inputs.
  double residual = 0;
  /// Expected growth of the relative error that rounding the cache (and the weights) puts into
  /// the recomputed V (keys) or K (values): ||W_C||_F ||M||_F / (sqrt(w) ||W_target||_F), for
  /// isotropic inputs. 1 = no amplification (inputs form). Scales roughly like sqrt(cond).
  double error_gain = 1;
  bool representable = true;     ///< every stored weight is finite in the weight type
  bool ill_conditioned = false;  ///< cond_estimate > options.max_condition (threshold set)
  Index cached_width = 0;        ///< values per token in the slim cache
  std::size_t bytes_per_token_before = 0;  ///< vanilla K and V rows, in the cache type
  std::size_t bytes_per_token_after = 0;   ///< the slim cache row, in the cache type
  long long bytes_per_token_saved = 0;     ///< before - after (negative: the form costs memory)
  std::string notes;                       ///< human-readable flags (empty when nothing to say)
};

/// The rewritten layer. Per token x (1 x d):
///   q = x wq + bq (rotated when rope is enabled), cached row c = x cache_proj + cache_bias
///   (c = x for CacheForm::inputs), C = all cached rows (n x w), G = group(i) = kv head of i.
///   keys:   s_i = softmax(scale q_i rot(C[:, G cols within first e])^T), head_i = (s_i C)
///   value_map[:, G] values: s_i = softmax(scale (q_i query_map[:, G]^T) C^T),            head_i =
///   (s_i C)[:, G] inputs: s_i = softmax(scale (q_i query_map[:, G]^T) C^T),            head_i =
///   (s_i C) value_map[:, G] y = concat(head_i) wo + bo (bo includes the folded constant).
/// All matrices are (in x out), row-major.
template <class T>
struct SlimAttention {
  CacheForm form = CacheForm::keys;
  Basis basis = Basis::square;
  AttentionShape shape;
  double scale = 0;  ///< effective score scale
  RopeSpec rope;
  std::vector<double> rope_freqs;  ///< rope.frequencies(), computed once
  Index cached_width = 0;          ///< w
  RowMatrix<T> wq;                 ///< d x e_q
  RowVector<T> bq;                 ///< e_q or empty
  RowMatrix<T> cache_proj;  ///< d x w: W_K, W_K*, W_V or W_V* (empty for inputs: the cache is X)
  RowVector<T> cache_bias;  ///< w or empty: b_K (padded with zeros) kept in the keys under RoPE
  RowMatrix<T> query_map;   ///< w x e: W_VK (values) or W_K (inputs); empty for keys
  RowMatrix<T> value_map;   ///< w x e: W_KV (keys) or W_V (inputs); empty for values
  RowMatrix<T> wo;          ///< e_q x d
  RowVector<T> bo;          ///< d or empty: c + (b_V - b_K W_KV) W_O, expanded to query heads
  SlimReport report;

  /// Throws ShapeError unless every matrix has the shape the form needs (cheap, O(1)).
  void validate(const char* fn) const {
    shape.validate(fn);
    const Index d = shape.d, e = shape.kv_width(), eq = shape.q_width(), w = cached_width;
    ttx::detail::check_dim(fn, "slim.cached_width", cached_width_for(), w);
    ttx::detail::check_shape(fn, "slim.wq", wq, d, eq);
    if (bq.size()) ttx::detail::check_dim(fn, "slim.bq.size()", eq, bq.size());
    ttx::detail::check_shape(fn, "slim.wo", wo, eq, d);
    if (bo.size()) ttx::detail::check_dim(fn, "slim.bo.size()", d, bo.size());
    if (form == CacheForm::inputs) {
      ttx::detail::check_shape(fn, "slim.query_map (W_K)", query_map, w, e);
      ttx::detail::check_shape(fn, "slim.value_map (W_V)", value_map, w, e);
    } else {
      ttx::detail::check_shape(fn, "slim.cache_proj", cache_proj, d, w);
      if (cache_bias.size())
        ttx::detail::check_dim(fn, "slim.cache_bias.size()", w, cache_bias.size());
      if (form == CacheForm::keys)
        ttx::detail::check_shape(fn, "slim.value_map (W_KV)", value_map, w, e);
      else
        ttx::detail::check_shape(fn, "slim.query_map (W_VK)", query_map, w, e);
    }
    rope.validate(fn, shape.head_dim);
    ttx::detail::require(!rope.enabled() || form == CacheForm::keys, ErrorKind::unsupported, fn,
                         "slim.rope expected disabled for ", name(form), ", got rotary_dim ",
                         rope.rotary_dim);
  }

 private:
  Index cached_width_for() const { return ttx::rewrite::cached_width(form, shape); }
};

namespace detail {

using ttx::detail::concat;

inline std::string forms_summary(const AttentionShape& s) {
  const Index e = s.kv_width(), d = s.d;
  auto one = [&](CacheForm f) {
    const Index w = cached_width(f, s);
    return concat(name(f), " ", w, " (", (w < 2 * e ? "saves memory" : "saves nothing"), ")");
  };
  return concat("values per token: vanilla K+V 2e = ", 2 * e, "; ", one(CacheForm::keys), "; ",
                one(CacheForm::values), "; ", one(CacheForm::inputs), " [d = ", d, ", e = ", e,
                "]");
}

/// Result of inverting the cached basis A (d x e) against the target B (d x e): M with
/// A* M = B, where A* is A, [A | W_extra] or (for e > d) A with its right inverse.
struct BasisSolve {
  Basis basis = Basis::square;
  Eigen::MatrixXd cache_proj;  ///< d x w
  Eigen::MatrixXd M;           ///< w x e
  double cond = 1, residual = 0;
};

inline BasisSolve solve_basis(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B,
                              const char* what) {
  const Index d = A.rows(), e = A.cols();
  BasisSolve r;
  SolveReport rep;
  if (e == d) {
    r.basis = Basis::square;
    r.cache_proj = A;
    r.M = ttx::solve(A, B, &rep, what);
  } else if (e > d) {
    // W^+ = W^T (W W^T)^{-1} = Q R^{-T} with W^T = Q R (Q e x d, R d x d): the same right inverse,
    // but the solve sees cond(W), not cond(W)^2.
    r.basis = Basis::right_inverse;
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(A.transpose());
    const Eigen::MatrixXd R = qr.matrixQR().topRows(d).triangularView<Eigen::Upper>();
    const Eigen::MatrixXd Q = qr.householderQ() * Eigen::MatrixXd::Identity(e, d);
    const std::string name_r = concat(what, " (rows, for its right inverse)");
    const RowMatrix<double> Z = ttx::solve(R.transpose(), B, &rep, name_r.c_str());
    r.cache_proj = A;
    r.M = Q * Z;
  } else {
    // Complete to a square basis; the complement is orthogonal to A's columns, so the singular
    // values of [A | c Q2] are those of A plus c (c = A's RMS column norm): cond stays cond(A).
    r.basis = Basis::completed;
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(A);
    // Only the last d - e columns of Q: the reflectors applied to [0; I], not all of Q.
    Eigen::MatrixXd Q2 = Eigen::MatrixXd::Zero(d, d - e);
    Q2.bottomRows(d - e).setIdentity();
    Q2.applyOnTheLeft(qr.householderQ());
    const double c = A.norm() / std::sqrt(static_cast<double>(e));
    r.cache_proj.resize(d, d);
    r.cache_proj << A, Q2 * (c > 0 ? c : 1.0);
    const std::string name_c = concat(what, "* = [", what, " | W_extra]");
    r.M = ttx::solve(r.cache_proj, B, &rep, name_c.c_str());
  }
  r.cond = rep.cond_estimate;
  if (r.basis == Basis::right_inverse) {  // rep.residual is R's; the claim is about W_K itself
    const double nb = B.norm();
    r.residual = (r.cache_proj * r.M - B).norm() / (nb > 0 ? nb : 1.0);
  } else {
    r.residual = rep.residual;  // ttx::solve's ||A M - B|| / ||B|| with A = W_K or W_K*
  }
  return r;
}

template <class T>
bool representable(const Eigen::MatrixXd& m) {
  const double top = max_finite<T>();
  for (Index i = 0; i < m.size(); ++i)
    if (!(std::abs(m.data()[i]) <= top)) return false;
  return true;
}

template <class T>
RowMatrix<T> store(const Eigen::MatrixXd& m) {
  return m.cast<T>();
}
template <class T>
RowVector<T> store_row(const Eigen::RowVectorXd& v) {
  return v.cast<T>();
}

}  // namespace detail

/// Rewrites one self-attention layer for a one-row-per-token cache (SPEC.md §1).
///   keys:   V = K W_KV + (b_V - b_K W_KV), W_KV = W_K^{-1} W_V (or the right-inverse / completed
///           basis, see the file comment); values: K = V W_VK + const, W_VK = W_V^{-1} W_K;
///   inputs: q_i K_i^T = (q_i W_K,i^T) X^T + const, V_i = X W_V,i + b_V,i.
/// `w`: projections in (in x out) layout (wq d x e_q, wk/wv d x e, wo e_q x d), optional biases,
/// any scalar; `cfg`: shape, scale, RoPE. T is the stored weight type, CacheT the cache's storage
/// type (only used for the byte accounting). Computes in double. Errors: ShapeError (weights vs
/// shape), UnsupportedError (RoPE with values/inputs; e <= d/2 for keys/values), NumericalError
/// (singular basis; in strict mode also a condition above the threshold or an unrepresentable
/// weight).
///   auto slim = ttx::rewrite::slim_attention<float>(w, cfg);        // K-cache, W_KV in float
///   if (slim.report.ill_conditioned) ...;                            // with options.max_condition
///   ttx::KCache<bf16> cache(cfg.shape, 4096, ttx::KeyStorage::raw, slim.cached_width);
template <class T = float, class CacheT = T, class S>
SlimAttention<T> slim_attention(const AttentionWeights<S>& w, const AttentionConfig& cfg,
                                const SlimOptions& opt = {}) {
  const char* fn = "rewrite::slim_attention";
  static_assert(is_storage_type_v<T> && is_storage_type_v<CacheT>,
                "slim_attention stores float, double, Eigen::bfloat16 or Eigen::half");
  const AttentionShape& s = cfg.shape;
  s.validate(fn);
  const Index d = s.d, e = s.kv_width(), eq = s.q_width(), dk = s.head_dim;
  ttx::detail::check_shape(fn, "w.wq", w.wq, d, eq);
  ttx::detail::check_shape(fn, "w.wk", w.wk, d, e);
  ttx::detail::check_shape(fn, "w.wv", w.wv, d, e);
  ttx::detail::check_shape(fn, "w.wo", w.wo, eq, d);
  if (w.bq.size()) ttx::detail::check_dim(fn, "w.bq.size()", eq, w.bq.size());
  if (w.bk.size()) ttx::detail::check_dim(fn, "w.bk.size()", e, w.bk.size());
  if (w.bv.size()) ttx::detail::check_dim(fn, "w.bv.size()", e, w.bv.size());
  if (w.bo.size()) ttx::detail::check_dim(fn, "w.bo.size()", d, w.bo.size());
  cfg.rope.validate(fn, dk);
  ttx::detail::require(opt.max_condition >= 0, ErrorKind::shape, fn,
                       "options.max_condition expected >= 0, got ", opt.max_condition);
  if (cfg.rope.enabled() && opt.form != CacheForm::keys)
    ttx::detail::raise(
        ErrorKind::unsupported,
        ttx::detail::concat(
            "ttx::", fn, ": ", name(opt.form),
            " does not support RoPE (rope.rotary_dim = ", cfg.rope.rotary_dim,
            "): the keys are rotated after the projection at each key's own position, so "
            "they cannot be recovered from cached ",
            opt.form == CacheForm::values ? "values" : "inputs",
            " through a fixed matrix; use CacheForm::keys"));
  if (opt.form != CacheForm::inputs && 2 * e <= d)
    ttx::detail::raise(
        ErrorKind::unsupported,
        ttx::detail::concat("ttx::", fn, ": no ", name(opt.form),
                            " compression exists for this shape: e = kv_heads*head_dim = ", e,
                            " <= d/2 = ", d / 2.0, ", so a one-row cache would need width d = ", d,
                            " >= 2e = ", 2 * e, " (the vanilla K+V width). ",
                            detail::forms_summary(s), ". Keep the vanilla KV cache."));

  SlimAttention<T> out;
  out.form = opt.form;
  out.shape = s;
  out.scale = cfg.effective_scale();
  out.rope = cfg.rope;
  if (cfg.rope.enabled()) out.rope_freqs = cfg.rope.frequencies();
  out.cached_width = cached_width(opt.form, s);
  const Index cw = out.cached_width;

  const Eigen::MatrixXd Wk = w.wk.template cast<double>();
  const Eigen::MatrixXd Wv = w.wv.template cast<double>();
  const Eigen::MatrixXd Wo = w.wo.template cast<double>();
  const Eigen::RowVectorXd bk =
      w.bk.size() ? Eigen::RowVectorXd(w.bk.template cast<double>()) : Eigen::RowVectorXd::Zero(e);
  const Eigen::RowVectorXd bv =
      w.bv.size() ? Eigen::RowVectorXd(w.bv.template cast<double>()) : Eigen::RowVectorXd::Zero(e);

  SlimReport& rep = out.report;
  rep.form = opt.form;
  rep.weight_type = type_name<T>();
  rep.cache_type = type_name<CacheT>();
  rep.cached_width = cw;
  rep.bytes_per_token_before = static_cast<std::size_t>(2 * e) * sizeof(CacheT);
  rep.bytes_per_token_after = static_cast<std::size_t>(cw) * sizeof(CacheT);
  rep.bytes_per_token_saved = static_cast<long long>(rep.bytes_per_token_before) -
                              static_cast<long long>(rep.bytes_per_token_after);

  Eigen::RowVectorXd constant;  // the row (1 x e) that folds into the output bias
  bool all_representable = true;
  if (opt.form == CacheForm::inputs) {
    rep.basis = out.basis = Basis::identity;
    out.query_map = detail::store<T>(Wk);
    out.value_map = detail::store<T>(Wv);
    all_representable = detail::representable<T>(Wk) && detail::representable<T>(Wv);
    constant = bv;  // q.b_K is constant per query: dropped
  } else {
    const bool keys = opt.form == CacheForm::keys;
    const Eigen::MatrixXd& A = keys ? Wk : Wv;
    const Eigen::MatrixXd& B = keys ? Wv : Wk;
    detail::BasisSolve bs = detail::solve_basis(A, B, keys ? "W_K" : "W_V");
    rep.basis = out.basis = bs.basis;
    rep.cond_estimate = bs.cond;
    rep.residual = bs.residual;
    rep.max_abs_transform = bs.M.cwiseAbs().maxCoeff();
    const double nc = bs.cache_proj.norm(), nm = bs.M.norm(), nb = B.norm();
    rep.error_gain = nb > 0 ? nc * nm / (std::sqrt(static_cast<double>(cw)) * nb) : 1.0;
    all_representable = detail::representable<T>(bs.M) && detail::representable<T>(bs.cache_proj);
    out.cache_proj = detail::store<T>(bs.cache_proj);
    if (keys) {
      out.value_map = detail::store<T>(bs.M);
      if (cfg.rope.enabled() && w.bk.size()) {
        // b_K stays in the cached keys (its rotation depends on the key position); the extra
        // completion columns get no bias, so (C - cache_bias) = X W_K* exactly.
        Eigen::RowVectorXd cb = Eigen::RowVectorXd::Zero(cw);
        cb.head(e) = bk;
        constant = bv - cb * bs.M;
        out.cache_bias = detail::store_row<T>(cb);
        all_representable = all_representable && detail::representable<T>(cb);
      } else {
        constant = bv;  // b_K dropped: V = (X W_K*) W_KV + b_V exactly
      }
    } else {
      out.query_map = detail::store<T>(bs.M);
      constant = bv;  // b_K and b_V both leave the cache; b_V folds into the output
    }
  }

  // c* = c + expand(constant) W_O, where query head i takes the constant of its KV head.
  out.wq = detail::store<T>(w.wq.template cast<double>());
  if (w.bq.size()) out.bq = detail::store_row<T>(w.bq.template cast<double>());
  out.wo = detail::store<T>(Wo);
  const bool has_constant = constant.size() && constant.cwiseAbs().maxCoeff() > 0;
  if (has_constant || w.bo.size()) {
    Eigen::RowVectorXd expanded(eq);
    for (Index i = 0; i < s.heads; ++i)
      expanded.segment(i * dk, dk) = constant.segment(s.kv_head_of(i) * dk, dk);
    Eigen::RowVectorXd bo = expanded * Wo;
    if (w.bo.size()) bo += w.bo.template cast<double>();
    out.bo = detail::store_row<T>(bo);
    all_representable = all_representable && detail::representable<T>(bo);
  }
  all_representable = all_representable && detail::representable<T>(w.wq.template cast<double>()) &&
                      detail::representable<T>(Wo);

  rep.representable = all_representable;
  std::string notes;
  if (!all_representable) {
    const std::string msg = ttx::detail::concat(
        "a transformed weight is not representable in ", type_name<T>(), " (max |transform| ",
        rep.max_abs_transform, ", max finite ", max_finite<T>(), ")");
    if (opt.strict)
      ttx::detail::raise(ErrorKind::numerical, ttx::detail::concat("ttx::", fn, ": ", msg));
    notes += msg;
  }
  if (opt.max_condition > 0 && rep.cond_estimate > opt.max_condition) {
    rep.ill_conditioned = true;
    const std::string msg = ttx::detail::concat(
        "the ", name(rep.basis), " basis of ", name(opt.form), " has estimated condition number ",
        rep.cond_estimate, ", above options.max_condition = ", opt.max_condition, " (error gain ",
        rep.error_gain, "); consider CacheForm::inputs (no inverse)");
    if (opt.strict)
      ttx::detail::raise(ErrorKind::numerical, ttx::detail::concat("ttx::", fn, ": ", msg));
    notes += (notes.empty() ? "" : "; ") + msg;
  }
  if (rep.bytes_per_token_saved <= 0)
    notes += (notes.empty() ? "" : "; ") + std::string("this form saves no cache memory: ") +
             detail::forms_summary(s);
  rep.notes = notes;
  return out;
}

}  // namespace ttx::rewrite
