// Slim attention for encoder–decoder models (SPEC.md §1 "Encoder–decoder"): offline weight
// transforms, computed in double and stored at the working precision A.
//
//  * Inputs form (X-cache / shared encoder cache): attention over cached *input rows* R (n x w)
//    instead of K and V. Per query head i with KV head g = g(i):
//        q~_i   = scale * (x W_Q,i + b_Q,i) W_K,g^T        (1 x w; scale folded into W_Q, b_Q)
//        s_i    = softmax(q~_i R^T + bias_i)
//        head_i = (s_i R) W_V,g
//    b_K is dropped (it shifts every score of a query by the same constant) and b_V folds into
//    the output bias: bo* = bo + concat_i(b_V,g(i)) W_O (softmax rows sum to 1). No inverse.
//    Used for the decoder self-attention (R = the layer's normed inputs X, no RoPE) and for the
//    cross-attention of every layer over one shared E-cache (R = E, p x d).
//  * Keys form (cross K-only cache): cache K = E W_K (b_K dropped), V = K W_KV with
//    W_KV = W_K^{-1} W_V (LU solve in double), head_i = (s_i K) W_KV,g, bo* as above. Needs a
//    square invertible W_K (e = d).
//  * Hybrid: layer 0 in the keys form with K1 = E W_K1; every other layer in the inputs form over
//    R = K1 with W_K,new = W_K1^{-1} W_K, W_V,new = W_K1^{-1} W_V.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "ttx/core/encdec_weights.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/linalg.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/weights.hpp"

namespace ttx::rewrite {

/// Attention over cached input rows R (n x row_width); see the header comment.
template <class A>
struct InputsAttention {
  AttentionShape shape;
  Index row_width = 0;  ///< w: d for X / E rows, e for the hybrid's K1 rows
  RowMatrix<A> wq;      ///< d x e_q, score scale folded in
  RowVector<A> bq;      ///< e_q, score scale folded in (empty = none)
  RowMatrix<A> wk;      ///< w x e: q~_i = q_i wk[:, g cols]^T
  RowMatrix<A> wv;      ///< w x e: head_i = u_i wv[:, g cols]
  RowMatrix<A> wo;      ///< e_q x d
  RowVector<A> bo;      ///< d: bo + bv W_O (always present)
};

/// Cross-attention over a K-only cache K = E W_K (p x e), V = K W_KV.
template <class A>
struct KeysAttention {
  AttentionShape shape;
  RowMatrix<A> wq;         ///< d x e_q, score scale folded in
  RowVector<A> bq;         ///< e_q, score scale folded in (empty = none)
  RowMatrix<A> wk;         ///< d x e: builds the cache once per encoder output (b_K dropped)
  RowMatrix<A> wkv;        ///< e x e: W_K^{-1} W_V
  RowMatrix<A> wo;         ///< e_q x d
  RowVector<A> bo;         ///< d: bo + bv W_O (always present)
  SolveReport report;      ///< cond(W_K) estimate, residual ||W_K W_KV - W_V|| / ||W_V||
  double max_abs_wkv = 0;  ///< max |W_KV|
};

namespace detail {

inline void check_no_rope(const char* fn, const char* which, const AttentionConfig& cfg) {
  ttx::detail::require(!cfg.rope.enabled(), ErrorKind::unsupported, fn, which,
                       ".rope expected disabled (the inputs form "
                       "needs raw projections), got rotary_dim ",
                       cfg.rope.rotary_dim);
}

/// concat_i(b_V,g(i)) W_O + b_O in double (d), or b_O / zeros when there is no V bias.
template <class S>
RowVector<double> folded_output_bias(const AttentionWeights<S>& w, const AttentionShape& s) {
  RowVector<double> bo = w.bo.size() ? RowVector<double>(w.bo.template cast<double>())
                                     : RowVector<double>(RowVector<double>::Zero(s.d));
  if (w.bv.size()) {
    RowVector<double> bvq(s.q_width());
    for (Index i = 0; i < s.heads; ++i)
      bvq.segment(i * s.head_dim, s.head_dim) =
          w.bv.segment(s.kv_head_of(i) * s.head_dim, s.head_dim).template cast<double>();
    bo.noalias() += bvq * w.wo.template cast<double>();
  }
  return bo;
}

template <class S>
void check_attention(const char* fn, const AttentionWeights<S>& w, const AttentionShape& s) {
  s.validate(fn);
  ttx::detail::check_shape(fn, "wq", w.wq, s.d, s.q_width());
  ttx::detail::check_shape(fn, "wk", w.wk, s.d, s.kv_width());
  ttx::detail::check_shape(fn, "wv", w.wv, s.d, s.kv_width());
  ttx::detail::check_shape(fn, "wo", w.wo, s.q_width(), s.d);
  if (w.bq.size()) ttx::detail::check_dim(fn, "bq.size()", s.q_width(), w.bq.size());
  if (w.bk.size()) ttx::detail::check_dim(fn, "bk.size()", s.kv_width(), w.bk.size());
  if (w.bv.size()) ttx::detail::check_dim(fn, "bv.size()", s.kv_width(), w.bv.size());
  if (w.bo.size()) ttx::detail::check_dim(fn, "bo.size()", s.d, w.bo.size());
}

template <class A, class S>
void fold_query(const AttentionWeights<S>& w, double scale, RowMatrix<A>& wq, RowVector<A>& bq) {
  wq = (w.wq.template cast<double>() * scale).template cast<A>();
  bq = w.bq.size() ? RowVector<A>((w.bq.template cast<double>() * scale).template cast<A>())
                   : RowVector<A>();
}

}  // namespace detail

/// Inputs form of one attention layer (self X-cache or shared encoder cache), rows of width d.
/// `w` in (in x out) layout; `cfg.scale` (0 = 1/sqrt(d_k)) is folded into W_Q and b_Q. MHA, GQA,
/// MQA, any e (also e > d). UnsupportedError with RoPE.
///   auto cross = ttx::rewrite::inputs_attention<float>(w.cross_attn, cfg.cross_attn);
template <class A, class S>
InputsAttention<A> inputs_attention(const AttentionWeights<S>& w, const AttentionConfig& cfg) {
  const char* fn = "rewrite::inputs_attention";
  const AttentionShape& s = cfg.shape;
  detail::check_attention(fn, w, s);
  detail::check_no_rope(fn, "cfg", cfg);
  InputsAttention<A> r;
  r.shape = s;
  r.row_width = s.d;
  detail::fold_query(w, cfg.effective_scale(), r.wq, r.bq);
  r.wk = w.wk.template cast<A>();
  r.wv = w.wv.template cast<A>();
  r.wo = w.wo.template cast<A>();
  r.bo = detail::folded_output_bias(w, s).template cast<A>();
  return r;
}

/// Keys form of a cross-attention layer: W_KV = W_K^{-1} W_V by LU in double (never an explicit
/// inverse), with its report. Needs e = d (square W_K): UnsupportedError otherwise (use
/// inputs_attention, the shared encoder cache, which needs no inverse); NumericalError when W_K is
/// singular.
///   auto cross = ttx::rewrite::keys_attention<float>(w.cross_attn, cfg.cross_attn);
template <class A, class S>
KeysAttention<A> keys_attention(const AttentionWeights<S>& w, const AttentionConfig& cfg) {
  const char* fn = "rewrite::keys_attention";
  const AttentionShape& s = cfg.shape;
  detail::check_attention(fn, w, s);
  detail::check_no_rope(fn, "cfg", cfg);
  ttx::detail::require(s.kv_width() == s.d, ErrorKind::unsupported, fn,
                       "a K-only cross cache needs a square W_K: kv_width expected d=", s.d,
                       ", got ", s.kv_width(),
                       " (use inputs_attention, the shared encoder cache, which needs no "
                       "inverse)");
  KeysAttention<A> r;
  r.shape = s;
  detail::fold_query(w, cfg.effective_scale(), r.wq, r.bq);
  r.wk = w.wk.template cast<A>();
  const RowMatrix<double> wkv = solve(w.wk, w.wv, &r.report, "W_K");
  r.max_abs_wkv = wkv.cwiseAbs().maxCoeff();
  r.wkv = wkv.template cast<A>();
  r.wo = w.wo.template cast<A>();
  // K is cached without b_K, so V = K W_KV + b_V exactly; b_V folds into the output bias.
  r.bo = detail::folded_output_bias(w, s).template cast<A>();
  return r;
}

/// Hybrid: layer 0 keeps the K-only cross cache K1 = E W_K1; layer l > 0 reads K1 as its rows,
/// with W_K,new = W_K1^{-1} W_K,l and W_V,new = W_K1^{-1} W_V,l (one LU of W_K1, in double).
template <class A>
struct HybridCross {
  KeysAttention<A> first;
  std::vector<InputsAttention<A>> rest;  ///< layers 1..L-1, row_width = e of layer 0
  std::vector<SolveReport> reports;      ///< per layer 1..L-1: the solve for [W_K | W_V]
};

/// `w[l]` and `cfg[l]` are the cross-attention weights and configs of layers 0..L-1 (all of the
/// same shape, d = e). Errors as keys_attention.
template <class A, class S>
HybridCross<A> hybrid_cross(const std::vector<const AttentionWeights<S>*>& w,
                            const std::vector<AttentionConfig>& cfg) {
  const char* fn = "rewrite::hybrid_cross";
  ttx::detail::check_dim(fn, "cfg.size() (= w.size())", w.size(), cfg.size());
  ttx::detail::require(!w.empty(), ErrorKind::shape, fn, "layers expected >= 1, got 0");
  HybridCross<A> r;
  r.first = keys_attention<A>(*w[0], cfg[0]);
  const auto wk1 = w[0]->wk.template cast<double>();
  for (size_t l = 1; l < w.size(); ++l) {
    const AttentionShape& s = cfg[l].shape;
    detail::check_attention(fn, *w[l], s);
    detail::check_no_rope(fn, "cfg[l]", cfg[l]);
    ttx::detail::check_dim(fn, "cfg[l].shape.d (= layer 0's d)", cfg[0].shape.d, s.d);
    RowMatrix<double> kv(s.d, 2 * s.kv_width());
    kv << w[l]->wk.template cast<double>(), w[l]->wv.template cast<double>();
    SolveReport rep;
    const RowMatrix<double> nk = solve(wk1, kv, &rep, "W_K (layer 0)");
    InputsAttention<A> li;
    li.shape = s;
    li.row_width = cfg[0].shape.kv_width();
    detail::fold_query(*w[l], cfg[l].effective_scale(), li.wq, li.bq);
    li.wk = nk.leftCols(s.kv_width()).template cast<A>();
    li.wv = nk.rightCols(s.kv_width()).template cast<A>();
    li.wo = w[l]->wo.template cast<A>();
    li.bo = detail::folded_output_bias(*w[l], s).template cast<A>();
    r.rest.push_back(std::move(li));
    r.reports.push_back(rep);
  }
  return r;
}

// ----------------------------------------------------------------------------------------------
// A whole decoder stack, planned for the runtime (kernel/encdec.hpp).

/// Decoder self-attention: vanilla KV cache, or X-cache of the layer's normed inputs.
enum class SelfForm { kv, inputs };
/// Decoder cross-attention: vanilla cross KV cache per layer; cross K-only cache per layer; one
/// shared encoder cache E read by every layer (no cross cache, no cross phase); hybrid.
enum class CrossForm { kv, keys, shared_encoder, hybrid };

inline const char* form_name(SelfForm f) {
  return f == SelfForm::kv ? "kv" : "inputs";
}
inline const char* form_name(CrossForm f) {
  switch (f) {
    case CrossForm::kv:
      return "kv";
    case CrossForm::keys:
      return "keys";
    case CrossForm::shared_encoder:
      return "shared_encoder";
    case CrossForm::hybrid:
      return "hybrid";
  }
  return "?";
}

struct EncDecForms {
  SelfForm self = SelfForm::inputs;
  CrossForm cross = CrossForm::shared_encoder;
};

template <class A>
struct EncDecLayerPlan {
  NormWeights<A> norm_self, norm_cross, norm_ffn;
  FfnWeights<A> ffn;
  AttentionWeights<A> self_kv;      ///< SelfForm::kv
  InputsAttention<A> self_inputs;   ///< SelfForm::inputs
  AttentionWeights<A> cross_kv;     ///< CrossForm::kv
  KeysAttention<A> cross_keys;      ///< CrossForm::keys, and layer 0 of the hybrid
  InputsAttention<A> cross_inputs;  ///< CrossForm::shared_encoder, hybrid layers > 0
};

/// Everything the runtime needs, at working precision A.
template <class A>
struct EncDecDecoderPlan {
  EncDecDecoderConfig config;
  EncDecForms forms;
  RowMatrix<A> embedding, positions, lm_head, relative_bias;
  NormWeights<A> final_norm;
  std::vector<EncDecLayerPlan<A>> layers;
  /// One report per solve (keys: every layer; hybrid: layer 0's W_K, then layers 1..L-1).
  std::vector<SolveReport> reports;
  double max_cond = 1.0;  ///< largest cond estimate over the reports (1 when no inverse)
};

namespace detail {
template <class A, class S>
AttentionWeights<A> cast_attention(const AttentionWeights<S>& w) {
  return {w.wq.template cast<A>(), w.wk.template cast<A>(), w.wv.template cast<A>(),
          w.wo.template cast<A>(), w.bq.template cast<A>(), w.bk.template cast<A>(),
          w.bv.template cast<A>(), w.bo.template cast<A>()};
}
template <class A, class S>
NormWeights<A> cast_norm(const NormWeights<S>& w) {
  return {w.gain.template cast<A>(), w.beta.template cast<A>()};
}
template <class A, class S>
FfnWeights<A> cast_ffn(const FfnWeights<S>& w) {
  return {w.w_in.template cast<A>(), w.w_up.template cast<A>(), w.w_out.template cast<A>(),
          w.b_in.template cast<A>(), w.b_up.template cast<A>(), w.b_out.template cast<A>()};
}
}  // namespace detail

/// Plans a Whisper/T5-style decoder stack for the runtime: the chosen self and cross forms,
/// weights transformed in double and stored as A. RoPE is not supported (Whisper and T5 have
/// none): UnsupportedError. Keys and hybrid need e = d (UnsupportedError otherwise).
///   auto plan = ttx::rewrite::plan_encdec_decoder<float>(cfg, w, {SelfForm::inputs,
///                                                             CrossForm::shared_encoder});
template <class A, class S>
EncDecDecoderPlan<A> plan_encdec_decoder(const EncDecDecoderConfig& cfg,
                                         const EncDecDecoderWeights<S>& w, EncDecForms forms) {
  const char* fn = "rewrite::plan_encdec_decoder";
  check_encdec_decoder(fn, cfg, w);
  detail::check_no_rope(fn, "block.self_attn", cfg.block.self_attn);
  detail::check_no_rope(fn, "block.cross_attn", cfg.block.cross_attn);
  EncDecDecoderPlan<A> p;
  p.config = cfg;
  p.forms = forms;
  p.embedding = w.embedding.template cast<A>();
  p.positions = w.positions.template cast<A>();
  p.lm_head = w.lm_head.template cast<A>();
  p.relative_bias = w.relative_bias.template cast<A>();
  p.final_norm = detail::cast_norm<A>(w.final_norm);
  HybridCross<A> hybrid;
  if (forms.cross == CrossForm::hybrid) {
    std::vector<const AttentionWeights<S>*> cw;
    for (const auto& b : w.blocks) cw.push_back(&b.cross_attn);
    hybrid = hybrid_cross<A>(cw, std::vector<AttentionConfig>(cw.size(), cfg.block.cross_attn));
    p.reports.push_back(hybrid.first.report);
    p.reports.insert(p.reports.end(), hybrid.reports.begin(), hybrid.reports.end());
  }
  for (Index l = 0; l < cfg.layers; ++l) {
    const auto& b = w.blocks[static_cast<size_t>(l)];
    EncDecLayerPlan<A> L;
    L.norm_self = detail::cast_norm<A>(b.norm_self);
    L.norm_cross = detail::cast_norm<A>(b.norm_cross);
    L.norm_ffn = detail::cast_norm<A>(b.norm_ffn);
    L.ffn = detail::cast_ffn<A>(b.ffn);
    if (forms.self == SelfForm::kv) {
      detail::check_attention(fn, b.self_attn, cfg.block.self_attn.shape);
      L.self_kv = detail::cast_attention<A>(b.self_attn);
    } else {
      L.self_inputs = inputs_attention<A>(b.self_attn, cfg.block.self_attn);
    }
    switch (forms.cross) {
      case CrossForm::kv:
        detail::check_attention(fn, b.cross_attn, cfg.block.cross_attn.shape);
        L.cross_kv = detail::cast_attention<A>(b.cross_attn);
        break;
      case CrossForm::keys:
        L.cross_keys = keys_attention<A>(b.cross_attn, cfg.block.cross_attn);
        p.reports.push_back(L.cross_keys.report);
        break;
      case CrossForm::shared_encoder:
        L.cross_inputs = inputs_attention<A>(b.cross_attn, cfg.block.cross_attn);
        break;
      case CrossForm::hybrid:
        if (l == 0)
          L.cross_keys = hybrid.first;
        else
          L.cross_inputs = hybrid.rest[static_cast<size_t>(l - 1)];
        break;
    }
    p.layers.push_back(std::move(L));
  }
  for (const auto& r : p.reports) p.max_cond = std::max(p.max_cond, r.cond_estimate);
  return p;
}

}  // namespace ttx::rewrite
