// The three token loops of ttx_demo, written with ttx's public kernels so they can be copied:
// VanillaRunner (the baseline every rewrite is compared with) and SlimRunner (FlashNorm-folded
// weights + slim attention's K-only cache, optionally with the first-layer table).
// Every token, prompt included, goes through the one-token decode step.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <ttx/kernel/first_layer.hpp>
#include <ttx/kernel/flashnorm.hpp>
#include <ttx/kernel/flashnorm_ffn.hpp>
#include <ttx/kernel/slim_attention.hpp>
#include <ttx/rewrite/first_layer.hpp>
#include <ttx/rewrite/flashnorm.hpp>
#include <ttx/rewrite/slim.hpp>
#include <ttx/ttx.hpp>
#include <vector>

namespace demo {

using namespace ttx;

struct Model {
  std::string name;
  ModelConfig config;
  ModelWeights<float> weights;
  bool tied_head = false;
};

struct Result {
  std::string path;
  std::vector<int> tokens;
  std::vector<RowVector<float>> logits;  ///< logits that chose each generated token
  double seconds = 0;                    ///< the token loop only (transforms are offline)
  Index tokens_run = 0;                  ///< prompt + generated tokens through the model
  std::size_t context_bytes = 0;
};

/// Applied RMSNorm gain (the 1+g convention made explicit).
inline RowVector<float> applied_gain(const NormSpec& spec, const RowVector<float>& g) {
  return spec.gain == GainConvention::one_plus ? RowVector<float>(g.array() + 1.f) : g;
}

/// Rotates the heads of a projected row at position `pos` (no-op without RoPE).
inline void rotate(RowVector<float>& x, Index heads, Index dk, const RopeSpec& rope,
                   const std::vector<double>& freqs, Index pos) {
  if (!rope.enabled()) return;
  for (Index h = 0; h < heads; ++h)
    rope_rotate_head(x.segment(h * dk, dk), rope, freqs, static_cast<double>(pos), +1);
}

inline RowVector<float> bias_or_zero(const RowVector<float>& b, Index n) {
  return b.size() ? b : RowVector<float>(RowVector<float>::Zero(n));
}

/// Attention of rotated queries q (1 x e_q) over a KV cache: decode_vanilla, then W_O (+ b_O).
template <class T>
void attend_and_project(const RowVector<float>& q, const KVCache<T>& cache,
                        const AttentionConfig& attn, const AttentionWeights<float>& w, int threads,
                        RowVector<float>& y) {
  const auto& s = attn.shape;
  RowVector<float> heads(s.q_width());
  kernel::DecodeOptions opt;
  opt.scale = attn.effective_scale();
  opt.threads = threads;
  kernel::decode_vanilla<T>(q, cache, s, opt, heads);
  kernel::linear_unscaled<float>(heads, w.wo, bias_or_zero(w.bo, s.d), y);
}

/// Vanilla attention of one normalised token h at position cache.size(): Q, K, V projections,
/// RoPE (freqs = attn.rope.frequencies()), k and v appended to the cache, then
/// attend_and_project. The baseline's layers and the slim runner's fallback both run this.
template <class T>
void kv_attention(const RowVector<float>& h, const AttentionWeights<float>& w,
                  const AttentionConfig& attn, const std::vector<double>& freqs, int threads,
                  KVCache<T>& cache, RowVector<float>& y) {
  const auto& s = attn.shape;
  const Index pos = cache.size();
  RowVector<float> q(s.q_width()), k(s.kv_width()), v(s.kv_width());
  kernel::linear_unscaled<float>(h, w.wq, bias_or_zero(w.bq, s.q_width()), q);
  kernel::linear_unscaled<float>(h, w.wk, bias_or_zero(w.bk, s.kv_width()), k);
  kernel::linear_unscaled<float>(h, w.wv, bias_or_zero(w.bv, s.kv_width()), v);
  rotate(q, s.heads, s.head_dim, attn.rope, freqs, pos);
  rotate(k, s.kv_heads, s.head_dim, attn.rope, freqs, pos);
  cache.append(k, v);
  attend_and_project(q, cache, attn, w, threads, y);
}

/// The baseline: RMSNorm(x) ⊙ g, then Q, K, V, RoPE, a KV cache, the output projection, SwiGLU.
template <class T>
class VanillaRunner {
 public:
  VanillaRunner(const Model& m, Index capacity, int threads) : m_(m), threads_(threads) {
    const auto& c = m.config;
    for (Index l = 0; l < c.layers; ++l) caches_.emplace_back(c.block.attn.shape, capacity);
    freqs_ = c.block.attn.rope.frequencies();
  }
  std::string name() const { return "vanilla (KV cache)"; }
  std::size_t context_bytes() const {
    std::size_t b = 0;
    for (const auto& c : caches_) b += c.bytes();
    return b;
  }

  RowVector<float> step(int token) {
    const auto& c = m_.config;
    const auto& s = c.block.attn.shape;
    RowVector<float> x = m_.weights.embedding.row(token), h(s.d), y(s.d);
    for (Index l = 0; l < c.layers; ++l) {
      const auto& b = m_.weights.blocks[static_cast<size_t>(l)];
      kernel::rms_normalize<float>(x, applied_gain(c.block.norm, b.norm1.gain), c.block.norm.eps,
                                   h);
      kv_attention(h, b.attn, c.block.attn, freqs_, threads_, caches_[static_cast<size_t>(l)], y);
      x += y;
      kernel::rms_normalize<float>(x, applied_gain(c.block.norm, b.norm2.gain), c.block.norm.eps,
                                   h);
      ffn(h, b.ffn, y);
      x += y;
    }
    kernel::rms_normalize<float>(x, applied_gain(c.final_norm_spec, m_.weights.final_norm.gain),
                                 c.final_norm_spec.eps, h);
    RowVector<float> logits(c.vocab);
    kernel::linear_unscaled<float>(h, m_.weights.lm_head, RowVector<float>::Zero(c.vocab), logits);
    return logits;
  }

 private:
  void ffn(const RowVector<float>& h, const FfnWeights<float>& w, RowVector<float>& out) const {
    const Index f = w.w_in.cols();
    RowVector<float> g(f), u(f);
    kernel::linear_unscaled<float>(h, w.w_in, bias_or_zero(w.b_in, f), g);
    kernel::linear_unscaled<float>(h, w.w_up, bias_or_zero(w.b_up, f), u);
    for (Index i = 0; i < f; ++i) g(i) = activate(m_.config.block.ffn.act, g(i)) * u(i);
    kernel::linear_unscaled<float>(g, w.w_out, bias_or_zero(w.b_out, out.size()), out);
  }

  const Model& m_;
  int threads_;
  std::vector<KVCache<T>> caches_;
  std::vector<double> freqs_;
};

/// FlashNorm-folded weights and slim attention (K-only cache, raw keys rotated on read), with the
/// first layer optionally looked up in a per-vocabulary table.
template <class T>
class SlimRunner {
 public:
  SlimRunner(const Model& m, Index capacity, int threads, bool first_layer_table)
      : m_(m), threads_(threads) {
    folded_ = rewrite::fold_model(
        m.config, m.weights, {m.tied_head ? rewrite::HeadTying::tied : rewrite::HeadTying::untied});
    if (!folded_.notes.empty()) notes_.push_back("FlashNorm: " + folded_.notes);
    const auto& c = folded_.config;
    freqs_ = c.block.attn.rope.frequencies();
    for (Index l = 0; l < c.layers; ++l) {
      const auto& b = folded_.weights.blocks[static_cast<size_t>(l)];
      try {
        slim_.push_back(rewrite::slim_attention<float, T>(b.attn, c.block.attn, {}));
        kcache_.emplace_back(c.block.attn.shape, capacity, KeyStorage::raw,
                             slim_.back().cached_width);
      } catch (const UnsupportedError& e) {
        // e <= d/2 (most GQA/MQA): no one-row cache is smaller; keep K and V for every layer.
        notes_.push_back(std::string("slim attention not applicable, KV cache kept: ") + e.what());
        slim_.clear();
        kcache_.clear();
        for (Index j = 0; j < c.layers; ++j) kvcache_.emplace_back(c.block.attn.shape, capacity);
        break;
      }
    }
    if (!slim_.empty()) {
      double cond = 0, max_w = 0;
      for (const auto& sl : slim_)
        cond = std::max(cond, sl.report.cond_estimate),
        max_w = std::max(max_w, sl.report.max_abs_transform);
      char buf[160];
      std::snprintf(buf, sizeof buf,
                    "slim attention: max cond(W_K) %.3g, max |W_KV| %.3g over %ld layers (%s)",
                    cond, max_w, long(c.layers), rewrite::name(slim_.front().basis));
      notes_.push_back(buf);
    }
    table_requested_ = first_layer_table;
    if (first_layer_table) {
      if (!slim_.empty() && slim_.front().basis != rewrite::Basis::square) {
        notes_.push_back(
            "first-layer table skipped: the slim cache of layer 1 holds a completed "
            "key basis (e < d), which the table does not store");
      } else {
        table_ = rewrite::build_first_layer_table<float>(c, folded_.weights);
        use_table_ = true;
      }
    }
  }
  std::string name() const {
    const std::string base = slim_.empty() ? "FlashNorm + KV cache" : "FlashNorm + slim (K cache)";
    if (use_table_) return "+ first-layer table";
    return table_requested_ ? base + " (no table)" : base;
  }
  const std::vector<std::string>& notes() const { return notes_; }
  std::size_t table_bytes() const { return use_table_ ? table_.bytes() : 0; }
  std::size_t context_bytes() const {
    std::size_t b = 0;
    for (const auto& c : kcache_) b += c.bytes();
    for (const auto& c : kvcache_) b += c.bytes();
    return b;
  }

  RowVector<float> step(int token) {
    const auto& c = folded_.config;
    const auto& s = c.block.attn.shape;
    const kernel::DeferredRms rms{c.block.norm.eps, true};
    RowVector<float> x(s.d), y(s.d), xn(s.d);
    kernel::SlimDecodeOptions opt;
    opt.threads = threads_;
    Index first = 0;
    if (use_table_) {
      layer_one_from_table(token, x);
      first = 1;
    } else {
      x = folded_.weights.embedding.row(token);
    }
    for (Index l = first; l < c.layers; ++l) {
      const auto& b = folded_.weights.blocks[static_cast<size_t>(l)];
      // The gain lives in W_Q, W_K, W_V now; only the scalar 1/RMS(x) is left.
      xn = x * static_cast<float>(rms.scale(x.squaredNorm(), s.d));
      if (slim_.empty())
        kv_attention(xn, b.attn, c.block.attn, freqs_, threads_, kvcache_[static_cast<size_t>(l)],
                     y);
      else
        kernel::slim_decode(xn, slim_[static_cast<size_t>(l)], kcache_[static_cast<size_t>(l)], y,
                            ws_, opt);
      x += y;
      kernel::flashnorm_ffn<float>(x, b.ffn, c.block.ffn, rms, y);
      x += y;
    }
    RowVector<float> logits(c.vocab);
    if (folded_.final_norm_folded) {
      kernel::flashnorm_linear<float>(x, folded_.weights.lm_head, RowVector<float>(),
                                      {c.final_norm_spec.eps, true}, logits);
    } else {
      kernel::rms_normalize<float>(x,
                                   applied_gain(c.final_norm_spec, folded_.weights.final_norm.gain),
                                   c.final_norm_spec.eps, xn);
      kernel::linear_unscaled<float>(xn, folded_.weights.lm_head, RowVector<float>::Zero(c.vocab),
                                     logits);
    }
    return logits;
  }

 private:
  /// Layer 1 from the table: residual, rotated q and the raw key come from the token's row; the
  /// slim kernel streams the keys once (U = S K), V-side: head_i = U_i W_KV,i.
  void layer_one_from_table(int token, RowVector<float>& x) {
    const auto& c = folded_.config;
    const auto& s = c.block.attn.shape;
    const auto& b = folded_.weights.blocks.front();
    RowMatrix<float> q(1, s.q_width()), residual(1, s.d);
    RowVector<float> heads(s.q_width()), y(s.d);
    if (slim_.empty()) {  // rotated q, k and v straight into the KV cache
      kernel::first_layer_lookup(table_, {token}, kvcache_.front(), q, residual);
      attend_and_project(RowVector<float>(q.row(0)), kvcache_.front(), c.block.attn, b.attn,
                         threads_, y);
      x = residual + y;
      kernel::flashnorm_ffn<float>(x, b.ffn, c.block.ffn, {c.block.norm.eps, true}, y);
      x += y;
      return;
    }
    const auto& slim = slim_.front();
    auto& keys = kcache_.front().keys();
    kernel::first_layer_lookup(table_, {token}, keys, KeyStorage::raw, q, residual);
    kernel::DecodeOptions opt;
    opt.scale = slim.scale;
    opt.rope = &slim.rope;
    opt.rotation =
        slim.rope.enabled() ? kernel::KeyRotation::rotate_on_read : kernel::KeyRotation::none;
    opt.threads = threads_;
    u_.resize(s.heads, slim.cached_width);
    kernel::decode_weighted_keys<T>(q, keys, s, opt, u_);
    for (Index i = 0; i < s.heads; ++i)
      heads.segment(i * s.head_dim, s.head_dim).noalias() =
          u_.row(i) * slim.value_map.middleCols(s.kv_head_of(i) * s.head_dim, s.head_dim);
    kernel::linear_unscaled<float>(heads, slim.wo, bias_or_zero(slim.bo, s.d), y);
    x = residual + y;
    kernel::flashnorm_ffn<float>(x, b.ffn, c.block.ffn, {c.block.norm.eps, true}, y);
    x += y;
  }

  const Model& m_;
  int threads_;
  rewrite::FoldedModel<float> folded_;
  std::vector<rewrite::SlimAttention<float>> slim_;
  std::vector<KCache<T>> kcache_;
  std::vector<KVCache<T>> kvcache_;
  kernel::SlimWorkspace ws_;
  std::vector<double> freqs_;
  rewrite::FirstLayerTable<float> table_;
  bool use_table_ = false, table_requested_ = false;
  RowMatrix<float> u_;
  std::vector<std::string> notes_;
};

/// Greedy generation through a runner's one-token step, with a progress bar on stderr once the
/// run has taken longer than a second.
template <class Runner>
Result generate(Runner& r, const std::vector<int>& prompt, Index steps) {
  Result out;
  out.path = r.name();
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const Index total = static_cast<Index>(prompt.size()) + steps - 1;
  Index done = 0;
  auto progress = [&] {
    ++done;
    if (elapsed() < 1.0) return;
    const int width = 30, filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r  %-28s [%s%s] %ld/%ld", out.path.c_str(),
                 std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), ' ').c_str(), long(done),
                 long(total));
    if (done == total) std::fprintf(stderr, "\n");
  };
  out.tokens = greedy_generate(
      [&](const std::vector<int>& tokens) {
        RowVector<float> logits;
        for (int t : tokens) {
          logits = r.step(t);
          progress();
        }
        return logits;
      },
      prompt, steps, &out.logits, "demo::generate");
  out.seconds = elapsed();
  out.tokens_run = total;
  out.context_bytes = r.context_bytes();
  return out;
}

/// The reference oracle in double on the same weights (the yardstick for every path's error).
inline Result reference_generate(const Model& m, const std::vector<int>& prompt, Index steps) {
  reference::DecoderModel<double> model(m.config, cast_weights<double>(m.weights));
  std::vector<RowVector<double>> logits;
  Result r;
  r.path = "reference (f64)";
  r.tokens = model.generate(prompt, steps, &logits);
  for (const auto& l : logits) r.logits.push_back(l.cast<float>());
  return r;
}

inline int first_divergence(const std::vector<int>& a, const std::vector<int>& b) {
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    if (a[i] != b[i]) return static_cast<int>(i);
  return a.size() == b.size() ? -1 : static_cast<int>(std::min(a.size(), b.size()));
}

/// max |a - b| over the logits of the steps where both chose the same tokens so far.
inline double max_logit_deviation(const Result& a, const Result& b) {
  const int div = first_divergence(a.tokens, b.tokens);
  const size_t n = div < 0 ? a.logits.size() : static_cast<size_t>(div) + 1;
  double m = 0;
  for (size_t i = 0; i < n && i < a.logits.size() && i < b.logits.size(); ++i)
    m = std::max(m, static_cast<double>((a.logits[i] - b.logits[i]).cwiseAbs().maxCoeff()));
  return m;
}

inline std::string mib(std::size_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

inline void print(const std::vector<Result>& rs, const Result* ref, std::size_t table_bytes) {
  const Result& v = rs.front();
  std::printf("%-38s %12s %16s %12s %20s %17s\n", "path", "tokens/s", "context memory",
              "vs vanilla", "max |dlogit| vs van.", "max |dlogit| f64");
  for (const auto& r : rs) {
    const double ratio =
        static_cast<double>(r.context_bytes) / static_cast<double>(v.context_bytes);
    char mem[32];
    std::snprintf(mem, sizeof mem, "%.2fx", ratio);
    std::printf("%-38s %12.1f %16s %12s %20.3g %17s\n", r.path.c_str(),
                static_cast<double>(r.tokens_run) / r.seconds, mib(r.context_bytes).c_str(), mem,
                max_logit_deviation(r, v),
                ref ? std::to_string(max_logit_deviation(r, *ref)).c_str() : "-");
  }
  if (table_bytes)
    std::printf("(first-layer table: %s of weights-side memory)\n", mib(table_bytes).c_str());
  bool same = true;
  int where = -1;
  for (const auto& r : rs) {
    const int d = first_divergence(r.tokens, v.tokens);
    if (d >= 0) same = false, where = d;
  }
  if (same)
    std::printf("identical tokens: yes (%zu generated tokens, all paths)\n", v.tokens.size());
  else
    std::printf("identical tokens: no (first divergence at generated token %d)\n", where);
  if (ref) {
    const int d = first_divergence(v.tokens, ref->tokens);
    std::printf("vanilla vs f64 reference tokens: %s\n",
                d < 0 ? "identical" : ("diverge at token " + std::to_string(d)).c_str());
  }
  std::printf("generated:");
  for (size_t i = 0; i < v.tokens.size() && i < 24; ++i) std::printf(" %d", v.tokens[i]);
  std::printf("%s\n", v.tokens.size() > 24 ? " ..." : "");
}

}  // namespace demo
