// SkiplessModel: a plain runtime for skipless decoder-only transformers (SPEC.md §3) — blocks with
// no residual and no norm, serial  y = ffn(attn(x))  or parallel  y = attn(x) + ffn(x)  — with a
// per-layer KV cache, greedy generation and rollback.
//
// It runs the original weights and the weights rewritten by ttx::rewrite::skipless() with the same
// code: a removed projection is stored as an EMPTY matrix and means the identity. So
//   wq empty: q = x + b_q        (Q removed; needs e_q = h*d_k = d)
//   wk empty: k = x + b_k        (K removed; needs e = h_kv*d_k = d)
//   wv empty: v = x + b_v        (V removed; needs e = d)
//   wo empty: serial: the FFN reads concat(heads) directly (its w_in/w_up are e_q x f, M* = P M);
//             parallel: concat(heads) is added to the FFN output directly (needs e_q = d).
// The only difference between a vanilla and a rewritten decode step is then the weights read.
//
// Storage T (float, Eigen::bfloat16, Eigen::half, double) for weights; every product accumulates in
// A = accum_t<T> (float, or double for double weights); the KV cache stores A. Weights are in ttx's
// (in x out) layout, row-major (SPEC.md §0). Products are row-vector x matrix (GEMV), written as a
// streaming pass over the weight rows (AVX-512 for float/bf16/half storage when compiled with it,
// a portable loop otherwise). Single-threaded by design: one decode step is a chain of GEMVs that
// is bound by the weight bytes it reads (weight_bytes_per_step()).
//
// Example:
//   ttx::kernel::SkiplessModel<Eigen::bfloat16> m(cfg, weights, /*capacity=*/256);
//   std::vector<int> out = m.generate({1, 2, 3}, /*steps=*/32);
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "ttx/cache/kv_cache.hpp"
#include "ttx/core/activation.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/greedy.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

namespace ttx::kernel {

namespace skipless_detail {

// y[j] += sum_r x[r] * W[r][j] for the `rows` (<= 4) rows starting at W, columns [0, out).
template <class T, class A>
inline void axpy_rows_portable(const A* x, const T* W, Index rows, Index ld, Index from, Index out,
                               A* y) {
  if (rows == 4) {
    const T *w0 = W, *w1 = W + ld, *w2 = W + 2 * ld, *w3 = W + 3 * ld;
    const A x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
    for (Index j = from; j < out; ++j)
      y[j] += x0 * static_cast<A>(w0[j]) + x1 * static_cast<A>(w1[j]) + x2 * static_cast<A>(w2[j]) +
              x3 * static_cast<A>(w3[j]);
    return;
  }
  for (Index r = 0; r < rows; ++r) {
    const T* w = W + r * ld;
    const A xr = x[r];
    for (Index j = from; j < out; ++j) y[j] += xr * static_cast<A>(w[j]);
  }
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
inline __m512 load16(const bf16* p) {
  // bf16 is the top half of a float: widen to 32 bits and shift.
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const f16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <class T>
inline constexpr bool has_avx512_path_v =
    std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;
#endif

/// y (out) = x (in) * W (in x out, row-major with leading dimension ld), accumulating in A.
/// Streams W once, four rows at a time, keeping y (<= a few hundred KB) in cache.
template <class T, class A>
void gemv(const A* x, const T* W, Index in, Index out, Index ld, A* y) {
  std::fill(y, y + out, A(0));
  Index i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<A, float> && has_avx512_path_v<T>) {
    const Index vec_end = out - out % 16;
    for (; i + 4 <= in; i += 4) {
      const T *w0 = W + i * ld, *w1 = w0 + ld, *w2 = w1 + ld, *w3 = w2 + ld;
      const __m512 x0 = _mm512_set1_ps(x[i]), x1 = _mm512_set1_ps(x[i + 1]);
      const __m512 x2 = _mm512_set1_ps(x[i + 2]), x3 = _mm512_set1_ps(x[i + 3]);
      for (Index j = 0; j < vec_end; j += 16) {
        __m512 acc = _mm512_loadu_ps(y + j);
        acc = _mm512_fmadd_ps(x0, load16(w0 + j), acc);
        acc = _mm512_fmadd_ps(x1, load16(w1 + j), acc);
        acc = _mm512_fmadd_ps(x2, load16(w2 + j), acc);
        acc = _mm512_fmadd_ps(x3, load16(w3 + j), acc);
        _mm512_storeu_ps(y + j, acc);
      }
      axpy_rows_portable(x + i, w0, 4, ld, vec_end, out, y);
    }
    for (; i < in; ++i) {
      const T* w0 = W + i * ld;
      const __m512 x0 = _mm512_set1_ps(x[i]);
      for (Index j = 0; j < vec_end; j += 16)
        _mm512_storeu_ps(y + j, _mm512_fmadd_ps(x0, load16(w0 + j), _mm512_loadu_ps(y + j)));
      axpy_rows_portable(x + i, w0, 1, ld, vec_end, out, y);
    }
    return;
  }
#endif
  for (; i + 4 <= in; i += 4) axpy_rows_portable(x + i, W + i * ld, 4, ld, 0, out, y);
  for (; i < in; ++i) axpy_rows_portable(x + i, W + i * ld, 1, ld, 0, out, y);
}

}  // namespace skipless_detail

/// Runs a skipless decoder-only model (cfg.block.kind skipless_serial or skipless_parallel) one
/// token at a time: embedding (+ learned positions) -> blocks -> optional final norm -> LM head.
/// Removed projections are empty matrices (see the header comment). Storage T, accumulation A.
template <class T, class A = accum_t<T>>
class SkiplessModel {
  static_assert(is_storage_type_v<T>,
                "SkiplessModel stores weights as float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(std::is_same_v<A, float> || std::is_same_v<A, double>,
                "SkiplessModel accumulates in float or double");

 public:
  /// Takes the weights (moved in; (in x out) layout) and allocates `capacity` tokens of KV cache
  /// per layer. Throws ShapeError / UnsupportedError naming the offending weight.
  SkiplessModel(ModelConfig cfg, ModelWeights<T> weights, Index capacity)
      : cfg_(std::move(cfg)), w_(std::move(weights)) {
    validate(capacity);
    const AttentionShape& s = cfg_.block.attn.shape;
    caches_.reserve(static_cast<size_t>(cfg_.layers));
    for (Index l = 0; l < cfg_.layers; ++l) caches_.emplace_back(s, capacity);
    freqs_ = cfg_.block.attn.rope.frequencies();
    cos_.resize(static_cast<Index>(freqs_.size()));
    sin_.resize(static_cast<Index>(freqs_.size()));
    x_.resize(s.d);
    y_.resize(s.d);
    q_.resize(s.q_width());
    k_.resize(s.kv_width());
    v_.resize(s.kv_width());
    att_.resize(s.q_width());
    u_.resize(std::max(s.d, s.q_width()));
    g_.resize(ffn_width_);
    up_.resize(ffn_width_);
    scores_.resize(capacity);
    logits_.resize(cfg_.vocab);
    scale_ = static_cast<A>(cfg_.block.attn.effective_scale());
  }

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights<T>& weights() const { return w_; }
  /// Tokens cached so far (the position of the next token).
  Index position() const { return caches_.empty() ? 0 : caches_.front().size(); }
  Index capacity() const { return caches_.empty() ? 0 : caches_.front().capacity(); }
  const std::vector<KVCache<A>>& caches() const { return caches_; }
  /// Forgets every cached token.
  void reset() {
    for (auto& c : caches_) c.clear();
  }
  /// Keeps the first n cached tokens of every layer (rolls back a speculative or benchmark step).
  void truncate(Index n) {
    ttx::detail::require(n >= 0 && n <= position(), ErrorKind::shape,
                         "kernel::SkiplessModel::truncate", "n expected in [0, ", position(),
                         "], got ", n);
    for (auto& c : caches_) {
      c.keys().truncate(n);
      c.values().truncate(n);
    }
  }

  /// One token at position(): appends to every layer's cache; returns the logits (1 x vocab),
  /// valid until the next call. CapacityError when the caches are full.
  const RowVector<A>& step(int token) {
    const char* fn = "kernel::SkiplessModel::step";
    ttx::detail::require(token >= 0 && token < cfg_.vocab, ErrorKind::shape, fn,
                         "token expected in [0, ", cfg_.vocab, "), got ", token);
    const Index pos = position();
    if (pos + 1 > capacity())
      ttx::detail::raise(ErrorKind::capacity,
                         ttx::detail::concat("ttx::", fn, ": cache capacity expected >= ", pos + 1,
                                             " tokens, got capacity ", capacity()));
    if (cfg_.learned_positions && pos >= cfg_.max_positions)
      ttx::detail::raise(ErrorKind::capacity,
                         ttx::detail::concat("ttx::", fn, ": position expected < max_positions=",
                                             cfg_.max_positions, ", got ", pos));
    x_ = w_.embedding.row(token).template cast<A>();
    if (cfg_.learned_positions) x_ += w_.positions.row(pos).template cast<A>();
    for (Index j = 0; j < cos_.size(); ++j) {
      const double angle = static_cast<double>(pos) * freqs_[static_cast<size_t>(j)];
      cos_(j) = static_cast<A>(std::cos(angle));
      sin_(j) = static_cast<A>(std::sin(angle));
    }
    for (Index l = 0; l < cfg_.layers; ++l) {
      block(l, pos);
      x_.swap(y_);
    }
    if (cfg_.final_norm) final_norm();
    project(x_, w_.lm_head, RowVector<T>(), logits_);
    return logits_;
  }

  /// Runs the tokens one after another (prefill or decode); logits of every token (n x vocab).
  RowMatrix<A> forward(const std::vector<int>& tokens) {
    RowMatrix<A> out(static_cast<Index>(tokens.size()), cfg_.vocab);
    for (Index r = 0; r < out.rows(); ++r) out.row(r) = step(tokens[static_cast<size_t>(r)]);
    return out;
  }

  /// Greedy decoding: the prompt, then `steps` tokens (ties go to the lower id, as the reference).
  /// Each chosen token's logits go to `logits` when given.
  std::vector<int> generate(const std::vector<int>& prompt, Index steps,
                            std::vector<RowVector<A>>* logits = nullptr) {
    // Each step's logits_ are the last token's; the loop copies what it keeps.
    return greedy_generate(
        [this](const std::vector<int>& tokens) -> const RowVector<A>& {
          for (int t : tokens) step(t);
          return logits_;
        },
        prompt, steps, logits, "kernel::SkiplessModel::generate");
  }

  /// Weight bytes one decode step reads: every block matrix and vector, the final norm, the LM
  /// head, and one embedding (and position) row.
  std::size_t weight_bytes_per_step() const {
    std::size_t n = 0;
    for (const auto& b : w_.blocks)
      n += static_cast<std::size_t>(b.attn.wq.size() + b.attn.wk.size() + b.attn.wv.size() +
                                    b.attn.wo.size() + b.attn.bq.size() + b.attn.bk.size() +
                                    b.attn.bv.size() + b.attn.bo.size() + b.ffn.w_in.size() +
                                    b.ffn.w_up.size() + b.ffn.w_out.size() + b.ffn.b_in.size() +
                                    b.ffn.b_up.size() + b.ffn.b_out.size());
    if (cfg_.final_norm)
      n += static_cast<std::size_t>(w_.final_norm.gain.size() + w_.final_norm.beta.size());
    n += static_cast<std::size_t>(w_.lm_head.size() +
                                  cfg_.block.attn.shape.d * (cfg_.learned_positions ? 2 : 1));
    return n * sizeof(T);
  }
  /// Multiply-adds x 2 of one decode step at cache length n (projections + attention).
  double flops_per_step(Index n) const {
    double f = 0;
    for (const auto& b : w_.blocks)
      f += 2.0 * static_cast<double>(b.attn.wq.size() + b.attn.wk.size() + b.attn.wv.size() +
                                     b.attn.wo.size() + b.ffn.w_in.size() + b.ffn.w_up.size() +
                                     b.ffn.w_out.size());
    const AttentionShape& s = cfg_.block.attn.shape;
    f += static_cast<double>(cfg_.layers) * 4.0 * static_cast<double>(n * s.q_width());
    return f + 2.0 * static_cast<double>(w_.lm_head.size());
  }

 private:
  // out = in * W + b; an empty W is the identity (a removed projection).
  void project(const RowVector<A>& in, const RowMatrix<T>& W, const RowVector<T>& b,
               RowVector<A>& out) const {
    if (W.size() == 0) {
      out.head(in.size()) = in;
    } else {
      skipless_detail::gemv(in.data(), W.data(), W.rows(), W.cols(), W.cols(), out.data());
    }
    if (b.size()) out.head(b.size()) += b.template cast<A>();
  }
  // Same, into the first `width` entries of a larger buffer.
  template <class Buf>
  void project_into(const A* in, Index in_width, const RowMatrix<T>& W, const RowVector<T>& b,
                    Buf& out) const {
    const Index width = W.size() ? W.cols() : in_width;
    if (W.size() == 0)
      std::copy(in, in + in_width, out.data());
    else
      skipless_detail::gemv(in, W.data(), W.rows(), W.cols(), W.cols(), out.data());
    if (b.size())
      for (Index j = 0; j < width; ++j) out(j) += static_cast<A>(b(j));
  }

  void rotate(RowVector<A>& v, Index heads) const {
    const RopeSpec& r = cfg_.block.attn.rope;
    if (!r.enabled()) return;
    const Index dk = cfg_.block.attn.shape.head_dim;
    for (Index h = 0; h < heads; ++h) {
      A* p = v.data() + h * dk;
      for (Index j = 0; j < r.pairs(); ++j) {
        const auto [a, b] = r.pair(j);
        const A xa = p[a], xb = p[b], c = cos_(j), s = sin_(j);
        p[a] = xa * c - xb * s;
        p[b] = xa * s + xb * c;
      }
    }
  }

  // Block l on x_ at position pos; result in y_.
  void block(Index l, Index pos) {
    const AttentionShape& s = cfg_.block.attn.shape;
    const BlockWeights<T>& b = w_.blocks[static_cast<size_t>(l)];
    project_into(x_.data(), s.d, b.attn.wq, b.attn.bq, q_);
    project_into(x_.data(), s.d, b.attn.wk, b.attn.bk, k_);
    project_into(x_.data(), s.d, b.attn.wv, b.attn.bv, v_);
    rotate(q_, s.heads);
    rotate(k_, s.kv_heads);
    KVCache<A>& cache = caches_[static_cast<size_t>(l)];
    cache.append(k_, v_);
    attend(cache, pos + 1);
    const bool serial = cfg_.block.kind == BlockKind::skipless_serial;
    // Attention output (after P, or concat(heads) when P was merged away) in u_.
    project_into(att_.data(), s.q_width(), b.attn.wo, b.attn.bo, u_);
    if (serial) {
      const Index in = b.attn.wo.size() ? s.d : s.q_width();
      ffn(b.ffn, u_.data(), in, y_);
    } else {
      ffn(b.ffn, x_.data(), s.d, y_);
      y_ += u_.head(s.d);
    }
  }

  void attend(const KVCache<A>& cache, Index n) {
    const AttentionShape& s = cfg_.block.attn.shape;
    const Index dk = s.head_dim, e = s.kv_width();
    const A* K = cache.keys().data();
    const A* V = cache.values().data();
    for (Index h = 0; h < s.heads; ++h) {
      const Index off = s.kv_head_of(h) * dk;
      const A* qh = q_.data() + h * dk;
      A m = -std::numeric_limits<A>::infinity();
      for (Index j = 0; j < n; ++j) {
        const A* kj = K + j * e + off;
        A dot = A(0);
        for (Index c = 0; c < dk; ++c) dot += qh[c] * kj[c];
        scores_(j) = dot * scale_;
        m = std::max(m, scores_(j));
      }
      A sum = A(0);
      for (Index j = 0; j < n; ++j) {
        scores_(j) = std::exp(scores_(j) - m);
        sum += scores_(j);
      }
      A* out = att_.data() + h * dk;
      std::fill(out, out + dk, A(0));
      for (Index j = 0; j < n; ++j) {
        const A p = scores_(j) / sum;
        const A* vj = V + j * e + off;
        for (Index c = 0; c < dk; ++c) out[c] += p * vj[c];
      }
    }
  }

  void ffn(const FfnWeights<T>& f, const A* in, Index in_width, RowVector<A>& out) {
    const Activation act = cfg_.block.ffn.act;
    project_into(in, in_width, f.w_in, f.b_in, g_);
    for (Index j = 0; j < ffn_width_; ++j) g_(j) = activate<A>(act, g_(j));
    if (cfg_.block.ffn.kind == FfnKind::glu) {
      project_into(in, in_width, f.w_up, f.b_up, up_);
      g_.array() *= up_.array();
    }
    project(g_, f.w_out, f.b_out, out);
  }

  void final_norm() {
    const NormSpec& spec = cfg_.final_norm_spec;
    const Index n = x_.size();
    if (spec.kind == NormKind::rms) {
      A ss = A(0);
      for (Index i = 0; i < n; ++i) ss += x_(i) * x_(i);
      x_ /= std::sqrt(ss / A(n) + A(spec.eps));
    } else {
      const A mean = x_.sum() / A(n);
      x_.array() -= mean;
      const A var = x_.squaredNorm() / A(n);
      x_ /= std::sqrt(var + A(spec.eps));
    }
    RowVector<A> g = w_.final_norm.gain.template cast<A>();
    if (spec.gain == GainConvention::one_plus) g.array() += A(1);
    x_.array() *= g.array();
    if (w_.final_norm.beta.size()) x_ += w_.final_norm.beta.template cast<A>();
  }

  void validate(Index capacity) {
    const char* fn = "kernel::SkiplessModel";
    const AttentionShape& s = cfg_.block.attn.shape;
    const BlockKind kind = cfg_.block.kind;
    ttx::detail::require(
        kind == BlockKind::skipless_serial || kind == BlockKind::skipless_parallel,
        ErrorKind::unsupported, fn,
        "cfg.block.kind expected skipless_serial or skipless_parallel (no residual, "
        "no norm), got a pre-norm residual block kind");
    s.validate(fn);
    cfg_.block.attn.rope.validate(fn, s.head_dim);
    ttx::detail::require(capacity > 0, ErrorKind::shape, fn, "capacity expected > 0, got ",
                         capacity);
    ttx::detail::require(cfg_.vocab > 0, ErrorKind::shape, fn, "cfg.vocab expected > 0, got ",
                         cfg_.vocab);
    ttx::detail::check_dim(fn, "weights.blocks.size() (= cfg.layers)", cfg_.layers,
                           static_cast<Index>(w_.blocks.size()));
    ttx::detail::check_shape(fn, "weights.embedding", w_.embedding, cfg_.vocab, s.d);
    ttx::detail::check_shape(fn, "weights.lm_head", w_.lm_head, s.d, cfg_.vocab);
    if (cfg_.learned_positions)
      ttx::detail::check_shape(fn, "weights.positions", w_.positions, cfg_.max_positions, s.d);
    if (cfg_.final_norm) {
      ttx::detail::check_dim(fn, "weights.final_norm.gain.size()", s.d, w_.final_norm.gain.size());
      if (w_.final_norm.beta.size())
        ttx::detail::check_dim(fn, "weights.final_norm.beta.size()", s.d,
                               w_.final_norm.beta.size());
    }
    const bool serial = kind == BlockKind::skipless_serial;
    ffn_width_ = w_.blocks.empty() ? 0 : w_.blocks.front().ffn.w_out.rows();
    for (size_t l = 0; l < w_.blocks.size(); ++l) {
      const auto& b = w_.blocks[l];
      auto name = [&](const char* what) { return ttx::detail::concat("blocks[", l, "].", what); };
      auto check_proj = [&](const RowMatrix<T>& W, const RowVector<T>& bias, const char* what,
                            Index in, Index out) {
        if (W.size() == 0) {
          ttx::detail::require(in == out, ErrorKind::shape, fn, name(what),
                               " is empty (the identity, a removed "
                               "projection), which needs a square shape: ",
                               in, " inputs expected = ", out, " outputs");
        } else {
          ttx::detail::check_shape(fn, name(what).c_str(), W, in, out);
        }
        if (bias.size())
          ttx::detail::check_dim(fn, (name(what) + " bias size").c_str(), out, bias.size());
      };
      check_proj(b.attn.wq, b.attn.bq, "attn.wq", s.d, s.q_width());
      check_proj(b.attn.wk, b.attn.bk, "attn.wk", s.d, s.kv_width());
      check_proj(b.attn.wv, b.attn.bv, "attn.wv", s.d, s.kv_width());
      // Serial blocks may drop P (merged into the FFN input): the FFN then reads e_q values.
      Index ffn_in = s.d;
      if (serial && b.attn.wo.size() == 0) {
        ffn_in = s.q_width();
        if (b.attn.bo.size())
          ttx::detail::check_dim(fn, name("attn.bo size").c_str(), s.q_width(), b.attn.bo.size());
      } else {
        check_proj(b.attn.wo, b.attn.bo, "attn.wo", s.q_width(), s.d);
      }
      ttx::detail::require(b.ffn.w_out.rows() == ffn_width_ && ffn_width_ > 0, ErrorKind::shape, fn,
                           name("ffn.w_out"), " rows expected ", ffn_width_,
                           " (> 0, the same in every block), got ", b.ffn.w_out.rows());
      ttx::detail::check_shape(fn, name("ffn.w_in").c_str(), b.ffn.w_in, ffn_in, ffn_width_);
      ttx::detail::check_shape(fn, name("ffn.w_out").c_str(), b.ffn.w_out, ffn_width_, s.d);
      if (cfg_.block.ffn.kind == FfnKind::glu)
        ttx::detail::check_shape(fn, name("ffn.w_up").c_str(), b.ffn.w_up, ffn_in, ffn_width_);
      if (b.ffn.b_in.size())
        ttx::detail::check_dim(fn, name("ffn.b_in size").c_str(), ffn_width_, b.ffn.b_in.size());
      if (b.ffn.b_up.size())
        ttx::detail::check_dim(fn, name("ffn.b_up size").c_str(), ffn_width_, b.ffn.b_up.size());
      if (b.ffn.b_out.size())
        ttx::detail::check_dim(fn, name("ffn.b_out size").c_str(), s.d, b.ffn.b_out.size());
    }
  }

  ModelConfig cfg_;
  ModelWeights<T> w_;
  std::vector<KVCache<A>> caches_;
  std::vector<double> freqs_;
  Index ffn_width_ = 0;
  A scale_ = A(1);
  RowVector<A> cos_, sin_, x_, y_, q_, k_, v_, att_, u_, g_, up_, scores_, logits_;
};

}  // namespace ttx::kernel
