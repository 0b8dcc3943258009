// Skipless transformers: remove Q and P (or K/V and P) exactly (SPEC.md §3, arXiv 2404.12362).
//
// Row-vector convention, weights (in x out): a projection is x W + b. A skipless block has no
// residual and no norm. Every linear map that meets only other linear maps can be merged; what
// can be merged is decided by the *streams* between nonlinear steps. Each stream admits one
// change of basis x -> x A (+ b): its producer absorbs A, its consumers absorb A^{-1}, and a
// consumer whose matrix was A becomes the identity (removed).
//
// Serial blocks  y = ffn(attn(x)),  attn(x) = concat(heads) P + b_P,  ffn(u) = act(u M + b_M) O +
// b_O:
//  * P -> M (stream attention -> FFN):  M* = P M  (GLU: gate and up),  b_M* = b_P M + b_M.
//    P disappears. (M* is e_q x f; the runtime feeds concat(heads) straight into it.)
//  * Q removal (stream block l-1 -> block l): A = W_Q (d x e_q, square needs e_q = h d_k = d;
//    true for MHA, MQA and GQA alike):  O*_{l-1} = O_{l-1} Q,  b_O* = b_O Q + b_q,
//    K* = Q^{-1} K,  V* = Q^{-1} V,  b_k* = b_k - b_q K*,  b_v* = b_v - b_q V*,  q = x* (no
//    projection, no bias). Block 0 takes it from the embedding table: E* = E Q + b_q (every
//    row), learned positions P* = P Q.
//  * K removal (MHA, e = d only): q = x* K^{-1} Q, v = x* K^{-1} V, k = x*. V removal likewise.
//    For MQA/GQA W_K and W_V are d x e with e < d: no inverse, refused with an explanation.
//  * RoPE: it rotates q and k *after* their projections, so with Q (or K) removed the rotation
//    acts on the stream x* itself, which equals the original projection output x W + b exactly:
//    Q, K and V removal are all exact with RoPE (full or partial, either pair layout). The tests
//    check every variant with and without RoPE against the reference.
//  * The last block: its FFN output feeds the final norm (if any) and the LM head. O_L is f x d
//    and the head d x vocab: neither is square, so nothing is removed there; merging O_L into the
//    head would make an f x vocab matrix (more weights), and across a final norm nothing merges at
//    all. The final norm and the LM head are returned unchanged.
//  Removed per serial block: d^2 (Q, K or V) + e_q d (P) = 2 d^2 — e.g. 15% of Mistral-7B.
//
// Parallel blocks  y = attn(x) + ffn(x):
//  * There is ONE stream per block (x feeds Q, K, V and the FFN input M), so ONE d x d matrix per
//    block can go: Q (or K/V for MHA). With A = Q_l:  P*_{l-1} = P_{l-1} Q,  O*_{l-1} = O_{l-1} Q,
//    b_O*_{l-1} = (b_P + b_O)_{l-1} Q + b_q (b_P moves into b_O),  K* = Q^{-1} K,  V* = Q^{-1} V,
//    M* = Q^{-1} M (GLU: and up),  with b_m* = b_m - b_q M* for each consumer m.
//  * P cannot also go: P's output is summed with the FFN's before the next block, whose Q, K, V
//    and M all read the sum; the only way to drop P is to make it the stream's basis change
//    (A = P^{-1}), which uses up the stream that Q removal needed. Dropping P after Q removal is
//    exact only when P_l Q_{l+1} = I (a test shows both the failure and that condition). The
//    paper's parallel figure "without Q and P" is therefore not an exact rewrite; we ship the
//    exact part: d^2 per parallel block.
//
// Embeddings: E* = E A changes the input table, so a model with tied input/output embeddings must
// keep a separate LM head (ModelWeights always has one). The runtime reads one row of E per token.
//
// Everything is computed in double (ttx::solve: LU with partial pivoting, never an explicit
// inverse); the report gives cond(A) and the solve residual per layer and the weights removed.
// cond is the LAPACK-style 1-norm estimate from the LU: it can exceed the 2-norm condition number
// by up to a factor d (a matrix with singular values in [0.6, 1.4] at d = 128 reports ~100). A
// layer with cond(A) > cond_limit is flagged (strict mode refuses); a singular A is an error.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/linalg.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

namespace ttx::rewrite {

/// Which square attention projection each block's input stream absorbs (becomes the identity).
enum class SkiplessRemoval { none, query, key, value };

inline const char* to_string(SkiplessRemoval r) {
  switch (r) {
    case SkiplessRemoval::query:
      return "Q";
    case SkiplessRemoval::key:
      return "K";
    case SkiplessRemoval::value:
      return "V";
    default:
      return "none";
  }
}

struct SkiplessOptions {
  SkiplessRemoval remove = SkiplessRemoval::query;
  bool merge_output_projection = true;  ///< serial blocks: M* = P M (parallel blocks keep P)
  double cond_limit = 1e4;              ///< a removed matrix with a larger cond estimate is flagged
  bool strict = false;                  ///< refuse (NumericalError) instead of flagging
};

struct SkiplessLayerReport {
  double cond = 0;      ///< 1-norm condition estimate of the removed matrix (0 when none)
  double residual = 0;  ///< ||A X - B||_F / ||B||_F of the solve for the consumers
  bool ill_conditioned = false;
  Index weights_before = 0, weights_after = 0;  ///< parameters of this block
  Index removed() const { return weights_before - weights_after; }
};

struct SkiplessReport {
  SkiplessRemoval removal = SkiplessRemoval::none;
  bool output_projection_merged = false;
  std::vector<SkiplessLayerReport> layers;
  Index weights_before = 0, weights_after = 0;  ///< whole model (embeddings and head included)
  double max_cond = 0, max_residual = 0;
  bool ill_conditioned = false;

  Index weights_removed() const { return weights_before - weights_after; }
  double fraction_removed() const {
    return weights_before ? static_cast<double>(weights_removed()) / weights_before : 0.0;
  }
  /// One line per layer plus totals, for logs and test messages.
  std::string summary() const {
    std::ostringstream os;
    os.precision(4);
    os << "skipless rewrite: removed " << to_string(removal)
       << (output_projection_merged ? " and P (M* = P M)" : "") << "\n";
    for (size_t l = 0; l < layers.size(); ++l)
      os << "  block " << l << ": cond " << layers[l].cond << ", residual " << layers[l].residual
         << ", weights removed " << layers[l].removed()
         << (layers[l].ill_conditioned ? "  ILL-CONDITIONED" : "") << "\n";
    os << "  total: " << weights_before << " -> " << weights_after << " weights, removed "
       << weights_removed() << " (" << 100.0 * fraction_removed() << "%), max cond " << max_cond
       << "; last block and LM head unchanged (nothing square to absorb)\n";
    return os.str();
  }
};

/// The rewritten model: same config; removed projections are EMPTY matrices (the identity), which
/// is what ttx::kernel::SkiplessModel expects. Unused block norms are dropped.
template <class T>
struct SkiplessResult {
  ModelConfig config;
  ModelWeights<T> weights;
  SkiplessReport report;
};

namespace skipless_detail {

template <class T>
Index block_parameters(const BlockWeights<T>& b) {
  return b.attn.wq.size() + b.attn.wk.size() + b.attn.wv.size() + b.attn.wo.size() +
         b.attn.bq.size() + b.attn.bk.size() + b.attn.bv.size() + b.attn.bo.size() +
         b.ffn.w_in.size() + b.ffn.w_up.size() + b.ffn.w_out.size() + b.ffn.b_in.size() +
         b.ffn.b_up.size() + b.ffn.b_out.size();
}

inline bool is_skipless(BlockKind k) {
  return k == BlockKind::skipless_serial || k == BlockKind::skipless_parallel;
}

/// The removed matrix must be square: Q needs e_q = d, K and V need e = d (MHA).
inline void check_removable(const char* fn, const AttentionShape& s, SkiplessRemoval r) {
  if (r == SkiplessRemoval::none) return;
  if (r == SkiplessRemoval::query) {
    ttx::detail::require(s.q_width() == s.d, ErrorKind::unsupported, fn,
                         "Q removal needs a square W_Q: e_q = heads*head_dim = ", s.heads, "*",
                         s.head_dim, " = ", s.q_width(), " expected to equal d = ", s.d);
    return;
  }
  const char* m = r == SkiplessRemoval::key ? "K" : "V";
  const char* layout = s.layout() == HeadLayout::mqa ? "MQA" : "GQA";
  ttx::detail::require(
      s.kv_width() == s.d, ErrorKind::unsupported, fn, m, " removal needs a square, invertible W_",
      m, " (d x d: MHA with heads*head_dim = d); this model is ", layout,
      " (kv_heads = ", s.kv_heads, ", heads = ", s.heads, "): W_", m, " is ", s.d, "x",
      s.kv_width(), " (e = kv_heads*head_dim = ", s.kv_width(), " < d = ", s.d,
      "), which has no inverse. Remove Q instead (works for MHA, MQA and "
      "GQA)");
}

template <class T>
void check_model(const char* fn, const ModelConfig& cfg, const ModelWeights<T>& w) {
  const AttentionShape& s = cfg.block.attn.shape;
  ttx::detail::require(is_skipless(cfg.block.kind), ErrorKind::unsupported, fn,
                       "cfg.block.kind expected skipless_serial or skipless_parallel: with a "
                       "residual or a norm between them, the linear layers do not meet and "
                       "cannot be merged");
  s.validate(fn);
  cfg.block.attn.rope.validate(fn, s.head_dim);
  ttx::detail::check_dim(fn, "weights.blocks.size() (= cfg.layers)", cfg.layers,
                         static_cast<Index>(w.blocks.size()));
  ttx::detail::check_shape(fn, "weights.embedding", w.embedding, cfg.vocab, s.d);
  ttx::detail::check_shape(fn, "weights.lm_head", w.lm_head, s.d, cfg.vocab);
  if (cfg.learned_positions)
    ttx::detail::check_shape(fn, "weights.positions", w.positions, cfg.max_positions, s.d);
  const Index f = w.blocks.empty() ? 0 : w.blocks.front().ffn.w_out.rows();
  for (size_t l = 0; l < w.blocks.size(); ++l) {
    const auto& b = w.blocks[l];
    auto mat = [&](const RowMatrix<T>& m, const char* what, Index r, Index c) {
      ttx::detail::check_shape(fn, ttx::detail::concat("blocks[", l, "].", what).c_str(), m, r, c);
    };
    auto vec = [&](const RowVector<T>& v, const char* what, Index n) {
      if (v.size())
        ttx::detail::check_dim(fn, ttx::detail::concat("blocks[", l, "].", what, ".size()").c_str(),
                               n, v.size());
    };
    mat(b.attn.wq, "attn.wq", s.d, s.q_width());
    mat(b.attn.wk, "attn.wk", s.d, s.kv_width());
    mat(b.attn.wv, "attn.wv", s.d, s.kv_width());
    mat(b.attn.wo, "attn.wo", s.q_width(), s.d);
    vec(b.attn.bq, "attn.bq", s.q_width());
    vec(b.attn.bk, "attn.bk", s.kv_width());
    vec(b.attn.bv, "attn.bv", s.kv_width());
    vec(b.attn.bo, "attn.bo", s.d);
    ttx::detail::require(f > 0, ErrorKind::shape, fn,
                         "blocks[0].ffn.w_out rows (the FFN width f) expected > 0, got 0");
    mat(b.ffn.w_in, "ffn.w_in", s.d, f);
    if (cfg.block.ffn.kind == FfnKind::glu) mat(b.ffn.w_up, "ffn.w_up", s.d, f);
    mat(b.ffn.w_out, "ffn.w_out", f, s.d);
    vec(b.ffn.b_in, "ffn.b_in", f);
    vec(b.ffn.b_up, "ffn.b_up", f);
    vec(b.ffn.b_out, "ffn.b_out", s.d);
  }
}

using MatD = RowMatrix<double>;
using VecD = RowVector<double>;

struct BlockD {
  MatD wq, wk, wv, wo, w_in, w_up, w_out;
  VecD bq, bk, bv, bo, b_in, b_up, b_out;
};

// b* = b - b_A M* for a consumer M of a stream whose basis change carries the bias b_A.
inline void shift_bias(VecD& b, const VecD& bA, const MatD& m_new) {
  if (bA.size() == 0) return;
  VecD shifted = -(bA * m_new);
  if (b.size()) shifted += b;
  b = std::move(shifted);
}

// b* = b A + b_A for the producer of the stream (either may be empty).
inline VecD carry_bias(const VecD& b, const MatD& A, const VecD& bA) {
  if (b.size() == 0 && bA.size() == 0) return VecD();
  VecD out = b.size() ? VecD(b * A) : VecD(VecD::Zero(A.cols()));
  if (bA.size()) out += bA;
  return out;
}

}  // namespace skipless_detail

/// Parameters a skipless model uses: block matrices and biases, embedding (and learned
/// positions), final norm (when cfg.final_norm) and LM head. Block norms are unused and not
/// counted.
template <class T>
Index skipless_parameter_count(const ModelConfig& cfg, const ModelWeights<T>& w) {
  Index n = w.embedding.size() + w.lm_head.size();
  if (cfg.learned_positions) n += w.positions.size();
  if (cfg.final_norm) n += w.final_norm.gain.size() + w.final_norm.beta.size();
  for (const auto& b : w.blocks) n += skipless_detail::block_parameters(b);
  return n;
}

/// Rewrites a skipless model (see the header comment for the identities): removes, per block,
/// the projection `opt.remove` (Q for MHA/MQA/GQA; K or V for MHA only) and, for serial blocks,
/// P (M* = P M). Input weights in (in x out) layout, any scalar; computed in double; stored as
/// Out. Throws UnsupportedError for a non-skipless kind or an impossible removal, ShapeError on
/// bad shapes, NumericalError for a singular matrix or (strict) one above cond_limit.
///   auto r = ttx::rewrite::skipless<float>(cfg, weights);   // r.report.summary()
///   ttx::kernel::SkiplessModel<float> m(r.config, std::move(r.weights), 512);
template <class Out = double, class In>
SkiplessResult<Out> skipless(const ModelConfig& cfg, const ModelWeights<In>& w,
                             const SkiplessOptions& opt = {}) {
  using namespace skipless_detail;
  const char* fn = "rewrite::skipless";
  check_model(fn, cfg, w);
  const AttentionShape& s = cfg.block.attn.shape;
  check_removable(fn, s, opt.remove);
  ttx::detail::require(opt.cond_limit > 0, ErrorKind::shape, fn,
                       "opt.cond_limit expected > 0, got ", opt.cond_limit);
  const bool serial = cfg.block.kind == BlockKind::skipless_serial;
  const bool glu = cfg.block.ffn.kind == FfnKind::glu;
  const bool merge_p = serial && opt.merge_output_projection;

  SkiplessResult<Out> res;
  res.config = cfg;
  SkiplessReport& rep = res.report;
  rep.removal = opt.remove;
  rep.output_projection_merged = merge_p;
  rep.weights_before = skipless_parameter_count(cfg, w);

  auto d = [](const auto& m) { return m.template cast<double>().eval(); };
  std::vector<BlockD> B(w.blocks.size());
  for (size_t l = 0; l < B.size(); ++l) {
    const auto& a = w.blocks[l].attn;
    const auto& f = w.blocks[l].ffn;
    B[l] = BlockD{d(a.wq), d(a.wk), d(a.wv), d(a.wo), d(f.w_in), d(f.w_up), d(f.w_out),
                  d(a.bq), d(a.bk), d(a.bv), d(a.bo), d(f.b_in), d(f.b_up), d(f.b_out)};
  }
  MatD E = d(w.embedding);
  MatD Pos = cfg.learned_positions ? d(w.positions) : MatD();

  rep.layers.resize(B.size());
  for (size_t l = 0; l < B.size(); ++l) {
    BlockD& b = B[l];
    SkiplessLayerReport& lr = rep.layers[l];
    lr.weights_before = block_parameters(w.blocks[l]);

    // Stream into block l: x* = x A + b_A. Consumers absorb A^{-1}; A becomes the identity.
    if (opt.remove != SkiplessRemoval::none) {
      MatD* Am = opt.remove == SkiplessRemoval::query ? &b.wq
                 : opt.remove == SkiplessRemoval::key ? &b.wk
                                                      : &b.wv;
      VecD* Ab = opt.remove == SkiplessRemoval::query ? &b.bq
                 : opt.remove == SkiplessRemoval::key ? &b.bk
                                                      : &b.bv;
      std::vector<std::pair<MatD*, VecD*>> consumers;
      if (Am != &b.wq) consumers.push_back({&b.wq, &b.bq});
      if (Am != &b.wk) consumers.push_back({&b.wk, &b.bk});
      if (Am != &b.wv) consumers.push_back({&b.wv, &b.bv});
      if (!serial) {
        consumers.push_back({&b.w_in, &b.b_in});
        if (glu) consumers.push_back({&b.w_up, &b.b_up});
      }
      Index cols = 0;
      for (auto& c : consumers) cols += c.first->cols();
      MatD rhs(s.d, cols);
      Index at = 0;
      for (auto& c : consumers) {
        rhs.middleCols(at, c.first->cols()) = *c.first;
        at += c.first->cols();
      }
      SolveReport sr;
      const std::string what = ttx::detail::concat("blocks[", l, "].attn.w",
                                                   opt.remove == SkiplessRemoval::query ? "q"
                                                   : opt.remove == SkiplessRemoval::key ? "k"
                                                                                        : "v");
      const MatD X = ttx::solve(*Am, rhs, &sr, what.c_str());
      lr.cond = sr.cond_estimate;
      lr.residual = sr.residual;
      lr.ill_conditioned = !(sr.cond_estimate <= opt.cond_limit);
      if (lr.ill_conditioned && opt.strict)
        ttx::detail::raise(
            ErrorKind::numerical,
            ttx::detail::concat("ttx::", fn, ": ", what, " condition estimate ", sr.cond_estimate,
                                " expected <= cond_limit ", opt.cond_limit,
                                " (strict mode refuses; raise cond_limit or drop strict to "
                                "accept and report it)"));
      at = 0;
      for (auto& c : consumers) {
        *c.first = X.middleCols(at, c.first->cols());
        at += c.first->cols();
        shift_bias(*c.second, *Ab, *c.first);
      }
      const MatD A = std::move(*Am);
      const VecD bA = std::move(*Ab);
      *Am = MatD();
      *Ab = VecD();
      // The producer of the stream absorbs A (and b_A).
      if (l == 0) {
        MatD e = E * A;
        if (bA.size()) e.rowwise() += bA;
        E = std::move(e);
        if (cfg.learned_positions) Pos = (Pos * A).eval();
      } else {
        BlockD& p = B[l - 1];
        VecD b_out = p.b_out;
        if (!serial) {  // y = attn P + b_P + ffn O + b_O: P absorbs A too, b_P moves into b_O.
          if (p.bo.size()) b_out = b_out.size() ? VecD(b_out + p.bo) : p.bo;
          p.bo = VecD();
          p.wo = (p.wo * A).eval();
        }
        p.w_out = (p.w_out * A).eval();
        p.b_out = carry_bias(b_out, A, bA);
      }
    }
    // Serial: P merges into the FFN input, M* = P M, b_M* = b_P M + b_M.
    if (merge_p) {
      auto merge = [&](MatD& m, VecD& bm) {
        if (b.bo.size()) {
          VecD nb = b.bo * m;
          if (bm.size()) nb += bm;
          bm = std::move(nb);
        }
        m = (b.wo * m).eval();
      };
      merge(b.w_in, b.b_in);
      if (glu) merge(b.w_up, b.b_up);
      b.wo = MatD();
      b.bo = VecD();
    }
  }
  if (!rep.layers.empty()) {
    for (const auto& lr : rep.layers) {
      rep.max_cond = std::max(rep.max_cond, lr.cond);
      rep.max_residual = std::max(rep.max_residual, lr.residual);
      rep.ill_conditioned = rep.ill_conditioned || lr.ill_conditioned;
    }
  }

  auto o = [](const auto& m) { return m.template cast<Out>().eval(); };
  ModelWeights<Out>& out = res.weights;
  out.embedding = o(E);
  if (cfg.learned_positions) out.positions = o(Pos);
  if (cfg.final_norm) out.final_norm = {o(w.final_norm.gain), o(w.final_norm.beta)};
  out.lm_head = o(w.lm_head);
  out.blocks.resize(B.size());
  for (size_t l = 0; l < B.size(); ++l) {
    const BlockD& b = B[l];
    BlockWeights<Out>& ob = out.blocks[l];
    ob.attn = {o(b.wq), o(b.wk), o(b.wv), o(b.wo), o(b.bq), o(b.bk), o(b.bv), o(b.bo)};
    ob.ffn = {o(b.w_in), o(b.w_up), o(b.w_out), o(b.b_in), o(b.b_up), o(b.b_out)};
    rep.layers[l].weights_after = block_parameters(ob);
  }
  rep.weights_after = skipless_parameter_count(cfg, out);
  return res;
}

/// A model described by its shapes alone, for weight accounting (matrices only, no biases).
struct SkiplessModelShape {
  Index d = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0;
  FfnKind ffn_kind = FfnKind::glu;
  BlockKind kind = BlockKind::skipless_serial;
  bool tied_embeddings = false;  ///< one vocab x d table for input and LM head
};

struct SkiplessSavings {
  Index removed_per_layer = 0, removed = 0;
  Index layer_weights = 0;      ///< all blocks' matrices
  Index embedding_weights = 0;  ///< input embedding + LM head (once if tied)
  Index total() const { return layer_weights + embedding_weights; }
  double fraction_of_total() const { return static_cast<double>(removed) / total(); }
  double fraction_of_layers() const { return static_cast<double>(removed) / layer_weights; }
  /// Memory-bound decode speed-up if every weight is read once per token.
  double speedup_total() const {
    return static_cast<double>(total()) / static_cast<double>(total() - removed);
  }
  double speedup_layers() const {
    return static_cast<double>(layer_weights) / static_cast<double>(layer_weights - removed);
  }
};

/// Weights the skipless rewrite removes from a model of this shape: per serial block the removed
/// square projection (d^2) plus P (e_q d, merged into M: M* is e_q x f, the size M had when
/// e_q = d); per parallel block the removed projection only (see the header comment).
inline SkiplessSavings skipless_savings(const SkiplessModelShape& m,
                                        SkiplessRemoval r = SkiplessRemoval::query,
                                        bool merge_output_projection = true) {
  const char* fn = "rewrite::skipless_savings";
  AttentionShape s{m.d, m.heads, m.kv_heads, m.head_dim};
  s.validate(fn);
  ttx::detail::require(m.layers > 0 && m.ffn > 0 && m.vocab > 0, ErrorKind::shape, fn,
                       "layers, ffn and vocab expected > 0, got ", m.layers, ", ", m.ffn, ", ",
                       m.vocab);
  ttx::detail::require(skipless_detail::is_skipless(m.kind), ErrorKind::unsupported, fn,
                       "kind expected skipless_serial or skipless_parallel");
  skipless_detail::check_removable(fn, s, r);
  const Index k = m.ffn_kind == FfnKind::glu ? 2 : 1;  // matrices reading the FFN input
  SkiplessSavings out;
  out.layer_weights = m.layers * (m.d * s.q_width() + 2 * m.d * s.kv_width() + s.q_width() * m.d +
                                  (k + 1) * m.d * m.ffn);
  out.embedding_weights = (m.tied_embeddings ? 1 : 2) * m.vocab * m.d;
  Index per = r == SkiplessRemoval::none ? 0 : m.d * m.d;
  if (m.kind == BlockKind::skipless_serial && merge_output_projection)
    per += s.q_width() * m.d + k * m.d * m.ffn - k * s.q_width() * m.ffn;
  out.removed_per_layer = per;
  out.removed = per * m.layers;
  return out;
}

}  // namespace ttx::rewrite
