// Precompute the first layer (SPEC.md §4, arXiv 2402.13388). Layer 1's input is a row of the
// embedding table, a function of the token id alone, so everything before the position-dependent
// step (RoPE) is tabulated once per vocabulary entry:
//   serial   (Llama, Mistral):      row(t) = [ x_t | norm1(x_t) W_Q + b_Q | ... W_K + b_K | ... W_V
//   + b_V ] parallel (GPT-J, Pythia, PaLM): row(t) = [ x_t + ffn(norm2(x_t)) | q | k | v ]
// with x_t = E[t]. The parallel block's FFN sees the same embedding row and its output is added to
// the residual stream like the attention output, so layer 1's FFN leaves the token path. A row
// holds d + e_q + 2e values (2(d + e) when e_q = d).
//
// The rows are computed by compute_first_layer_rows(), the very function the runtime "computed"
// path (kernel/first_layer.hpp) calls, so a float table built with TableCompute::working is
// bitwise equal to computing layer 1 at run time. Its matrix products accumulate every output in
// one fixed order (input index 0, 1, ..., d-1, fused multiply-add where the target has FMA), so a
// row does not depend on the batch it was computed in, the thread count or the column blocking.
//
// Also here: first_layer_cost(), the paper's memory-read and memory-size accounting.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <type_traits>
#include <vector>

#include "ttx/core/activation.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ttx {
namespace rewrite {

/// Column layout of one table row: [residual (d) | q (e_q) | k (e) | v (e)], q and k before RoPE.
struct FirstLayerLayout {
  Index d = 0, q_width = 0, kv_width = 0;

  static FirstLayerLayout of(const AttentionShape& s) { return {s.d, s.q_width(), s.kv_width()}; }
  Index residual_offset() const { return 0; }
  Index q_offset() const { return d; }
  Index k_offset() const { return d + q_width; }
  Index v_offset() const { return d + q_width + kv_width; }
  Index width() const { return d + q_width + 2 * kv_width; }
};

/// Precision the table rows are computed in (they are stored at the table's type either way).
enum class TableCompute {
  working,  ///< float accumulation, the runtime computed path's own kernel: bitwise equal to it
  exact,    ///< double accumulation, then one rounding to the storage type
};

/// Called after every chunk of rows with (rows done, vocabulary size); the last call has
/// done == total.
using ProgressCallback = std::function<void(Index done, Index total)>;

struct FirstLayerOptions {
  TableCompute compute = TableCompute::working;
  Index chunk = 512;          ///< rows per chunk (one progress call each)
  ProgressCallback progress;  ///< optional
  int threads = 0;            ///< 0: all OpenMP threads, 1: single thread
};

/// What the table holds and what it replaces.
struct FirstLayerReport {
  BlockKind kind = BlockKind::serial;
  Index vocab = 0, width = 0;
  bool ffn_in_table = false;         ///< parallel blocks: layer 1's FFN is folded into the rows
  std::size_t table_bytes = 0;       ///< vocab * width * sizeof(storage)
  std::size_t embedding_bytes = 0;   ///< vocab * d * sizeof(storage): what the table replaces
  std::size_t weights_off_path = 0;  ///< weight values the token path no longer reads
  double max_abs = 0;                ///< largest |value| stored (range check for half/bf16)
  const char* computed_in = "f32";   ///< "f32" (working) or "f64" (exact)
};

/// The per-vocabulary table: rows (vocab x layout.width()) at storage type T, plus what layer 1's
/// runtime still needs (attention shape, RoPE, block kind).
template <class T>
struct FirstLayerTable {
  static_assert(is_storage_type_v<T>, "FirstLayerTable stores float, double, bf16 or half");
  BlockKind kind = BlockKind::serial;
  AttentionConfig attn;
  FirstLayerLayout layout;
  RowMatrix<T> rows;
  FirstLayerReport report;

  Index vocab() const { return rows.rows(); }
  std::size_t bytes() const { return static_cast<std::size_t>(rows.size()) * sizeof(T); }
};

}  // namespace rewrite

namespace detail {

/// Throws unless (embedding, block, cfg) describe a first layer the table can hold.
template <class TW>
void check_first_layer(const char* fn, const RowMatrix<TW>& embedding, const BlockWeights<TW>& w,
                       const BlockConfig& cfg) {
  require(cfg.kind == BlockKind::serial || cfg.kind == BlockKind::parallel, ErrorKind::unsupported,
          fn,
          "cfg.kind expected serial or parallel (pre-norm blocks with a residual), got a skipless "
          "block");
  const AttentionShape& s = cfg.attn.shape;
  s.validate(fn);
  cfg.attn.rope.validate(fn, s.head_dim);
  check_dim(fn, "embedding.cols() (= shape.d)", s.d, embedding.cols());
  require(embedding.rows() > 0, ErrorKind::shape, fn, "embedding.rows() expected > 0, got 0");
  check_shape(fn, "attn.wq", w.attn.wq, s.d, s.q_width());
  check_shape(fn, "attn.wk", w.attn.wk, s.d, s.kv_width());
  check_shape(fn, "attn.wv", w.attn.wv, s.d, s.kv_width());
  if (w.attn.bq.size()) check_dim(fn, "attn.bq.size()", s.q_width(), w.attn.bq.size());
  if (w.attn.bk.size()) check_dim(fn, "attn.bk.size()", s.kv_width(), w.attn.bk.size());
  if (w.attn.bv.size()) check_dim(fn, "attn.bv.size()", s.kv_width(), w.attn.bv.size());
  auto check_norm = [&](const NormWeights<TW>& n, const char* gain, const char* beta) {
    // An empty gain means "no gain" (FlashNorm folded it into the next weights).
    if (n.gain.size()) check_dim(fn, gain, s.d, n.gain.size());
    if (n.beta.size()) {
      require(cfg.norm.kind == NormKind::layer, ErrorKind::shape, fn,
              concat(beta, " expected empty for RMSNorm, got ", n.beta.size(), " values"));
      check_dim(fn, beta, s.d, n.beta.size());
    }
  };
  check_norm(w.norm1, "norm1.gain.size()", "norm1.beta.size()");
  if (cfg.kind == BlockKind::parallel) {
    check_norm(w.norm2, "norm2.gain.size()", "norm2.beta.size()");
    const Index f = w.ffn.w_in.cols();
    require(f > 0, ErrorKind::shape, fn, "ffn.w_in.cols() expected > 0, got 0");
    check_shape(fn, "ffn.w_in", w.ffn.w_in, s.d, f);
    check_shape(fn, "ffn.w_out", w.ffn.w_out, f, s.d);
    if (cfg.ffn.kind == FfnKind::glu) check_shape(fn, "ffn.w_up", w.ffn.w_up, s.d, f);
    if (w.ffn.b_in.size()) check_dim(fn, "ffn.b_in.size()", f, w.ffn.b_in.size());
    if (w.ffn.b_up.size()) check_dim(fn, "ffn.b_up.size()", f, w.ffn.b_up.size());
    if (w.ffn.b_out.size()) check_dim(fn, "ffn.b_out.size()", s.d, w.ffn.b_out.size());
  }
}

/// acc + a * w with one rounding where the target has FMA, else two; the same everywhere in one
/// build, which is what makes rows independent of how they were batched.
template <class Acc>
inline Acc fl_madd(Acc a, Acc w, Acc acc) {
#if defined(__FMA__) || defined(__AVX512F__)
  return std::fma(a, w, acc);
#else
  return acc + a * w;
#endif
}

inline int fl_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

#if defined(__AVX512F__)
template <class TW>
inline __m512 fl_load16(const TW* p) {
  if constexpr (std::is_same_v<TW, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<TW, bf16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    static_assert(std::is_same_v<TW, f16>, "fl_load16: float, bf16 or half");
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

/// Register tile: Y (TB x 64) = X (TB x in) * W (in x 64 columns of a row-major in x ldw), each
/// element one fused multiply-add per i in order from 0: the same bits as the portable loop.
template <int TB, class TW>
inline void fl_tile(const float* X, Index ldx, const TW* W, Index ldw, Index in, float* Y,
                    Index ldy) {
  __m512 acc[TB][4];
  for (int t = 0; t < TB; ++t)
    for (int c = 0; c < 4; ++c) acc[t][c] = _mm512_setzero_ps();
  for (Index i = 0; i < in; ++i) {
    const TW* w = W + i * ldw;
    const __m512 w0 = fl_load16(w), w1 = fl_load16(w + 16), w2 = fl_load16(w + 32),
                 w3 = fl_load16(w + 48);
    for (int t = 0; t < TB; ++t) {
      const __m512 a = _mm512_set1_ps(X[t * ldx + i]);
      acc[t][0] = _mm512_fmadd_ps(a, w0, acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(a, w1, acc[t][1]);
      acc[t][2] = _mm512_fmadd_ps(a, w2, acc[t][2]);
      acc[t][3] = _mm512_fmadd_ps(a, w3, acc[t][3]);
    }
  }
  for (int t = 0; t < TB; ++t)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(Y + t * ldy + 16 * c, acc[t][c]);
}

template <class TW>
inline void fl_tile_n(int tb, const float* X, Index ldx, const TW* W, Index ldw, Index in, float* Y,
                      Index ldy) {
  switch (tb) {
    case 1:
      return fl_tile<1>(X, ldx, W, ldw, in, Y, ldy);
    case 2:
      return fl_tile<2>(X, ldx, W, ldw, in, Y, ldy);
    case 3:
      return fl_tile<3>(X, ldx, W, ldw, in, Y, ldy);
    case 4:
      return fl_tile<4>(X, ldx, W, ldw, in, Y, ldy);
    case 5:
      return fl_tile<5>(X, ldx, W, ldw, in, Y, ldy);
    default:
      return fl_tile<6>(X, ldx, W, ldw, in, Y, ldy);
  }
}
#endif

/// Y (nt x out, leading dim ldy) = X (nt x in, leading dim ldx) * W (in x out, row-major, any
/// storage type) + b, accumulated in Acc. Every Y(t, j) is fl_madd over i = 0..in-1 in order,
/// starting from 0, then + b(j): the result does not depend on nt, the blocking or the threads.
template <class Acc, class TW>
void fl_matmul(const Acc* X, Index ldx, Index nt, const TW* W, Index in, Index out, const TW* b,
               Acc* Y, Index ldy, int threads) {
  constexpr Index kCols = 64;   // column chunk: a d x 64 slab of W stays in L2
  constexpr Index kTokens = 8;  // token block sharing each loaded W row chunk
  const Index chunks = (out + kCols - 1) / kCols;
  // Few tokens: stream W row by row (the memory-bound case), unless the register tile applies.
  bool wide = nt > kTokens;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Acc, float> &&
                (std::is_same_v<TW, float> || std::is_same_v<TW, bf16> || std::is_same_v<TW, f16>))
    wide = wide || out >= kCols;
#endif
  // Split columns among threads; each thread owns whole column ranges, so no order changes.
  const int nth = std::max(1, std::min<int>(threads, static_cast<int>(chunks)));
  const bool big = static_cast<double>(nt) * static_cast<double>(in) * static_cast<double>(out) >
                   (1 << 23);  // below ~8M multiply-adds a fork-join costs more than it saves
  auto run = [&](Index c_begin, Index c_end) {
    if (c_begin >= c_end) return;
    std::vector<Acc> wbuf(static_cast<size_t>(c_end - c_begin));
    if (!wide) {
      for (Index t = 0; t < nt; ++t) std::fill(Y + t * ldy + c_begin, Y + t * ldy + c_end, Acc(0));
      for (Index i = 0; i < in; ++i) {
        const TW* wr = W + i * out + c_begin;
        const Acc* w = nullptr;
        if constexpr (std::is_same_v<TW, Acc>) {
          w = wr;
        } else {
          for (Index j = 0; j < c_end - c_begin; ++j) wbuf[static_cast<size_t>(j)] = Acc(wr[j]);
          w = wbuf.data();
        }
        for (Index t = 0; t < nt; ++t) {
          const Acc a = X[t * ldx + i];
          Acc* y = Y + t * ldy + c_begin;
          for (Index j = 0; j < c_end - c_begin; ++j) y[j] = fl_madd(a, w[j], y[j]);
        }
      }
    } else {
      Acc acc[kTokens][kCols];
      for (Index c0 = c_begin; c0 < c_end; c0 += kCols) {
        const Index nc = std::min(kCols, c_end - c0);
#if defined(__AVX512F__)
        // Full 64-column slabs in float go through the register tile (same bits, ~10x faster).
        if constexpr (std::is_same_v<Acc, float> &&
                      (std::is_same_v<TW, float> || std::is_same_v<TW, bf16> ||
                       std::is_same_v<TW, f16>)) {
          if (nc == kCols) {
            for (Index t0 = 0; t0 < nt; t0 += 6)
              fl_tile_n(static_cast<int>(std::min<Index>(6, nt - t0)), X + t0 * ldx, ldx, W + c0,
                        out, in, Y + t0 * ldy + c0, ldy);
            continue;
          }
        }
#endif
        for (Index t0 = 0; t0 < nt; t0 += kTokens) {
          const Index tb = std::min(kTokens, nt - t0);
          for (Index t = 0; t < tb; ++t)
            for (Index j = 0; j < kCols; ++j) acc[t][j] = Acc(0);
          for (Index i = 0; i < in; ++i) {
            const TW* wr = W + i * out + c0;
            const Acc* w = nullptr;
            if constexpr (std::is_same_v<TW, Acc>) {
              w = wr;
            } else {
              for (Index j = 0; j < nc; ++j) wbuf[static_cast<size_t>(j)] = Acc(wr[j]);
              w = wbuf.data();
            }
            for (Index t = 0; t < tb; ++t) {
              const Acc a = X[(t0 + t) * ldx + i];
              Acc* r = acc[t];
              for (Index j = 0; j < nc; ++j) r[j] = fl_madd(a, w[j], r[j]);
            }
          }
          for (Index t = 0; t < tb; ++t) std::copy(acc[t], acc[t] + nc, Y + (t0 + t) * ldy + c0);
        }
      }
    }
    if (b)
      for (Index t = 0; t < nt; ++t)
        for (Index j = c_begin; j < c_end; ++j) Y[t * ldy + j] += Acc(b[j]);
  };
  const int use = big ? nth : 1;
  if (use == 1) {
    run(0, out);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(use) schedule(static)
  for (int p = 0; p < use; ++p) {
    const Index lo = chunks * p / use * kCols, hi = std::min(out, chunks * (p + 1) / use * kCols);
    run(lo, hi);
  }
#else
  run(0, out);
#endif
}

/// y = norm(x) for one row of width d, in Acc (sums of squares and the mean in double).
template <class Acc, class TW>
void fl_norm(const TW* x, Index d, const NormWeights<TW>& w, const NormSpec& spec, Acc* y) {
  double mean = 0, ss = 0;
  if (spec.kind == NormKind::layer) {
    for (Index i = 0; i < d; ++i) mean += static_cast<double>(x[i]);
    mean /= static_cast<double>(d);
  }
  for (Index i = 0; i < d; ++i) {
    const double c = static_cast<double>(x[i]) - mean;
    ss += c * c;
  }
  const Acc scale = static_cast<Acc>(1.0 / std::sqrt(ss / static_cast<double>(d) + spec.eps));
  const Acc m = static_cast<Acc>(mean);
  const bool one_plus = spec.gain == GainConvention::one_plus;
  for (Index i = 0; i < d; ++i) {
    Acc v = (static_cast<Acc>(x[i]) - m) * scale;
    if (w.gain.size()) {
      const Acc g = static_cast<Acc>(w.gain(i));
      v *= one_plus ? g + Acc(1) : g;
    }
    if (w.beta.size()) v += static_cast<Acc>(w.beta(i));
    y[i] = v;
  }
}

template <class TW>
const TW* fl_bias(const RowVector<TW>& b) {
  return b.size() ? b.data() : nullptr;
}

}  // namespace detail

namespace rewrite {

/// Computes table rows for `n` tokens in precision Acc (float or double):
///   out.row(r) = [ x | norm1(x) W_Q + b_Q | norm1(x) W_K + b_K | norm1(x) W_V + b_V ],
/// x = embedding.row(ids[r]); parallel blocks add ffn(norm2(x)) to the residual part.
/// embedding: vocab x d (TW); block: layer 1's weights in (in x out) layout; out: n x
/// FirstLayerLayout::of(shape).width(), written in place. This is both the table builder's kernel
/// and the runtime computed path. Throws ShapeError on bad shapes or token ids out of range.
template <class Acc, class TW>
void compute_first_layer_rows(const RowMatrix<TW>& embedding, const BlockWeights<TW>& block,
                              const BlockConfig& cfg, const int* ids, Index n,
                              Eigen::Ref<RowMatrix<Acc>> out, int threads = 0) {
  static_assert(std::is_same_v<Acc, float> || std::is_same_v<Acc, double>,
                "compute_first_layer_rows accumulates in float or double");
  const char* fn = "rewrite::compute_first_layer_rows";
  detail::check_first_layer(fn, embedding, block, cfg);
  const AttentionShape& s = cfg.attn.shape;
  const FirstLayerLayout L = FirstLayerLayout::of(s);
  detail::check_shape(fn, "out", out, n, L.width());
  for (Index r = 0; r < n; ++r)
    if (ids[r] < 0 || ids[r] >= embedding.rows())
      detail::raise(ErrorKind::shape, detail::concat("ttx::", fn, ": ids[", r, "] expected in [0, ",
                                                     embedding.rows(), "), got ", ids[r]));
  if (n == 0) return;
  const Index d = s.d, ld = out.outerStride();
  const int th = detail::fl_threads(threads);
  std::vector<Acc> xn(static_cast<size_t>(n * d));
  for (Index r = 0; r < n; ++r)
    detail::fl_norm<Acc>(embedding.row(ids[r]).data(), d, block.norm1, cfg.norm, xn.data() + r * d);
  Acc* o = out.data();
  const auto& a = block.attn;
  detail::fl_matmul<Acc>(xn.data(), d, n, a.wq.data(), d, L.q_width, detail::fl_bias(a.bq),
                         o + L.q_offset(), ld, th);
  detail::fl_matmul<Acc>(xn.data(), d, n, a.wk.data(), d, L.kv_width, detail::fl_bias(a.bk),
                         o + L.k_offset(), ld, th);
  detail::fl_matmul<Acc>(xn.data(), d, n, a.wv.data(), d, L.kv_width, detail::fl_bias(a.bv),
                         o + L.v_offset(), ld, th);
  for (Index r = 0; r < n; ++r) {
    const TW* x = embedding.row(ids[r]).data();
    for (Index i = 0; i < d; ++i) o[r * ld + i] = static_cast<Acc>(x[i]);
  }
  if (cfg.kind != BlockKind::parallel) return;
  // Parallel block: residual += ffn(norm2(x)), the FFN's whole contribution to layer 1's output.
  for (Index r = 0; r < n; ++r)
    detail::fl_norm<Acc>(embedding.row(ids[r]).data(), d, block.norm2, cfg.norm, xn.data() + r * d);
  const auto& f = block.ffn;
  const Index fw = f.w_in.cols();
  std::vector<Acc> h(static_cast<size_t>(n * fw)), y(static_cast<size_t>(n * d));
  detail::fl_matmul<Acc>(xn.data(), d, n, f.w_in.data(), d, fw, detail::fl_bias(f.b_in), h.data(),
                         fw, th);
  for (auto& v : h) v = activate(cfg.ffn.act, v);
  if (cfg.ffn.kind == FfnKind::glu) {
    std::vector<Acc> u(static_cast<size_t>(n * fw));
    detail::fl_matmul<Acc>(xn.data(), d, n, f.w_up.data(), d, fw, detail::fl_bias(f.b_up), u.data(),
                           fw, th);
    for (size_t i = 0; i < h.size(); ++i) h[i] *= u[i];
  }
  detail::fl_matmul<Acc>(h.data(), fw, n, f.w_out.data(), fw, d, detail::fl_bias(f.b_out), y.data(),
                         d, th);
  for (Index r = 0; r < n; ++r)
    for (Index i = 0; i < d; ++i) o[r * ld + i] += y[static_cast<size_t>(r * d + i)];
}

/// Builds the table for every vocabulary entry of `embedding` (vocab x d) with layer 1 = `block`
/// (serial or parallel pre-norm, RMSNorm or LayerNorm, any gain convention, MHA/GQA/MQA, optional
/// biases, FlashNorm-folded weights accepted: all-ones or empty gains). Rows are computed in float
/// (TableCompute::working, bitwise equal to the runtime computed path) or double, stored at T.
/// Throws UnsupportedError for skipless blocks, ShapeError on bad shapes, NumericalError when a
/// value overflows T. Example:
///   auto table = ttx::rewrite::build_first_layer_table<ttx::bf16>(w.embedding, w.blocks[0],
///   cfg.block);
template <class T, class TW>
FirstLayerTable<T> build_first_layer_table(const RowMatrix<TW>& embedding,
                                           const BlockWeights<TW>& block, const BlockConfig& cfg,
                                           const FirstLayerOptions& opt = {}) {
  const char* fn = "rewrite::build_first_layer_table";
  detail::check_first_layer(fn, embedding, block, cfg);
  detail::require(opt.chunk > 0, ErrorKind::shape, fn, "opt.chunk expected > 0, got ", opt.chunk);
  detail::require(opt.threads >= 0, ErrorKind::shape, fn, "opt.threads expected >= 0, got ",
                  opt.threads);
  FirstLayerTable<T> t;
  t.kind = cfg.kind;
  t.attn = cfg.attn;
  t.layout = FirstLayerLayout::of(cfg.attn.shape);
  const Index vocab = embedding.rows(), W = t.layout.width();
  t.rows.resize(vocab, W);
  const double top = max_finite<T>();
  double max_abs = 0;
  std::vector<int> ids(static_cast<size_t>(std::min(opt.chunk, vocab)));
  auto fill = [&](auto acc_tag) {
    using Acc = decltype(acc_tag);
    RowMatrix<Acc> buf(static_cast<Index>(ids.size()), W);
    for (Index first = 0; first < vocab; first += opt.chunk) {
      const Index n = std::min(opt.chunk, vocab - first);
      for (Index r = 0; r < n; ++r) ids[static_cast<size_t>(r)] = static_cast<int>(first + r);
      compute_first_layer_rows<Acc>(embedding, block, cfg, ids.data(), n, buf.topRows(n),
                                    opt.threads);
      for (Index r = 0; r < n; ++r)
        for (Index c = 0; c < W; ++c) {
          const double v = static_cast<double>(buf(r, c));
          if (std::isfinite(v)) {
            max_abs = std::max(max_abs, std::abs(v));
            if (std::abs(v) > top)
              detail::raise(
                  ErrorKind::numerical,
                  detail::concat("ttx::", fn, ": row of token ", first + r, ", column ", c, " = ",
                                 v, " overflows ", type_name<T>(), " (max ", top, ")"));
          }
        }
      t.rows.middleRows(first, n) = buf.topRows(n).template cast<T>();
      if (opt.progress) opt.progress(first + n, vocab);
    }
  };
  if (opt.compute == TableCompute::exact)
    fill(double{});
  else
    fill(float{});

  FirstLayerReport& rep = t.report;
  rep.kind = cfg.kind;
  rep.vocab = vocab;
  rep.width = W;
  rep.ffn_in_table = cfg.kind == BlockKind::parallel;
  rep.table_bytes = t.bytes();
  rep.embedding_bytes = static_cast<std::size_t>(vocab * cfg.attn.shape.d) * sizeof(T);
  const auto& a = block.attn;
  std::size_t off =
      static_cast<std::size_t>(a.wq.size() + a.wk.size() + a.wv.size() + a.bq.size() + a.bk.size() +
                               a.bv.size() + block.norm1.gain.size() + block.norm1.beta.size());
  if (rep.ffn_in_table) {
    const auto& f = block.ffn;
    off += static_cast<std::size_t>(f.w_in.size() + f.w_up.size() + f.w_out.size() + f.b_in.size() +
                                    f.b_up.size() + f.b_out.size() + block.norm2.gain.size() +
                                    block.norm2.beta.size());
  }
  rep.weights_off_path = off;
  rep.max_abs = max_abs;
  rep.computed_in = opt.compute == TableCompute::exact ? "f64" : "f32";
  return t;
}

/// Whole-model entry point: refuses learned absolute positions (GPT-2): they are added to the
/// embedding before layer 1, so layer 1's input depends on the position and no per-token table
/// exists. RoPE (or no positional encoding, or ALiBi) models are the target.
template <class T, class TW>
FirstLayerTable<T> build_first_layer_table(const ModelConfig& cfg, const ModelWeights<TW>& w,
                                           const FirstLayerOptions& opt = {}) {
  const char* fn = "rewrite::build_first_layer_table";
  detail::require(!cfg.learned_positions, ErrorKind::unsupported, fn,
                  "cfg.learned_positions expected false, got true: learned absolute positions "
                  "are added to the embedding before layer 1, so its input depends on the "
                  "position and cannot be tabulated per token (GPT-2 style); use a RoPE model");
  detail::require(cfg.layers >= 1 && !w.blocks.empty(), ErrorKind::shape, fn,
                  "model expected at least 1 block, got ", w.blocks.size());
  detail::check_dim(fn, "embedding.rows() (= cfg.vocab)", cfg.vocab, w.embedding.rows());
  return build_first_layer_table<T>(w.embedding, w.blocks.front(), cfg.block, opt);
}

// ---------------------------------------------------------------------------------------------
// Cost model (the paper's accounting, arXiv 2402.13388 §"Examples").

/// How a mixture-of-experts FFN is counted among the weights read per batch.
enum class ExpertReads {
  all,     ///< every expert (the paper's accounting, also at batch 1)
  routed,  ///< the experts a batch is expected to touch with uniform top-k routing:
           ///< E (1 - (1 - k/E)^B)
};

struct FirstLayerCostConfig {
  Index d = 0;    ///< model width
  Index e = 0;    ///< K/V width h_kv * d_k
  Index e_q = 0;  ///< Q width h * d_k; 0 means d
  Index layers = 0;
  Index vocab = 0;
  Index ffn_hidden = 0;                ///< FFN hidden width f (per expert)
  BlockKind kind = BlockKind::serial;  ///< serial or parallel
  bool glu = false;                    ///< GLU FFN: 3 d f weights per expert, else 2 d f
  Index experts = 1;
  Index experts_per_token = 1;  ///< top-k routing
  ExpertReads expert_reads = ExpertReads::all;
  double bytes_per_value = 2;  ///< weights, embeddings and table entries (bf16: 2)
};

/// Counts are in values (multiply by bytes_per_value for bytes); the paper ignores norms, biases
/// and routers, and so does this.
struct FirstLayerCost {
  Index batch = 1;
  double weights_removed = 0;  ///< Q, K, V (+ FFN, parallel): d e_q + 2 d e (+ (2|3) d f E)
  double reads_without = 0;    ///< per batch: B d + Q,K,V(,FFN) weights read
  double reads_with = 0;       ///< per batch: B (d + e_q + 2e)
  double reduction = 0;        ///< reads_without / reads_with
  double bytes_per_token_without = 0, bytes_per_token_with = 0;
  double table_extra = 0;            ///< (e_q + 2e) vocab: table minus the embedding it replaces
  double memory_delta = 0;           ///< table_extra - weights_removed
  double total_weights = 0;          ///< layers (2 d e_q + 2 d e + ffn) + 2 d vocab
  double memory_delta_relative = 0;  ///< memory_delta / total_weights
};

/// The paper's model: without the table a batch of B tokens reads B d embedding values plus the
/// layer-1 weights the table removes; with it, B (d + e_q + 2e) table values. Memory grows by the
/// table minus the embedding, (e_q + 2e) vocab, and shrinks by the removed weights.
inline FirstLayerCost first_layer_cost(const FirstLayerCostConfig& c, Index batch) {
  const char* fn = "rewrite::first_layer_cost";
  for (auto [name, v] : {std::pair<const char*, Index>{"d", c.d},
                         {"e", c.e},
                         {"layers", c.layers},
                         {"vocab", c.vocab},
                         {"ffn_hidden", c.ffn_hidden},
                         {"experts", c.experts},
                         {"experts_per_token", c.experts_per_token},
                         {"batch", batch}})
    detail::require(v > 0, ErrorKind::shape, fn, name, " expected > 0, got ", v);
  detail::require(c.experts_per_token <= c.experts, ErrorKind::shape, fn,
                  "experts_per_token expected <= experts=", c.experts, ", got ",
                  c.experts_per_token);
  detail::require(c.kind == BlockKind::serial || c.kind == BlockKind::parallel,
                  ErrorKind::unsupported, fn, "kind expected serial or parallel");
  const double d = static_cast<double>(c.d), e = static_cast<double>(c.e),
               eq = static_cast<double>(c.e_q ? c.e_q : c.d), f = static_cast<double>(c.ffn_hidden),
               E = static_cast<double>(c.experts), B = static_cast<double>(batch),
               V = static_cast<double>(c.vocab);
  const double qkv = d * eq + 2 * d * e;
  const double per_expert = (c.glu ? 3.0 : 2.0) * d * f;
  const bool par = c.kind == BlockKind::parallel;
  FirstLayerCost r;
  r.batch = batch;
  r.weights_removed = qkv + (par ? per_expert * E : 0.0);
  double ffn_read = per_expert * E;
  if (c.expert_reads == ExpertReads::routed && c.experts > 1)
    ffn_read =
        per_expert * E * (1.0 - std::pow(1.0 - static_cast<double>(c.experts_per_token) / E, B));
  r.reads_without = B * d + qkv + (par ? ffn_read : 0.0);
  r.reads_with = B * (d + eq + 2 * e);
  r.reduction = r.reads_without / r.reads_with;
  r.bytes_per_token_without = r.reads_without / B * c.bytes_per_value;
  r.bytes_per_token_with = r.reads_with / B * c.bytes_per_value;
  r.table_extra = (eq + 2 * e) * V;
  r.memory_delta = r.table_extra - r.weights_removed;
  r.total_weights =
      static_cast<double>(c.layers) * (2 * d * eq + 2 * d * e + per_expert * E) + 2 * d * V;
  r.memory_delta_relative = r.memory_delta / r.total_weights;
  return r;
}

}  // namespace rewrite
}  // namespace ttx
