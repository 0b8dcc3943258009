// Runtime of an encoder–decoder decoder stack (Whisper, T5) on the weights planned by
// rewrite/encdec.hpp: one generated token per call, for a batch of sequences (each with its own
// caches), with the decoder self-attention on a vanilla KV cache or an X-cache (the layer's normed
// inputs; Whisper and T5 have no RoPE), and the cross-attention on
//   * CrossForm::kv              a vanilla cross KV cache per layer (the baseline),
//   * CrossForm::keys            a K-only cross cache per layer (V = K W_KV),
//   * CrossForm::shared_encoder  one E-cache shared by every layer: no cross cache, no cross phase,
//   * CrossForm::hybrid          layer 0's cross K-cache K1 as every layer's basis.
// Every attention is one streaming pass over its cache by the kernels of kernel/decode.hpp
// (decode_vanilla, decode_weighted_keys, decode_weighted_rows), so the vanilla and the slim forms
// run the same tuned code. As in kernel/slim_attention.hpp, caches are stored as T (float, double,
// bfloat16, half) and all arithmetic is float on float weights (EncDecDecoderPlan<float>).
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
#include "ttx/kernel/decode.hpp"
#include "ttx/rewrite/encdec.hpp"

namespace ttx::kernel {

namespace detail {

/// Scratch of one attention call (kept by the caller across sequences and layers).
struct EncDecScratch {
  RowMatrix<float> qt, u;
  std::vector<float> bias;
};

inline DecodeOptions encdec_options(double scale, const float* bias, int threads) {
  DecodeOptions o;
  o.scale = scale;
  o.threads = threads;
  o.score_bias = bias;
  return o;
}

template <class T>
void inputs_heads(const Eigen::Ref<const RowVector<float>>& q,
                  const rewrite::InputsAttention<float>& w, const RowCache<T>& rows,
                  const float* bias, Eigen::Ref<RowVector<float>> heads, int threads,
                  EncDecScratch& sc) {
  const AttentionShape& s = w.shape;
  const Index dk = s.head_dim;
  sc.qt.resize(s.heads, w.row_width);
  sc.u.resize(s.heads, w.row_width);
  for (Index i = 0; i < s.heads; ++i)
    sc.qt.row(i).noalias() =
        q.segment(i * dk, dk) * w.wk.middleCols(s.kv_head_of(i) * dk, dk).transpose();
  // The score scale is folded into W_Q and b_Q.
  decode_weighted_rows(sc.qt, rows, encdec_options(1.0, bias, threads), sc.u);
  for (Index i = 0; i < s.heads; ++i)
    heads.segment(i * dk, dk).noalias() = sc.u.row(i) * w.wv.middleCols(s.kv_head_of(i) * dk, dk);
}

template <class T>
void keys_heads(const Eigen::Ref<const RowVector<float>>& q, const rewrite::KeysAttention<float>& w,
                const RowCache<T>& keys, const float* bias, Eigen::Ref<RowVector<float>> heads,
                int threads, EncDecScratch& sc) {
  const AttentionShape& s = w.shape;
  const Index dk = s.head_dim;
  sc.u.resize(s.heads, s.kv_width());
  decode_weighted_keys(q, keys, s, encdec_options(1.0, bias, threads), sc.u);
  for (Index i = 0; i < s.heads; ++i)
    heads.segment(i * dk, dk).noalias() = sc.u.row(i) * w.wkv.middleCols(s.kv_head_of(i) * dk, dk);
}

inline void check_heads_args(const char* fn, const AttentionShape& s, Index q_size,
                             Index heads_size, Index rows) {
  ttx::detail::check_dim(fn, "q.size()", s.q_width(), q_size);
  ttx::detail::check_dim(fn, "heads.size()", s.q_width(), heads_size);
  ttx::detail::require(rows > 0, ErrorKind::shape, fn, "cached rows expected >= 1, got ", rows);
}

}  // namespace detail

/// Inputs form (X-cache / shared encoder cache), all heads of one query:
///   Qt_i = q_i W_K,g(i)^T, s_i = softmax(Qt_i R^T + bias_i), heads_i = (s_i R) W_V,g(i),
/// with S R streamed by kernel::decode_weighted_rows. q (1 x e_q) = x W_Q + b_Q with the score
/// scale folded (InputsAttention::wq, bq); rows R (n x w, w = w.row_width); bias: nullptr or
/// h x n additive scores, row-major, n = rows.size(); heads (1 x e_q) before W_O. threads as
/// DecodeOptions::threads (0 = all).
///   kernel::inputs_heads(x * cross.wq + cross.bq, cross, ecache.rows(), nullptr, heads);
template <class T>
void inputs_heads(const Eigen::Ref<const RowVector<float>>& q,
                  const rewrite::InputsAttention<float>& w, const RowCache<T>& rows,
                  const float* bias, Eigen::Ref<RowVector<float>> heads, int threads = 0) {
  const char* fn = "kernel::inputs_heads";
  w.shape.validate(fn);
  detail::check_heads_args(fn, w.shape, q.size(), heads.size(), rows.size());
  ttx::detail::check_dim(fn, "rows.width() (= row_width)", w.row_width, rows.width());
  detail::EncDecScratch sc;
  detail::inputs_heads(q, w, rows, bias, heads, threads, sc);
}

/// Keys form (cross K-only cache), all heads of one query:
///   s_i = softmax(q_i K_g(i)^T + bias_i), heads_i = (s_i K) W_KV,g(i),
/// with S K streamed by kernel::decode_weighted_keys. q (1 x e_q) with the score scale folded
/// (KeysAttention::wq, bq); keys K (n x e); bias h x n as inputs_heads.
template <class T>
void keys_heads(const Eigen::Ref<const RowVector<float>>& q, const rewrite::KeysAttention<float>& w,
                const RowCache<T>& keys, const float* bias, Eigen::Ref<RowVector<float>> heads,
                int threads = 0) {
  const char* fn = "kernel::keys_heads";
  w.shape.validate(fn);
  detail::check_heads_args(fn, w.shape, q.size(), heads.size(), keys.size());
  ttx::detail::check_dim(fn, "keys.width() (= kv_width)", w.shape.kv_width(), keys.width());
  detail::EncDecScratch sc;
  detail::keys_heads(q, w, keys, bias, heads, threads, sc);
}

/// Vanilla attention over a KV cache: heads_i = softmax(scale q_i K_g(i)^T + bias_i) V_g(i)
/// (kernel::decode_vanilla). q (1 x e_q) projected, not scaled; scale 0 = 1/sqrt(d_k); bias h x n.
template <class T>
void kv_heads(const Eigen::Ref<const RowVector<float>>& q, const KVCache<T>& cache, double scale,
              const float* bias, Eigen::Ref<RowVector<float>> heads, int threads = 0) {
  const char* fn = "kernel::kv_heads";
  detail::check_heads_args(fn, cache.shape(), q.size(), heads.size(), cache.size());
  decode_vanilla(q, cache, cache.shape(), detail::encdec_options(scale, bias, threads), heads);
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
                 RowMatrix<A>& Y, int threads) {
  // Threads split W's columns and run Eigen's product on their block (Eigen stays single-threaded
  // inside a parallel region). Eigen's own OpenMP GEMM measured pathological for the step's small
  // batches: 8 x 384 times 384 x 51865 (Whisper-tiny's LM head) took 282 ms on 2 threads against
  // 12 ms on one, while another parallel region's threads competed for the 2 cores.
  Y.resize(X.rows(), W.cols());
  const Index k = W.cols();
  const int nt = static_cast<int>(std::min<Index>(resolve_threads(threads), k / 64));
  if (nt <= 1) {
    Y.noalias() = X * W;
  } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), count = omp_get_num_threads();
      const Index c0 = k * t / count / 16 * 16;
      const Index c1 = t + 1 == count ? k : k * (t + 1) / count / 16 * 16;
      Y.middleCols(c0, c1 - c0).noalias() = X * W.middleCols(c0, c1 - c0);
    }
#endif
  }
  if (b.size()) Y.rowwise() += b;
}

}  // namespace detail

/// The decoder stack at run time: T is the cache storage type, weights and arithmetic are float.
///   auto plan = ttx::rewrite::plan_encdec_decoder<float>(cfg, w, {});
///   ttx::kernel::EncDecDecoder<ttx::bf16> dec(plan);
///   auto st = dec.make_state(1500, 448);
///   dec.encode(st, E);
///   auto tokens = dec.generate(st, prompt, 32);
template <class T>
class EncDecDecoder {
 public:
  using A = float;
  using Plan = rewrite::EncDecDecoderPlan<float>;

  /// `threads`: threads of each attention's streaming pass and of the step's products, which split
  /// W's columns (DecodeOptions::threads; 0 = all). With 1, Eigen's own product may still use
  /// OpenMP threads (Eigen::setNbThreads / OMP_NUM_THREADS decide).
  explicit EncDecDecoder(Plan plan, int threads = 0) : p_(std::move(plan)), threads_(threads) {
    ttx::detail::check_dim("kernel::EncDecDecoder", "plan.layers.size() (= config.layers)",
                           p_.config.layers, p_.layers.size());
    ttx::detail::require(threads >= 0, ErrorKind::shape, "kernel::EncDecDecoder",
                         "threads expected >= 0, got ", threads);
  }
  const Plan& plan() const { return p_; }
  rewrite::EncDecForms forms() const { return p_.forms; }

  /// A sequence's caches: encoder rows up to `encoder_capacity` (Whisper 1500), decoder tokens up
  /// to `self_capacity` (Whisper 448).
  EncDecState<T> make_state(Index encoder_capacity, Index self_capacity) const {
    const char* fn = "kernel::EncDecDecoder::make_state";
    ttx::detail::require(encoder_capacity > 0 && self_capacity > 0, ErrorKind::shape, fn,
                         "capacities expected > 0, got encoder_capacity ", encoder_capacity,
                         ", self_capacity ", self_capacity);
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
          detail::linear_rows(Ea, w.wk, w.bk, K, threads_);
          detail::linear_rows(Ea, w.wv, w.bv, V, threads_);
          c.clear();
          c.append(K, V);
        }
        break;
      case rewrite::CrossForm::keys:
        for (Index l = 0; l < p_.config.layers; ++l) {
          detail::linear_rows(Ea, layer(l).cross_keys.wk, RowVector<A>(), K, threads_);
          st.cross_keys[static_cast<size_t>(l)].assign(K);
        }
        break;
      case rewrite::CrossForm::shared_encoder:
        st.encoder[0].assign(E);  // straight to T: E is the cache, no float detour
        break;
      case rewrite::CrossForm::hybrid:
        detail::linear_rows(Ea, layer(0).cross_keys.wk, RowVector<A>(), K, threads_);
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
    {  // each sequence appends to its own caches (and the batch runs them in parallel)
      std::vector<const EncDecState<T>*> sorted(states.begin(), states.end());
      std::sort(sorted.begin(), sorted.end());
      ttx::detail::require(
          B == 0 || (sorted.front() != nullptr &&
                     std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()),
          ErrorKind::shape, fn,
          "states expected distinct, non-null sequences, got a null or repeated state");
    }
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
      ttx::detail::require(t >= 0 && t < cfg.vocab, ErrorKind::shape, fn,
                           "token id expected in [0, ", cfg.vocab, "), got ", t);
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
    const AttentionShape &ss = cfg.block.self_attn.shape, &cs = cfg.block.cross_attn.shape;
    for (Index l = 0; l < cfg.layers; ++l) {
      const auto& Lp = layer(l);
      const size_t ls = static_cast<size_t>(l);
      // Self-attention. The new rows go into each cache first (serially: appending can throw),
      // then every sequence attends over its own cache.
      detail::norm_rows(X, Lp.norm_self, cfg.block.norm, N);
      H.resize(B, ss.q_width());
      if (p_.forms.self == rewrite::SelfForm::kv) {
        const auto& w = Lp.self_kv;
        detail::linear_rows(N, w.wq, w.bq, Q, threads_);
        detail::linear_rows(N, w.wk, w.bk, K, threads_);
        detail::linear_rows(N, w.wv, w.bv, V, threads_);
        for (Index b = 0; b < B; ++b) seq(states, b).self_kv[ls].append(K.row(b), V.row(b));
        const double scale = cfg.block.self_attn.effective_scale();
        for_each_sequence(B, [&](Index b, int threads, detail::EncDecScratch& sc) {
          const EncDecState<T>& st = seq(states, b);
          decode_vanilla(Q.row(b), st.self_kv[ls], ss,
                         detail::encdec_options(scale, self_bias(st.position, sc.bias), threads),
                         H.row(b));
        });
        detail::linear_rows(H, w.wo, w.bo, Y, threads_);
      } else {
        const auto& w = Lp.self_inputs;
        detail::linear_rows(N, w.wq, w.bq, Q, threads_);
        for (Index b = 0; b < B; ++b) seq(states, b).self_rows[ls].append(N.row(b));
        for_each_sequence(B, [&](Index b, int threads, detail::EncDecScratch& sc) {
          const EncDecState<T>& st = seq(states, b);
          detail::inputs_heads(Q.row(b), w, st.self_rows[ls], self_bias(st.position, sc.bias),
                               H.row(b), threads, sc);
        });
        detail::linear_rows(H, w.wo, w.bo, Y, threads_);
      }
      X += Y;
      // Cross-attention.
      detail::norm_rows(X, Lp.norm_cross, cfg.block.norm, N);
      H.resize(B, cs.q_width());
      const bool keys_layer = p_.forms.cross == rewrite::CrossForm::keys ||
                              (p_.forms.cross == rewrite::CrossForm::hybrid && l == 0);
      if (p_.forms.cross == rewrite::CrossForm::kv) {
        const auto& w = Lp.cross_kv;
        detail::linear_rows(N, w.wq, w.bq, Q, threads_);
        const double scale = cfg.block.cross_attn.effective_scale();
        for_each_sequence(B, [&](Index b, int threads, detail::EncDecScratch&) {
          decode_vanilla(Q.row(b), seq(states, b).cross_kv[ls], cs,
                         detail::encdec_options(scale, nullptr, threads), H.row(b));
        });
        detail::linear_rows(H, w.wo, w.bo, Y, threads_);
      } else if (keys_layer) {
        const auto& w = Lp.cross_keys;
        detail::linear_rows(N, w.wq, w.bq, Q, threads_);
        const bool own = p_.forms.cross == rewrite::CrossForm::keys;
        for_each_sequence(B, [&](Index b, int threads, detail::EncDecScratch& sc) {
          const EncDecState<T>& st = seq(states, b);
          detail::keys_heads(Q.row(b), w, own ? st.cross_keys[ls].keys() : st.basis[0].keys(),
                             nullptr, H.row(b), threads, sc);
        });
        detail::linear_rows(H, w.wo, w.bo, Y, threads_);
      } else {
        const auto& w = Lp.cross_inputs;
        detail::linear_rows(N, w.wq, w.bq, Q, threads_);
        const bool shared = p_.forms.cross == rewrite::CrossForm::shared_encoder;
        for_each_sequence(B, [&](Index b, int threads, detail::EncDecScratch& sc) {
          const EncDecState<T>& st = seq(states, b);
          detail::inputs_heads(Q.row(b), w, shared ? st.encoder[0].rows() : st.basis[0].keys(),
                               nullptr, H.row(b), threads, sc);
        });
        detail::linear_rows(H, w.wo, w.bo, Y, threads_);
      }
      X += Y;
      // FFN.
      detail::norm_rows(X, Lp.norm_ffn, cfg.block.norm, N);
      detail::linear_rows(N, Lp.ffn.w_in, Lp.ffn.b_in, H, threads_);
      const Activation act = cfg.block.ffn.act;
      H = H.unaryExpr([act](A v) { return activate(act, v); });
      if (cfg.block.ffn.kind == FfnKind::glu) {
        detail::linear_rows(N, Lp.ffn.w_up, Lp.ffn.b_up, K, threads_);
        H.array() *= K.array();
      }
      detail::linear_rows(H, Lp.ffn.w_out, Lp.ffn.b_out, Y, threads_);
      X += Y;
    }
    for (auto* st : states) ++st->position;
    detail::norm_rows(X, p_.final_norm, cfg.final_norm_spec, N);
    RowMatrix<A> logits(B, cfg.vocab);
    detail::linear_rows(N, p_.lm_head, RowVector<A>(), logits, threads_);
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
    ttx::detail::require(self_ok && cross_ok, ErrorKind::shape, fn, "state expected caches for ", L,
                         " layers in forms self=", rewrite::form_name(p_.forms.self),
                         " cross=", rewrite::form_name(p_.forms.cross), ", got ", st.layers(),
                         " self layers (make states with this decoder's make_state)");
  }
  static EncDecState<T>& seq(const std::vector<EncDecState<T>*>& states, Index b) {
    return *states[static_cast<size_t>(b)];
  }
  /// Runs f(b, threads, scratch) for every sequence b of the batch. One sequence: its attention
  /// gets all `threads_`. Several: the sequences are split across the threads and each attention
  /// runs single-threaded (no fork/join per attention call; each sequence reads its own caches).
  /// f must not throw (its arguments are checked before).
  template <class F>
  void for_each_sequence(Index B, F&& f) const {
#ifdef _OPENMP
    const int threads = detail::resolve_threads(threads_);
    if (B > 1 && threads > 1) {
      const int team = static_cast<int>(std::min<Index>(threads, B));
#pragma omp parallel num_threads(team)
      {
        detail::EncDecScratch sc;
#pragma omp for schedule(static)
        for (Index b = 0; b < B; ++b) f(b, 1, sc);
      }
      return;
    }
#endif
    detail::EncDecScratch sc;
    for (Index b = 0; b < B; ++b) f(b, B > 1 ? 1 : threads_, sc);
  }
  /// T5's self-attention bias for a query at `pos` (h x (pos + 1)), or nullptr.
  const float* self_bias(Index pos, std::vector<float>& buf) const {
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
  int threads_ = 0;
};

}  // namespace ttx::kernel
