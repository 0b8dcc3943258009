// Runtime of an encoder–decoder decoder stack (Whisper, T5) on the weights planned by
// rewrite/encdec.hpp: one generated token per call, for a batch of sequences (each with its own
// caches), with the decoder self-attention on a vanilla KV cache or an X-cache, and the
// cross-attention on
//   * CrossForm::kv              a vanilla cross KV cache per layer (the baseline),
//   * CrossForm::keys            a K-only cross cache per layer (V = K W_KV),
//   * CrossForm::shared_encoder  one E-cache shared by every layer: no cross cache, no cross phase,
//   * CrossForm::hybrid          layer 0's cross K-cache K1 as every layer's basis.
// Caches are stored as T (float, double, bfloat16, half); arithmetic is in accum_t<T>.
// Every attention is one pass over its cache: tiles of kTile rows, online softmax per head.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ttx/cache/e_cache.hpp"
#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/row_cache.hpp"
#include "ttx/core/activation.hpp"
#include "ttx/core/encdec_weights.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/rewrite/encdec.hpp"

namespace ttx::kernel {

namespace detail {

constexpr Index kTile = 128;  // keys per tile: a 128 x 512 float tile is 256 KB (stays in L2)

/// Rows [first, first + count) of a cache as A values: the cache itself when T == A, else
/// converted into `buf`.
template <class A, class T>
Eigen::Map<const RowMatrix<A>> tile_as(const RowCache<T>& c, Index first, Index count,
                                       RowMatrix<A>& buf) {
  if constexpr (std::is_same_v<T, A>) {
    return {c.row_ptr(first), count, c.width()};
  } else {
    buf.resize(count, c.width());
    buf = Eigen::Map<const RowMatrix<T>>(c.row_ptr(first), count, c.width()).template cast<A>();
    return {buf.data(), count, c.width()};
  }
}

/// One pass over n keys in tiles: score(j0, t, S) writes the h x t raw scores of keys
/// [j0, j0 + t); bias (h x n, row stride bias_stride) is added; an online softmax per head
/// rescales `acc` (h x ...) and accumulate(j0, t, P) adds the tile's weights P (h x t) times its
/// values. On return acc holds softmax-weighted sums.
template <class A, class ScoreFn, class AccFn>
void online_pass(Index n, Index heads, const A* bias, Index bias_stride, ScoreFn&& score,
                 AccFn&& accumulate, RowMatrix<A>& acc) {
  const A ninf = -std::numeric_limits<A>::infinity();
  std::vector<A> m(static_cast<size_t>(heads), ninf), l(static_cast<size_t>(heads), A(0));
  acc.setZero();
  RowMatrix<A> S(heads, kTile);
  for (Index j0 = 0; j0 < n; j0 += kTile) {
    const Index t = std::min(kTile, n - j0);
    auto Sc = S.leftCols(t);
    score(j0, t, Sc);
    if (bias)
      Sc += Eigen::Map<const RowMatrix<A>, 0, Eigen::OuterStride<>>(
          bias + j0, heads, t, Eigen::OuterStride<>(bias_stride));
    for (Index i = 0; i < heads; ++i) {
      const size_t si = static_cast<size_t>(i);
      const A mn = std::max(m[si], Sc.row(i).maxCoeff());
      if (mn == ninf) {  // every score so far masked
        Sc.row(i).setZero();
        continue;
      }
      const A f = m[si] == ninf ? A(0) : std::exp(m[si] - mn);
      Sc.row(i) = (Sc.row(i).array() - mn).exp().matrix();
      l[si] = l[si] * f + Sc.row(i).sum();
      if (f != A(1)) acc.row(i) *= f;
      m[si] = mn;
    }
    accumulate(j0, t, Sc);
  }
  for (Index i = 0; i < heads; ++i)
    if (l[static_cast<size_t>(i)] > A(0)) acc.row(i) /= l[static_cast<size_t>(i)];
}

template <class A>
void check_bias(const char* fn, const A* bias, Index stride, Index n) {
  if (bias)
    ttx::detail::require(
        stride >= n, ErrorKind::shape, fn,
        ttx::detail::concat("bias_stride expected >= cached rows ", n, ", got ", stride));
}

}  // namespace detail

/// Inputs form (X-cache / shared encoder cache), all heads of one query:
///   Qt_i = q_i W_K,g(i)^T, s_i = softmax(Qt_i R^T + bias_i), heads_i = (s_i R) W_V,g(i).
/// q (1 x e_q) = x W_Q + b_Q with the score scale folded (InputsAttention::wq, bq); rows R
/// (n x w, w = w.row_width); bias: nullptr or h x n additive scores, row stride bias_stride;
/// heads (1 x e_q) before W_O.
template <class T, class A>
void inputs_heads(const Eigen::Ref<const RowVector<A>>& q, const rewrite::InputsAttention<A>& w,
                  const RowCache<T>& rows, const A* bias, Index bias_stride,
                  Eigen::Ref<RowVector<A>> heads) {
  const char* fn = "kernel::inputs_heads";
  const AttentionShape& s = w.shape;
  ttx::detail::check_dim(fn, "q.size()", s.q_width(), q.size());
  ttx::detail::check_dim(fn, "rows.width() (= row_width)", w.row_width, rows.width());
  ttx::detail::check_dim(fn, "heads.size()", s.q_width(), heads.size());
  ttx::detail::require(rows.size() > 0, ErrorKind::shape, fn, "rows expected >= 1, got 0");
  detail::check_bias(fn, bias, bias_stride, rows.size());
  const Index dk = s.head_dim;
  RowMatrix<A> Qt(s.heads, w.row_width);
  for (Index i = 0; i < s.heads; ++i)
    Qt.row(i).noalias() =
        q.segment(i * dk, dk) * w.wk.middleCols(s.kv_head_of(i) * dk, dk).transpose();
  RowMatrix<A> buf, U(s.heads, w.row_width);
  const A* tile = nullptr;
  detail::online_pass<A>(
      rows.size(), s.heads, bias, bias_stride,
      [&](Index j0, Index t, auto& S) {
        const auto R = detail::tile_as<A>(rows, j0, t, buf);
        tile = R.data();
        S.noalias() = Qt * R.transpose();
      },
      [&](Index, Index t, const auto& P) {
        U.noalias() += P * Eigen::Map<const RowMatrix<A>>(tile, t, w.row_width);
      },
      U);
  for (Index i = 0; i < s.heads; ++i)
    heads.segment(i * dk, dk).noalias() = U.row(i) * w.wv.middleCols(s.kv_head_of(i) * dk, dk);
}

/// Keys form (cross K-only cache), all heads of one query:
///   s_i = softmax(q_i K_g(i)^T + bias_i), heads_i = (s_i K) W_KV,g(i).
/// q (1 x e_q) with the score scale folded (KeysAttention::wq, bq); keys K (n x e); bias as
/// inputs_heads.
template <class T, class A>
void keys_heads(const Eigen::Ref<const RowVector<A>>& q, const rewrite::KeysAttention<A>& w,
                const RowCache<T>& keys, const A* bias, Index bias_stride,
                Eigen::Ref<RowVector<A>> heads) {
  const char* fn = "kernel::keys_heads";
  const AttentionShape& s = w.shape;
  const Index dk = s.head_dim, e = s.kv_width();
  ttx::detail::check_dim(fn, "q.size()", s.q_width(), q.size());
  ttx::detail::check_dim(fn, "keys.width() (= kv_width)", e, keys.width());
  ttx::detail::check_dim(fn, "heads.size()", s.q_width(), heads.size());
  ttx::detail::require(keys.size() > 0, ErrorKind::shape, fn, "keys expected >= 1, got 0");
  detail::check_bias(fn, bias, bias_stride, keys.size());
  RowMatrix<A> buf, U(s.heads, e);
  const A* tile = nullptr;
  detail::online_pass<A>(
      keys.size(), s.heads, bias, bias_stride,
      [&](Index j0, Index t, auto& S) {
        const auto K = detail::tile_as<A>(keys, j0, t, buf);
        tile = K.data();
        for (Index i = 0; i < s.heads; ++i)
          S.row(i).noalias() =
              q.segment(i * dk, dk) * K.middleCols(s.kv_head_of(i) * dk, dk).transpose();
      },
      [&](Index, Index t, const auto& P) {
        U.noalias() += P * Eigen::Map<const RowMatrix<A>>(tile, t, e);
      },
      U);
  for (Index i = 0; i < s.heads; ++i)
    heads.segment(i * dk, dk).noalias() = U.row(i) * w.wkv.middleCols(s.kv_head_of(i) * dk, dk);
}

/// Vanilla attention over a KV cache: heads_i = softmax(q_i K_g(i)^T + bias_i) V_g(i).
/// q (1 x e_q) already multiplied by the score scale.
template <class T, class A>
void kv_heads(const Eigen::Ref<const RowVector<A>>& q, const KVCache<T>& cache, const A* bias,
              Index bias_stride, Eigen::Ref<RowVector<A>> heads) {
  const char* fn = "kernel::kv_heads";
  const AttentionShape& s = cache.shape();
  const Index dk = s.head_dim;
  ttx::detail::check_dim(fn, "q.size()", s.q_width(), q.size());
  ttx::detail::check_dim(fn, "heads.size()", s.q_width(), heads.size());
  ttx::detail::require(cache.size() > 0, ErrorKind::shape, fn, "cache rows expected >= 1, got 0");
  detail::check_bias(fn, bias, bias_stride, cache.size());
  RowMatrix<A> kbuf, vbuf, O(s.heads, dk);
  detail::online_pass<A>(
      cache.size(), s.heads, bias, bias_stride,
      [&](Index j0, Index t, auto& S) {
        const auto K = detail::tile_as<A>(cache.keys(), j0, t, kbuf);
        for (Index i = 0; i < s.heads; ++i)
          S.row(i).noalias() =
              q.segment(i * dk, dk) * K.middleCols(s.kv_head_of(i) * dk, dk).transpose();
      },
      [&](Index j0, Index t, const auto& P) {
        const auto V = detail::tile_as<A>(cache.values(), j0, t, vbuf);
        for (Index i = 0; i < s.heads; ++i)
          O.row(i).noalias() += P.row(i) * V.middleCols(s.kv_head_of(i) * dk, dk);
      },
      O);
  for (Index i = 0; i < s.heads; ++i) heads.segment(i * dk, dk) = O.row(i);
}

// ----------------------------------------------------------------------------------------------
// Whole decoder stack.

/// One sequence's context memory. Which members are used depends on the plan's forms:
/// self_kv (SelfForm::kv) or self_rows (SelfForm::inputs, the X-cache) per layer; cross_kv
/// (CrossForm::kv) or cross_keys (CrossForm::keys) per layer, `encoder` (shared_encoder, one
/// E-cache) or `basis` (hybrid, one K1 cache).
template <class T>
struct EncDecState {
  Index position = 0;
  bool encoded = false;
  std::vector<KVCache<T>> self_kv;
  std::vector<RowCache<T>> self_rows;
  std::vector<KVCache<T>> cross_kv;
  std::vector<CrossKCache<T>> cross_keys;
  std::vector<ECache<T>> encoder;     ///< 0 or 1
  std::vector<CrossKCache<T>> basis;  ///< 0 or 1
  Index layers() const { return static_cast<Index>(std::max(self_kv.size(), self_rows.size())); }
  std::size_t self_bytes() const {
    std::size_t b = 0;
    for (const auto& c : self_kv) b += c.bytes();
    for (const auto& c : self_rows) b += c.bytes();
    return b;
  }
  std::size_t cross_bytes() const {
    std::size_t b = 0;
    for (const auto& c : cross_kv) b += c.bytes();
    for (const auto& c : cross_keys) b += c.bytes();
    for (const auto& c : encoder) b += c.bytes();
    for (const auto& c : basis) b += c.bytes();
    return b;
  }
  std::size_t bytes() const { return self_bytes() + cross_bytes(); }
};

namespace detail {

template <class A>
void norm_rows(const RowMatrix<A>& X, const NormWeights<A>& w, const NormSpec& spec,
               RowMatrix<A>& Y) {
  const Index n = X.cols();
  Y.resize(X.rows(), n);
  for (Index r = 0; r < X.rows(); ++r) {
    if (spec.kind == NormKind::rms) {
      const A ms = X.row(r).squaredNorm() / A(n);
      Y.row(r) = X.row(r) / std::sqrt(ms + A(spec.eps));
    } else {
      const A mean = X.row(r).sum() / A(n);
      Y.row(r) = X.row(r).array() - mean;
      const A var = Y.row(r).squaredNorm() / A(n);
      Y.row(r) /= std::sqrt(var + A(spec.eps));
    }
  }
  if (spec.gain == GainConvention::one_plus)
    Y.array().rowwise() *= (w.gain.array() + A(1));
  else
    Y.array().rowwise() *= w.gain.array();
  if (w.beta.size()) Y.rowwise() += w.beta;
}

template <class A>
void linear_rows(const RowMatrix<A>& X, const RowMatrix<A>& W, const RowVector<A>& b,
                 RowMatrix<A>& Y) {
  Y.noalias() = X * W;
  if (b.size()) Y.rowwise() += b;
}

}  // namespace detail

template <class T>
class EncDecDecoder {
 public:
  using A = accum_t<T>;
  using Plan = rewrite::EncDecDecoderPlan<A>;

  explicit EncDecDecoder(Plan plan) : p_(std::move(plan)) {
    ttx::detail::check_dim("kernel::EncDecDecoder", "plan.layers.size() (= config.layers)",
                           p_.config.layers, p_.layers.size());
  }
  const Plan& plan() const { return p_; }
  rewrite::EncDecForms forms() const { return p_.forms; }

  /// A sequence's caches: encoder rows up to `encoder_capacity` (Whisper 1500), decoder tokens up
  /// to `self_capacity` (Whisper 448).
  EncDecState<T> make_state(Index encoder_capacity, Index self_capacity) const {
    const char* fn = "kernel::EncDecDecoder::make_state";
    ttx::detail::require(encoder_capacity > 0 && self_capacity > 0, ErrorKind::shape, fn,
                         ttx::detail::concat("capacities expected > 0, got encoder_capacity ",
                                             encoder_capacity, ", self_capacity ", self_capacity));
    const auto& cfg = p_.config;
    const AttentionShape &ss = cfg.block.self_attn.shape, &cs = cfg.block.cross_attn.shape;
    EncDecState<T> st;
    const size_t L = static_cast<size_t>(cfg.layers);
    if (p_.forms.self == rewrite::SelfForm::kv) {
      st.self_kv.reserve(L);
      for (size_t l = 0; l < L; ++l) st.self_kv.emplace_back(ss, self_capacity);
    } else {
      st.self_rows.reserve(L);
      for (size_t l = 0; l < L; ++l) st.self_rows.emplace_back(ss.d, self_capacity);
    }
    switch (p_.forms.cross) {
      case rewrite::CrossForm::kv:
        st.cross_kv.reserve(L);
        for (size_t l = 0; l < L; ++l) st.cross_kv.emplace_back(cs, encoder_capacity);
        break;
      case rewrite::CrossForm::keys:
        st.cross_keys.reserve(L);
        for (size_t l = 0; l < L; ++l) st.cross_keys.emplace_back(cs, encoder_capacity);
        break;
      case rewrite::CrossForm::shared_encoder:
        st.encoder.emplace_back(cs.d, encoder_capacity);
        break;
      case rewrite::CrossForm::hybrid:
        st.basis.emplace_back(cs, encoder_capacity);
        break;
    }
    return st;
  }

  /// Takes a new encoder output E (p x d, any scalar) for `st` and forgets its decoded tokens.
  /// The cross phase: kv builds K, V per layer; keys builds K per layer; hybrid builds K1 once;
  /// shared_encoder only stores E.
  template <class D>
  void encode(EncDecState<T>& st, const Eigen::MatrixBase<D>& E) const {
    const char* fn = "kernel::EncDecDecoder::encode";
    check_state(fn, st);
    const Index d = p_.config.block.cross_attn.shape.d;
    ttx::detail::check_dim(fn, "E.cols() (= d)", d, E.cols());
    ttx::detail::require(E.rows() > 0, ErrorKind::shape, fn,
                         "E.rows() (encoder length) expected >= 1, got 0");
    const RowMatrix<A> Ea = E.template cast<A>();
    RowMatrix<A> K, V;
    switch (p_.forms.cross) {
      case rewrite::CrossForm::kv:
        for (Index l = 0; l < p_.config.layers; ++l) {
          const auto& w = layer(l).cross_kv;
          auto& c = st.cross_kv[static_cast<size_t>(l)];
          capacity_check(fn, "cross cache", Ea.rows(), c.capacity());
          detail::linear_rows(Ea, w.wk, w.bk, K);
          detail::linear_rows(Ea, w.wv, w.bv, V);
          c.clear();
          c.append(K, V);
        }
        break;
      case rewrite::CrossForm::keys:
        for (Index l = 0; l < p_.config.layers; ++l) {
          K.noalias() = Ea * layer(l).cross_keys.wk;
          st.cross_keys[static_cast<size_t>(l)].assign(K);
        }
        break;
      case rewrite::CrossForm::shared_encoder:
        st.encoder[0].assign(Ea);
        break;
      case rewrite::CrossForm::hybrid:
        K.noalias() = Ea * layer(0).cross_keys.wk;
        st.basis[0].assign(K);
        break;
    }
    for (auto& c : st.self_kv) c.clear();
    for (auto& c : st.self_rows) c.clear();
    st.position = 0;
    st.encoded = true;
  }

  /// One token for each sequence: tokens[b] goes to states[b] at its position; returns the
  /// logits (batch x vocab). Weights are read once for the whole batch; each sequence attends
  /// over its own caches.
  RowMatrix<A> step(const std::vector<EncDecState<T>*>& states,
                    const std::vector<int>& tokens) const {
    const char* fn = "kernel::EncDecDecoder::step";
    const auto& cfg = p_.config;
    ttx::detail::check_dim(fn, "tokens.size() (= states.size())", states.size(), tokens.size());
    const Index B = static_cast<Index>(states.size());
    const Index d = cfg.block.self_attn.shape.d;
    RowMatrix<A> X(B, d);
    for (Index b = 0; b < B; ++b) {
      EncDecState<T>& st = *states[static_cast<size_t>(b)];
      check_state(fn, st);
      ttx::detail::require(st.encoded, ErrorKind::shape, fn,
                           "state expected an encoder output (call encode first), got none");
      const Index cap = p_.forms.self == rewrite::SelfForm::kv ? st.self_kv[0].capacity()
                                                               : st.self_rows[0].capacity();
      if (st.position >= cap)
        ttx::detail::raise(ErrorKind::capacity,
                           ttx::detail::concat("ttx::", fn, ": self cache capacity expected >= ",
                                               st.position + 1, " tokens, got capacity ", cap));
      const int t = tokens[static_cast<size_t>(b)];
      ttx::detail::require(
          t >= 0 && t < cfg.vocab, ErrorKind::shape, fn,
          ttx::detail::concat("token id expected in [0, ", cfg.vocab, "), got ", t));
      X.row(b) = p_.embedding.row(t);
      if (cfg.learned_positions) {
        if (st.position >= cfg.max_positions)
          ttx::detail::raise(
              ErrorKind::capacity,
              ttx::detail::concat("ttx::", fn, ": position expected < max_positions=",
                                  cfg.max_positions, ", got ", st.position));
        X.row(b) += p_.positions.row(st.position);
      }
    }
    RowMatrix<A> N, Q, H, Y, K, V;
    std::vector<A> bias;
    const AttentionShape &ss = cfg.block.self_attn.shape, &cs = cfg.block.cross_attn.shape;
    for (Index l = 0; l < cfg.layers; ++l) {
      const auto& Lp = layer(l);
      const size_t ls = static_cast<size_t>(l);
      // Self-attention.
      detail::norm_rows(X, Lp.norm_self, cfg.block.norm, N);
      H.resize(B, ss.q_width());
      if (p_.forms.self == rewrite::SelfForm::kv) {
        const auto& w = Lp.self_kv;
        detail::linear_rows(N, w.wq, w.bq, Q);
        Q *= A(cfg.block.self_attn.effective_scale());
        detail::linear_rows(N, w.wk, w.bk, K);
        detail::linear_rows(N, w.wv, w.bv, V);
        for (Index b = 0; b < B; ++b) {
          EncDecState<T>& st = *states[static_cast<size_t>(b)];
          st.self_kv[ls].append(K.row(b), V.row(b));
          const A* bp = self_bias(st.position, bias);
          kv_heads<T, A>(Q.row(b), st.self_kv[ls], bp, st.position + 1, H.row(b));
        }
        detail::linear_rows(H, w.wo, w.bo, Y);
      } else {
        const auto& w = Lp.self_inputs;
        detail::linear_rows(N, w.wq, w.bq, Q);
        for (Index b = 0; b < B; ++b) {
          EncDecState<T>& st = *states[static_cast<size_t>(b)];
          st.self_rows[ls].append(N.row(b));
          const A* bp = self_bias(st.position, bias);
          inputs_heads<T, A>(Q.row(b), w, st.self_rows[ls], bp, st.position + 1, H.row(b));
        }
        detail::linear_rows(H, w.wo, w.bo, Y);
      }
      X += Y;
      // Cross-attention.
      detail::norm_rows(X, Lp.norm_cross, cfg.block.norm, N);
      H.resize(B, cs.q_width());
      const bool keys_layer = p_.forms.cross == rewrite::CrossForm::keys ||
                              (p_.forms.cross == rewrite::CrossForm::hybrid && l == 0);
      if (p_.forms.cross == rewrite::CrossForm::kv) {
        const auto& w = Lp.cross_kv;
        detail::linear_rows(N, w.wq, w.bq, Q);
        Q *= A(cfg.block.cross_attn.effective_scale());
        for (Index b = 0; b < B; ++b)
          kv_heads<T, A>(Q.row(b), states[static_cast<size_t>(b)]->cross_kv[ls], nullptr, 0,
                         H.row(b));
        detail::linear_rows(H, w.wo, w.bo, Y);
      } else if (keys_layer) {
        const auto& w = Lp.cross_keys;
        detail::linear_rows(N, w.wq, w.bq, Q);
        for (Index b = 0; b < B; ++b) {
          const EncDecState<T>& st = *states[static_cast<size_t>(b)];
          const RowCache<T>& keys = p_.forms.cross == rewrite::CrossForm::keys
                                        ? st.cross_keys[ls].keys()
                                        : st.basis[0].keys();
          keys_heads<T, A>(Q.row(b), w, keys, nullptr, 0, H.row(b));
        }
        detail::linear_rows(H, w.wo, w.bo, Y);
      } else {
        const auto& w = Lp.cross_inputs;
        detail::linear_rows(N, w.wq, w.bq, Q);
        for (Index b = 0; b < B; ++b) {
          const EncDecState<T>& st = *states[static_cast<size_t>(b)];
          const RowCache<T>& rows = p_.forms.cross == rewrite::CrossForm::shared_encoder
                                        ? st.encoder[0].rows()
                                        : st.basis[0].keys();
          inputs_heads<T, A>(Q.row(b), w, rows, nullptr, 0, H.row(b));
        }
        detail::linear_rows(H, w.wo, w.bo, Y);
      }
      X += Y;
      // FFN.
      detail::norm_rows(X, Lp.norm_ffn, cfg.block.norm, N);
      detail::linear_rows(N, Lp.ffn.w_in, Lp.ffn.b_in, H);
      const Activation act = cfg.block.ffn.act;
      H = H.unaryExpr([act](A v) { return activate(act, v); });
      if (cfg.block.ffn.kind == FfnKind::glu) {
        detail::linear_rows(N, Lp.ffn.w_up, Lp.ffn.b_up, K);
        H.array() *= K.array();
      }
      detail::linear_rows(H, Lp.ffn.w_out, Lp.ffn.b_out, Y);
      X += Y;
    }
    for (auto* st : states) ++st->position;
    detail::norm_rows(X, p_.final_norm, cfg.final_norm_spec, N);
    RowMatrix<A> logits(B, cfg.vocab);
    logits.noalias() = N * p_.lm_head;
    return logits;
  }

  /// One token for one sequence; logits (1 x vocab).
  RowVector<A> step(EncDecState<T>& st, int token) const {
    return step(std::vector<EncDecState<T>*>{&st}, std::vector<int>{token});
  }

  /// Greedy decoding after encode(): feeds the prompt token by token, then `steps` tokens; the
  /// logits that chose each token go to `logits` when given.
  std::vector<int> generate(EncDecState<T>& st, const std::vector<int>& prompt, Index steps,
                            std::vector<RowVector<A>>* logits = nullptr) const {
    ttx::detail::require(!prompt.empty(), ErrorKind::shape, "kernel::EncDecDecoder::generate",
                         "prompt expected at least 1 token, got 0");
    RowVector<A> L;
    for (int t : prompt) L = step(st, t);
    std::vector<int> out;
    for (Index s = 0; s < steps; ++s) {
      Index best = 0;
      L.maxCoeff(&best);
      if (logits) logits->push_back(L);
      out.push_back(static_cast<int>(best));
      if (s + 1 < steps) L = step(st, static_cast<int>(best));
    }
    return out;
  }

 private:
  const rewrite::EncDecLayerPlan<A>& layer(Index l) const {
    return p_.layers[static_cast<size_t>(l)];
  }
  static void capacity_check(const char* fn, const char* what, Index need, Index cap) {
    if (need > cap)
      ttx::detail::raise(ErrorKind::capacity, ttx::detail::concat("ttx::", fn, ": ", what,
                                                                  " capacity expected >= ", need,
                                                                  " rows, got capacity ", cap));
  }
  void check_state(const char* fn, const EncDecState<T>& st) const {
    const size_t L = static_cast<size_t>(p_.config.layers);
    const bool self_ok =
        p_.forms.self == rewrite::SelfForm::kv ? st.self_kv.size() == L : st.self_rows.size() == L;
    bool cross_ok = false;
    switch (p_.forms.cross) {
      case rewrite::CrossForm::kv:
        cross_ok = st.cross_kv.size() == L;
        break;
      case rewrite::CrossForm::keys:
        cross_ok = st.cross_keys.size() == L;
        break;
      case rewrite::CrossForm::shared_encoder:
        cross_ok = st.encoder.size() == 1;
        break;
      case rewrite::CrossForm::hybrid:
        cross_ok = st.basis.size() == 1;
        break;
    }
    ttx::detail::require(
        self_ok && cross_ok, ErrorKind::shape, fn,
        ttx::detail::concat("state expected caches for ", L,
                            " layers in forms self=", rewrite::form_name(p_.forms.self),
                            " cross=", rewrite::form_name(p_.forms.cross), ", got ", st.layers(),
                            " self layers (make states with this decoder's make_state)"));
  }
  /// T5's self-attention bias for a query at `pos` (h x (pos + 1)), or nullptr.
  const A* self_bias(Index pos, std::vector<A>& buf) const {
    const auto& cfg = p_.config;
    if (cfg.relative_buckets <= 0) return nullptr;
    const Index h = cfg.block.self_attn.shape.heads, n = pos + 1;
    buf.resize(static_cast<size_t>(h * n));
    for (Index j = 0; j < n; ++j) {
      const Index bucket =
          t5_relative_bucket(pos, j, cfg.relative_buckets, cfg.relative_max_distance);
      for (Index i = 0; i < h; ++i)
        buf[static_cast<size_t>(i * n + j)] = p_.relative_bias(bucket, i);
    }
    return buf.data();
  }

  Plan p_;
};

}  // namespace ttx::kernel
