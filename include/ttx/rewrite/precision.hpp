// Precision you can trust (issue 8): exact in real arithmetic is not exact in floating point.
//
// Slim attention's keys/values forms multiply the cache by an inverse (W_KV = W_K^{-1} W_V), so
// the rounding of every cached row is amplified by up to cond(W_K); FlashNorm folds scale the
// weights; skipless merges solve with every removed matrix; first-layer tables store products
// at the table's type. This header measures instead of guessing:
//
//  * plan_layer: for one attention layer, a cache storage type (f32 / f16 / bf16) and an error
//    budget (relative error of the attention output), runs every admissible cache form (vanilla
//    K+V, keys, values, inputs; with RoPE only vanilla and keys) through its runtime path
//    (kernel::slim_prefill + kernel::slim_decode, or kernel::decode_vanilla) with the cache in
//    the storage type, compares with a double computation of the same causal self-attention, and
//    picks the smallest cache within the budget. plan_model does it for every layer.
//    The error is ||Y - Y_ref||_F / ||Y_ref||_F over all prefill and decode outputs. Inputs are
//    rounded to float first, so the figure is the cost of the cache form and the storage type,
//    not of the input's own rounding.
//  * certify_*: a PrecisionCertificate per rewrite: condition numbers of every inverse, largest
//    magnitudes against the storage type's range, measured errors against double.
//  * convert_checked<T>(m, name): conversion to a storage type that names the first overflow.
//
// Without caller activations the measurement uses synthetic_activations(): Student-t rows (heavy
// tails) RMS-normalised like a norm's output, then a few outlier channels scaled up (as a large
// norm gain does in trained models). That is a stand-in: pass the layer's real inputs when you
// have them (a few dozen rows suffice).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ttx/cache/k_cache.hpp"
#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/v_cache.hpp"
#include "ttx/cache/x_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/linalg.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"
#include "ttx/kernel/decode.hpp"
#include "ttx/kernel/encdec.hpp"
#include "ttx/kernel/flashnorm.hpp"
#include "ttx/kernel/skipless_model.hpp"
#include "ttx/kernel/slim_attention.hpp"
#include "ttx/rewrite/encdec.hpp"
#include "ttx/rewrite/first_layer.hpp"
#include "ttx/rewrite/flashnorm.hpp"
#include "ttx/rewrite/skipless.hpp"
#include "ttx/rewrite/slim.hpp"

namespace ttx {

/// Converts `m` to storage type T, refusing values T cannot hold: NumericalError naming the
/// matrix, the index, the value and T's largest finite value (also for NaN or infinite input,
/// which no weight should contain). The result has m's shape (row-major unless m is a column).
///   RowMatrix<Eigen::half> wkv = ttx::convert_checked<Eigen::half>(slim.value_map, "W_KV");
template <class T, class D>
auto convert_checked(const Eigen::MatrixBase<D>& m, const char* name) {
  static_assert(is_storage_type_v<T>, "convert_checked converts to float, double, bf16 or half");
  constexpr int R = D::RowsAtCompileTime, C = D::ColsAtCompileTime;
  using Out = Eigen::Matrix<T, R, C, (C == 1 && R != 1) ? Eigen::ColMajor : Eigen::RowMajor>;
  const double top = max_finite<T>();
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) {
      const double v = static_cast<double>(m(r, c));
      if (!std::isfinite(v))
        detail::raise(ErrorKind::numerical,
                      detail::concat("ttx::convert_checked: ", name, "(", r, ",", c, ") = ", v,
                                     " is not finite (converting to ", type_name<T>(), ")"));
      if (std::abs(v) > top)
        detail::raise(ErrorKind::numerical,
                      detail::concat("ttx::convert_checked: ", name, "(", r, ",", c, ") = ", v,
                                     " overflows ", type_name<T>(), " (max ", top, ")"));
    }
  Out out = m.template cast<T>();
  return out;
}

namespace rewrite {

// ---------------------------------------------------------------------------------------------
// Storage types at run time.

/// The storage type of a cache or of folded weights, chosen at run time.
enum class StorageType { f32, f16, bf16 };

inline const char* name(StorageType t) {
  switch (t) {
    case StorageType::f16:
      return "f16";
    case StorageType::bf16:
      return "bf16";
    default:
      return "f32";
  }
}
inline std::size_t storage_bytes(StorageType t) {
  return t == StorageType::f32 ? 4 : 2;
}

namespace precision_detail {
template <class T>
struct Tag {
  using type = T;
};
/// Calls f(Tag<T>{}) with T the C++ type of `t`.
template <class F>
decltype(auto) with_storage(StorageType t, F&& f) {
  switch (t) {
    case StorageType::f16:
      return f(Tag<f16>{});
    case StorageType::bf16:
      return f(Tag<bf16>{});
    default:
      return f(Tag<float>{});
  }
}
}  // namespace precision_detail

/// ttx::unit_roundoff<T>() of the type: the machine epsilon (spacing at 1) 2^-23 (f32), 2^-10
/// (f16), 2^-7 (bf16), the same convention everywhere in ttx; the round-to-nearest bound on one
/// rounding's relative error is half of it.
inline double storage_roundoff(StorageType t) {
  return precision_detail::with_storage(
      t, [](auto tag) { return unit_roundoff<typename decltype(tag)::type>(); });
}
/// ttx::max_finite<T>() of the type.
inline double storage_max(StorageType t) {
  return precision_detail::with_storage(
      t, [](auto tag) { return max_finite<typename decltype(tag)::type>(); });
}

namespace precision_detail {
inline std::string sci(double v, int digits = 2) {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return "inf";
  std::ostringstream os;
  os << std::scientific << std::setprecision(digits) << v;
  return os.str();
}
}  // namespace precision_detail

// ---------------------------------------------------------------------------------------------
// Synthetic activations.

/// The stand-in for a layer's inputs when the caller has none (see the file comment).
struct SyntheticActivations {
  Index tokens = 24;           ///< rows (prefill + decode steps)
  double dof = 3.0;            ///< Student-t degrees of freedom (heavy tails; > 2)
  Index outlier_channels = 3;  ///< channels scaled by outlier_scale after the normalisation
  double outlier_scale = 20.0;
  std::uint64_t seed = 0x7e57ed;
};

/// tokens x d rows: Student-t entries, each row divided by its RMS (a post-norm activation),
/// then `outlier_channels` fixed channels (chosen by the seed) multiplied by outlier_scale.
inline RowMatrix<double> synthetic_activations(Index d, const SyntheticActivations& s = {}) {
  const char* fn = "rewrite::synthetic_activations";
  detail::require(d > 0, ErrorKind::shape, fn, "d expected > 0, got ", d);
  detail::require(s.tokens > 0, ErrorKind::shape, fn, "tokens expected > 0, got ", s.tokens);
  detail::require(s.dof > 2, ErrorKind::shape, fn, "dof expected > 2 (finite variance), got ",
                  s.dof);
  detail::require(s.outlier_channels >= 0 && s.outlier_channels <= d, ErrorKind::shape, fn,
                  "outlier_channels expected in [0, d = ", d, "], got ", s.outlier_channels);
  std::mt19937_64 rng(s.seed);
  std::student_t_distribution<double> t(s.dof);
  RowMatrix<double> X(s.tokens, d);
  for (Index i = 0; i < X.size(); ++i) X.data()[i] = t(rng);
  for (Index r = 0; r < X.rows(); ++r) {
    const double rms = std::sqrt(X.row(r).squaredNorm() / static_cast<double>(d));
    X.row(r) /= rms > 0 ? rms : 1.0;
  }
  std::vector<Index> channels(static_cast<std::size_t>(d));
  for (Index i = 0; i < d; ++i) channels[static_cast<std::size_t>(i)] = i;
  std::shuffle(channels.begin(), channels.end(), rng);
  for (Index k = 0; k < s.outlier_channels; ++k)
    X.col(channels[static_cast<std::size_t>(k)]) *= s.outlier_scale;
  return X;
}

// ---------------------------------------------------------------------------------------------
// The planner.

/// A cache form as the planner sees it: the vanilla K+V cache or one of slim's forms.
enum class PlanForm { vanilla, keys, values, inputs };

inline const char* name(PlanForm f) {
  switch (f) {
    case PlanForm::vanilla:
      return "vanilla";
    case PlanForm::keys:
      return "keys";
    case PlanForm::values:
      return "values";
    default:
      return "inputs";
  }
}

struct PlanOptions {
  StorageType cache = StorageType::f32;  ///< the cache's storage type
  double budget = 1e-2;                  ///< allowed relative error of the attention output
  /// Store the layer's (transformed) weights at the cache type too; default float (the slim
  /// kernels compute in float either way: weights are rounded through the type, then widened).
  bool weights_in_cache_type = false;
  Index decode_steps = 4;          ///< the last rows of the activations run as decode steps
  SyntheticActivations synthetic;  ///< used when no activations are given
};

/// Everything measured for one form of one layer.
struct FormMeasure {
  PlanForm form = PlanForm::vanilla;
  bool admissible = false;
  std::string why_not;              ///< when not admissible: the reason (the rewrite's error)
  Index cached_width = 0;           ///< values per token
  std::size_t bytes_per_token = 0;  ///< cached_width * sizeof(cache type)
  double cond_estimate = 1;         ///< of the inverted basis (1: nothing inverted)
  double max_abs_transform = 0;     ///< max |W_KV| or |W_VK| (0 for vanilla and inputs)
  double max_abs_weights = 0;       ///< largest |value| of every weight the form stores
  double max_abs_cached = 0;        ///< largest |value| written to the cache
  bool representable = true;        ///< weights and cached values finite in the cache type
  double measured_rel_error = std::numeric_limits<double>::quiet_NaN();  ///< inf: overflow
  bool within_budget = false;
  std::string notes;
};

/// The plan for one layer: every form's figures and the choice.
struct LayerPlan {
  StorageType cache = StorageType::f32;
  bool weights_in_cache_type = false;
  double budget = 0;
  Index tokens = 0;
  bool synthetic = true;  ///< measured on synthetic_activations()
  PlanForm choice = PlanForm::vanilla;
  /// false when no admissible form met the budget: the choice is then the most accurate one.
  bool choice_within_budget = false;
  std::vector<FormMeasure> forms;  ///< vanilla, keys, values, inputs (in that order)

  const FormMeasure& measure(PlanForm f) const { return forms[static_cast<std::size_t>(f)]; }
  const FormMeasure& chosen() const { return measure(choice); }

  void print(std::ostream& os) const {
    using precision_detail::sci;
    os << "layer plan: cache " << name(cache) << ", weights "
       << (weights_in_cache_type ? name(cache) : "f32") << ", budget " << sci(budget) << ", "
       << tokens << " tokens (" << (synthetic ? "synthetic" : "caller's") << " activations)\n";
    os << "  form     adm  B/token  rel.error  cond      max|M|    max|W|    max|cache| repr\n";
    for (const auto& f : forms) {
      os << "  " << std::left << std::setw(8) << name(f.form) << " " << std::setw(4)
         << (f.admissible ? "yes" : "no");
      if (!f.admissible) {
        os << " " << f.why_not << "\n";
        continue;
      }
      os << " " << std::setw(8) << f.bytes_per_token << " " << std::setw(10)
         << sci(f.measured_rel_error) << " " << std::setw(9) << sci(f.cond_estimate, 1) << " "
         << std::setw(9) << sci(f.max_abs_transform, 1) << " " << std::setw(9)
         << sci(f.max_abs_weights, 1) << " " << std::setw(10) << sci(f.max_abs_cached, 1) << " "
         << (f.representable ? "yes" : "NO") << (f.within_budget ? "" : "  over budget")
         << std::right << "\n";
      if (!f.notes.empty()) os << "           note: " << f.notes << "\n";
    }
    os << "  choice: " << name(choice)
       << (choice_within_budget ? " (smallest cache within budget)"
                                : " (NO form within budget: the most accurate one)")
       << "\n";
  }
  std::string to_string() const {
    std::ostringstream os;
    print(os);
    return os.str();
  }
};

/// Per-layer choices for a model.
struct ModelPlan {
  StorageType cache = StorageType::f32;
  bool weights_in_cache_type = false;
  double budget = 0;
  std::vector<LayerPlan> layers;

  std::size_t total_bytes_per_token() const {
    std::size_t b = 0;
    for (const auto& l : layers) b += l.chosen().bytes_per_token;
    return b;
  }
  std::size_t vanilla_bytes_per_token() const {
    std::size_t b = 0;
    for (const auto& l : layers) b += l.measure(PlanForm::vanilla).bytes_per_token;
    return b;
  }
  /// Largest measured error among the chosen forms.
  double worst_error() const {
    double w = 0;
    for (const auto& l : layers) w = std::max(w, l.chosen().measured_rel_error);
    return w;
  }
  bool all_within_budget() const {
    for (const auto& l : layers)
      if (!l.choice_within_budget) return false;
    return true;
  }

  /// One row per layer: the choice, its bytes and error, and every form's measured error
  /// ("n/a": not admissible, "inf": overflow, "*": over budget).
  void print(std::ostream& os) const {
    using precision_detail::sci;
    os << "cache " << name(cache) << ", weights " << (weights_in_cache_type ? name(cache) : "f32")
       << ", budget " << sci(budget) << "\n";
    os << "layer choice   B/token  error     | vanilla   keys      values    inputs    | "
          "cond(keys) cond(values) max|W_KV|\n";
    auto err = [&](const FormMeasure& f) {
      if (!f.admissible) return std::string("n/a");
      return sci(f.measured_rel_error) + (f.within_budget ? "" : "*");
    };
    auto cond = [&](const FormMeasure& f) {
      return f.admissible ? sci(f.cond_estimate, 1) : std::string("n/a");
    };
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const LayerPlan& p = layers[l];
      os << std::left << std::setw(5) << l << " " << std::setw(8) << name(p.choice) << " "
         << std::setw(8) << p.chosen().bytes_per_token << " " << std::setw(9)
         << sci(p.chosen().measured_rel_error) << (p.choice_within_budget ? " " : "!") << "| ";
      for (const auto& f : p.forms) os << std::setw(9) << err(f) << " ";
      os << "| " << std::setw(10) << cond(p.measure(PlanForm::keys)) << " " << std::setw(12)
         << cond(p.measure(PlanForm::values)) << " "
         << (p.measure(PlanForm::keys).admissible
                 ? sci(p.measure(PlanForm::keys).max_abs_transform, 1)
                 : std::string("n/a"))
         << std::right << "\n";
    }
    const std::size_t total = total_bytes_per_token(), vanilla = vanilla_bytes_per_token();
    os << "total: " << total << " B/token (vanilla " << vanilla << ", " << std::setprecision(3)
       << (vanilla ? 100.0 * total / vanilla : 0.0) << "%), worst error " << sci(worst_error())
       << (all_within_budget() ? ", every layer within budget"
                               : ", SOME LAYER OVER BUDGET (marked !)")
       << "\n";
  }
  std::string to_string() const {
    std::ostringstream os;
    print(os);
    return os.str();
  }
};

namespace precision_detail {

using kernel::SlimWorkspace;

template <class D>
double rel_error(const Eigen::MatrixBase<D>& y, const RowMatrix<double>& ref) {
  const double num = (y.template cast<double>() - ref).norm(), den = ref.norm();
  const double r = den > 0 ? num / den : num;
  return std::isnan(r) ? std::numeric_limits<double>::infinity() : r;
}

template <class M>
double max_abs(const M& m) {
  return m.size() ? static_cast<double>(m.template cast<double>().cwiseAbs().maxCoeff()) : 0.0;
}

/// Causal self-attention of X (n x d, positions 0..n-1) in double: the measuring stick (the same
/// maths as reference::self_attention, which the library may not include; the test compares).
inline RowMatrix<double> attention_double(const RowMatrix<double>& X,
                                          const AttentionWeights<double>& w,
                                          const AttentionConfig& cfg) {
  const AttentionShape& s = cfg.shape;
  const Index n = X.rows(), dk = s.head_dim;
  RowMatrix<double> Q = X * w.wq, K = X * w.wk, V = X * w.wv;
  if (w.bq.size()) Q.rowwise() += w.bq;
  if (w.bk.size()) K.rowwise() += w.bk;
  if (w.bv.size()) V.rowwise() += w.bv;
  if (cfg.rope.enabled()) {
    const std::vector<double> freqs = cfg.rope.frequencies();
    for (Index r = 0; r < n; ++r) {
      for (Index i = 0; i < s.heads; ++i)
        rope_rotate_head(Q.row(r).segment(i * dk, dk), cfg.rope, freqs, double(r), +1);
      for (Index g = 0; g < s.kv_heads; ++g)
        rope_rotate_head(K.row(r).segment(g * dk, dk), cfg.rope, freqs, double(r), +1);
    }
  }
  RowMatrix<double> H(n, s.q_width());
  const double scale = cfg.effective_scale();
  for (Index i = 0; i < s.heads; ++i) {
    const Index g = s.kv_head_of(i);
    RowMatrix<double> S = scale * Q.middleCols(i * dk, dk) * K.middleCols(g * dk, dk).transpose();
    for (Index r = 0; r < n; ++r) {
      const double m = S.row(r).head(r + 1).maxCoeff();
      double sum = 0;
      for (Index j = 0; j < n; ++j) {
        S(r, j) = j <= r ? std::exp(S(r, j) - m) : 0.0;
        sum += S(r, j);
      }
      S.row(r) /= sum;
    }
    H.middleCols(i * dk, dk) = S * V.middleCols(g * dk, dk);
  }
  RowMatrix<double> Y = H * w.wo;
  if (w.bo.size()) Y.rowwise() += w.bo;
  return Y;
}

/// Rounds through T and back (the weights as the kernels would read them if stored at T).
template <class T, class M>
void round_through(M& m) {
  if (m.size()) m = m.template cast<T>().template cast<float>();
}

template <class T>
void round_slim(SlimAttention<float>& s) {
  round_through<T>(s.wq);
  round_through<T>(s.bq);
  round_through<T>(s.cache_proj);
  round_through<T>(s.cache_bias);
  round_through<T>(s.query_map);
  round_through<T>(s.value_map);
  round_through<T>(s.wo);
  round_through<T>(s.bo);
}

inline double slim_max_abs(const SlimAttention<float>& s) {
  return std::max({max_abs(s.wq), max_abs(s.bq), max_abs(s.cache_proj), max_abs(s.cache_bias),
                   max_abs(s.query_map), max_abs(s.value_map), max_abs(s.wo), max_abs(s.bo)});
}

/// Prefill of the first n - steps rows, then one decode step per remaining row.
template <class Cache>
RowMatrix<float> run_slim_cache(Cache& cache, const SlimAttention<float>& slim,
                                const RowMatrix<float>& X, Index steps) {
  const Index n = X.rows(), p = n - steps;
  RowMatrix<float> Y(n, slim.shape.d);
  SlimWorkspace ws;
  kernel::slim_prefill(X.topRows(p), slim, cache, Y.topRows(p), ws);
  kernel::SlimDecodeOptions opt;
  opt.threads = 1;  // a few short steps: threads would cost more than they save
  for (Index t = p; t < n; ++t) kernel::slim_decode(X.row(t), slim, cache, Y.row(t), ws, opt);
  return Y;
}

template <class CacheT>
RowMatrix<float> run_slim(const SlimAttention<float>& slim, const RowMatrix<float>& X,
                          Index steps) {
  const Index n = X.rows();
  if (slim.form == CacheForm::keys) {
    KCache<CacheT> c(slim.shape, n, KeyStorage::raw, slim.cached_width);
    return run_slim_cache(c, slim, X, steps);
  }
  if (slim.form == CacheForm::values) {
    VCache<CacheT> c(slim.shape, n, slim.cached_width);
    return run_slim_cache(c, slim, X, steps);
  }
  XCache<CacheT> c(slim.shape, n);
  return run_slim_cache(c, slim, X, steps);
}

/// The vanilla path at the same working precision: float projections, K and V cached at CacheT,
/// kernel::decode_vanilla for every token in turn (causal by construction).
template <class CacheT>
RowMatrix<float> run_vanilla(const AttentionWeights<float>& w, const AttentionConfig& cfg,
                             const RowMatrix<float>& X) {
  const AttentionShape& s = cfg.shape;
  const Index n = X.rows(), dk = s.head_dim;
  KVCache<CacheT> cache(s, n);
  const std::vector<double> freqs =
      cfg.rope.enabled() ? cfg.rope.frequencies() : std::vector<double>();
  RowMatrix<float> Y(n, s.d);
  RowVector<float> q(s.q_width()), k(s.kv_width()), v(s.kv_width()), heads(s.q_width());
  kernel::DecodeOptions opt;
  opt.scale = cfg.effective_scale();
  opt.threads = 1;
  for (Index t = 0; t < n; ++t) {
    q.noalias() = X.row(t) * w.wq;
    k.noalias() = X.row(t) * w.wk;
    v.noalias() = X.row(t) * w.wv;
    if (w.bq.size()) q += w.bq;
    if (w.bk.size()) k += w.bk;
    if (w.bv.size()) v += w.bv;
    if (cfg.rope.enabled()) {
      for (Index i = 0; i < s.heads; ++i)
        rope_rotate_head(q.segment(i * dk, dk), cfg.rope, freqs, double(t), +1);
      for (Index g = 0; g < s.kv_heads; ++g)
        rope_rotate_head(k.segment(g * dk, dk), cfg.rope, freqs, double(t), +1);
    }
    cache.append(k, v);
    kernel::decode_vanilla(q, cache, s, opt, heads);
    Y.row(t).noalias() = heads * w.wo;
    if (w.bo.size()) Y.row(t) += w.bo;
  }
  return Y;
}

template <class S>
void check_layer(const char* fn, const AttentionWeights<S>& w, const AttentionConfig& cfg) {
  const AttentionShape& s = cfg.shape;
  s.validate(fn);
  detail::check_shape(fn, "w.wq", w.wq, s.d, s.q_width());
  detail::check_shape(fn, "w.wk", w.wk, s.d, s.kv_width());
  detail::check_shape(fn, "w.wv", w.wv, s.d, s.kv_width());
  detail::check_shape(fn, "w.wo", w.wo, s.q_width(), s.d);
  if (w.bq.size()) detail::check_dim(fn, "w.bq.size()", s.q_width(), w.bq.size());
  if (w.bk.size()) detail::check_dim(fn, "w.bk.size()", s.kv_width(), w.bk.size());
  if (w.bv.size()) detail::check_dim(fn, "w.bv.size()", s.kv_width(), w.bv.size());
  if (w.bo.size()) detail::check_dim(fn, "w.bo.size()", s.d, w.bo.size());
  cfg.rope.validate(fn, s.head_dim);
}

inline void check_options(const char* fn, const PlanOptions& opt, Index rows) {
  detail::require(opt.budget > 0 && std::isfinite(opt.budget), ErrorKind::shape, fn,
                  "options.budget expected a finite value > 0, got ", opt.budget);
  detail::require(opt.decode_steps >= 0, ErrorKind::shape, fn,
                  "options.decode_steps expected >= 0, got ", opt.decode_steps);
  detail::require(rows > opt.decode_steps, ErrorKind::shape, fn,
                  "activations.rows() expected > options.decode_steps = ", opt.decode_steps,
                  " (at least one prefill row), got ", rows);
}

template <class S>
AttentionWeights<double> to_double(const AttentionWeights<S>& w) {
  return cast_weights<double>(w);
}

/// Measures one form (see plan_layer); CacheT is the cache's storage type.
template <class CacheT>
FormMeasure measure_form(PlanForm form, const AttentionWeights<double>& wd,
                         const AttentionConfig& cfg, const RowMatrix<float>& X,
                         const RowMatrix<double>& ref, const PlanOptions& opt) {
  const AttentionShape& s = cfg.shape;
  const double top = max_finite<CacheT>();
  FormMeasure m;
  m.form = form;
  if (form == PlanForm::vanilla) {
    m.admissible = true;
    m.cached_width = 2 * s.kv_width();
    m.bytes_per_token = static_cast<std::size_t>(m.cached_width) * sizeof(CacheT);
    AttentionWeights<float> wf = cast_weights<float>(wd);
    m.max_abs_weights = std::max({max_abs(wd.wq), max_abs(wd.wk), max_abs(wd.wv), max_abs(wd.wo),
                                  max_abs(wd.bq), max_abs(wd.bk), max_abs(wd.bv), max_abs(wd.bo)});
    if (opt.weights_in_cache_type) {
      for (auto* p : {&wf.wq, &wf.wk, &wf.wv, &wf.wo}) round_through<CacheT>(*p);
      for (auto* p : {&wf.bq, &wf.bk, &wf.bv, &wf.bo}) round_through<CacheT>(*p);
    }
    RowMatrix<float> K = X * wf.wk, V = X * wf.wv;
    if (wf.bk.size()) K.rowwise() += wf.bk;
    if (wf.bv.size()) V.rowwise() += wf.bv;
    m.max_abs_cached = std::max(max_abs(K), max_abs(V));
    m.representable =
        m.max_abs_cached <= top && (!opt.weights_in_cache_type || m.max_abs_weights <= top);
    try {
      m.measured_rel_error = rel_error(run_vanilla<CacheT>(wf, cfg, X), ref);
    } catch (const NumericalError& e) {
      m.measured_rel_error = std::numeric_limits<double>::infinity();
      m.notes = e.what();
    }
  } else {
    SlimOptions so;
    so.form = form == PlanForm::keys     ? CacheForm::keys
              : form == PlanForm::values ? CacheForm::values
                                         : CacheForm::inputs;
    SlimAttention<float> slim;
    try {
      slim = slim_attention<float, CacheT>(wd, cfg, so);
    } catch (const Error& e) {  // RoPE, a shape without compression, a singular basis
      m.why_not = e.what();
      return m;
    }
    m.admissible = true;
    m.cached_width = slim.cached_width;
    m.bytes_per_token = slim.report.bytes_per_token_after;
    m.cond_estimate = slim.report.cond_estimate;
    m.max_abs_transform = slim.report.max_abs_transform;
    m.max_abs_weights = slim_max_abs(slim);
    m.notes = slim.report.notes;
    if (slim.form == CacheForm::inputs) {
      m.max_abs_cached = max_abs(X);
    } else {
      RowMatrix<float> C = X * slim.cache_proj;
      if (slim.cache_bias.size()) C.rowwise() += slim.cache_bias;
      m.max_abs_cached = max_abs(C);
    }
    m.representable = m.max_abs_cached <= top && m.max_abs_weights <= top;
    if (opt.weights_in_cache_type) round_slim<CacheT>(slim);
    try {
      m.measured_rel_error = rel_error(run_slim<CacheT>(slim, X, opt.decode_steps), ref);
    } catch (const NumericalError& e) {  // the cache's overflow check
      m.measured_rel_error = std::numeric_limits<double>::infinity();
      m.notes += (m.notes.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  m.within_budget = m.measured_rel_error <= opt.budget;
  return m;
}

inline void choose(LayerPlan& p) {
  const FormMeasure* best = nullptr;
  for (const auto& f : p.forms)
    if (f.admissible && f.within_budget &&
        (!best || f.bytes_per_token < best->bytes_per_token ||
         (f.bytes_per_token == best->bytes_per_token &&
          f.measured_rel_error < best->measured_rel_error)))
      best = &f;
  p.choice_within_budget = best != nullptr;
  if (!best)
    for (const auto& f : p.forms)
      if (f.admissible && (!best || f.measured_rel_error < best->measured_rel_error)) best = &f;
  p.choice = best ? best->form : PlanForm::vanilla;
}

}  // namespace precision_detail

/// Plans one self-attention layer's cache: measures every form (vanilla K+V; slim keys, values,
/// inputs — values and inputs are not admissible with RoPE, keys/values not for e <= d/2) by
/// running its kernels on `activations` (n x d layer inputs, any scale; rows beyond
/// n - decode_steps run as decode steps) with the cache at options.cache, against a double
/// computation, and chooses the smallest bytes per token whose measured relative error is within
/// options.budget (ties: the smaller error). `w` in (in x out) layout, any scalar. Errors:
/// ShapeError for bad weights, activations or options.
///   auto plan = ttx::rewrite::plan_layer(w, cfg, X, {ttx::rewrite::StorageType::bf16, 1e-2});
///   std::cout << plan.to_string();
template <class S>
LayerPlan plan_layer(const AttentionWeights<S>& w, const AttentionConfig& cfg,
                     const RowMatrix<double>& activations, const PlanOptions& opt = {}) {
  const char* fn = "rewrite::plan_layer";
  precision_detail::check_layer(fn, w, cfg);
  detail::check_dim(fn, "activations.cols() (= d)", cfg.shape.d, activations.cols());
  precision_detail::check_options(fn, opt, activations.rows());
  detail::require(activations.allFinite(), ErrorKind::numerical, fn,
                  "activations expected finite values, got NaN or inf");
  const AttentionWeights<double> wd = precision_detail::to_double(w);
  const RowMatrix<float> X = activations.cast<float>();
  const RowMatrix<double> ref = precision_detail::attention_double(X.cast<double>(), wd, cfg);
  LayerPlan p;
  p.cache = opt.cache;
  p.weights_in_cache_type = opt.weights_in_cache_type;
  p.budget = opt.budget;
  p.tokens = activations.rows();
  p.synthetic = false;
  for (PlanForm f : {PlanForm::vanilla, PlanForm::keys, PlanForm::values, PlanForm::inputs})
    p.forms.push_back(precision_detail::with_storage(opt.cache, [&](auto tag) {
      using T = typename decltype(tag)::type;
      return precision_detail::measure_form<T>(f, wd, cfg, X, ref, opt);
    }));
  precision_detail::choose(p);
  return p;
}

/// As above on synthetic_activations(d, options.synthetic) (see the file comment).
template <class S>
LayerPlan plan_layer(const AttentionWeights<S>& w, const AttentionConfig& cfg,
                     const PlanOptions& opt = {}) {
  precision_detail::check_layer("rewrite::plan_layer", w, cfg);
  LayerPlan p = plan_layer(w, cfg, synthetic_activations(cfg.shape.d, opt.synthetic), opt);
  p.synthetic = true;
  return p;
}

/// Plans every layer (same config): layers[l] measured on activations[l] when given (one
/// matrix per layer), else on synthetic activations with seed options.synthetic.seed + l.
///   auto plan = ttx::rewrite::plan_model(layers, cfg, {ttx::rewrite::StorageType::f16, 1e-2});
///   plan.print(std::cout);
template <class S>
ModelPlan plan_model(const std::vector<AttentionWeights<S>>& layers, const AttentionConfig& cfg,
                     const PlanOptions& opt = {},
                     const std::vector<RowMatrix<double>>& activations = {}) {
  const char* fn = "rewrite::plan_model";
  detail::require(!layers.empty(), ErrorKind::shape, fn, "layers expected at least one, got 0");
  if (!activations.empty())
    detail::check_dim(fn, "activations.size() (= layers.size(), or 0)", layers.size(),
                      activations.size());
  ModelPlan m;
  m.cache = opt.cache;
  m.weights_in_cache_type = opt.weights_in_cache_type;
  m.budget = opt.budget;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (!activations.empty()) {
      m.layers.push_back(plan_layer(layers[l], cfg, activations[l], opt));
    } else {
      PlanOptions o = opt;
      o.synthetic.seed += l;
      m.layers.push_back(plan_layer(layers[l], cfg, o));
    }
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Certificates.

/// One checked quantity of a rewrite. NaN cond: nothing inverted; NaN measured_rel_error: not
/// measured (see PrecisionCertificate::not_measured).
struct CertificateEntry {
  std::string what;
  double cond = std::numeric_limits<double>::quiet_NaN();
  double max_abs = 0;   ///< largest |value| stored
  double type_max = 0;  ///< the storage type's largest finite value
  double measured_rel_error = std::numeric_limits<double>::quiet_NaN();
  bool ok = true;  ///< max_abs <= type_max, error within budget, cond within max_condition
  std::string note;
};

struct CertifyOptions {
  StorageType storage = StorageType::f32;  ///< cache / folded-weight type being certified
  double budget = 1e-2;                    ///< allowed measured relative error
  double max_condition = 0;                ///< flag a larger cond (0: no limit)
  bool weights_in_storage = false;         ///< slim: weights at the storage type, not float
  SyntheticActivations synthetic;          ///< used when no activations are given
  /// certify_skipless: the token ids of the end-to-end run; empty: synthetic.tokens ids drawn
  /// uniformly from the vocabulary with synthetic.seed.
  std::vector<int> tokens;
};

/// The same report for every rewrite.
struct PrecisionCertificate {
  std::string rewrite;
  StorageType storage = StorageType::f32;
  double budget = 0;
  std::vector<CertificateEntry> entries;
  std::vector<std::string> not_measured;  ///< what this certificate could not measure, and why

  bool ok() const {
    for (const auto& e : entries)
      if (!e.ok) return false;
    return true;
  }
  void print(std::ostream& os) const {
    using precision_detail::sci;
    os << "precision certificate: " << rewrite << " (storage " << name(storage) << ", budget "
       << sci(budget) << "): " << (ok() ? "OK" : "FAILED") << "\n";
    for (const auto& e : entries) {
      os << "  [" << (e.ok ? "ok" : "FAIL") << "] " << e.what << ": cond " << sci(e.cond, 1)
         << ", max|.| " << sci(e.max_abs, 2) << " (type max " << sci(e.type_max, 2)
         << "), measured rel.error " << sci(e.measured_rel_error);
      if (!e.note.empty()) os << " -- " << e.note;
      os << "\n";
    }
    for (const auto& n : not_measured) os << "  not measured: " << n << "\n";
  }
  std::string to_string() const {
    std::ostringstream os;
    print(os);
    return os.str();
  }
};

namespace precision_detail {

inline CertificateEntry entry(std::string what, double cond, double max_abs, double type_max,
                              double err, const CertifyOptions& opt, std::string note = {}) {
  CertificateEntry e;
  e.what = std::move(what);
  e.cond = cond;
  e.max_abs = max_abs;
  e.type_max = type_max;
  e.measured_rel_error = err;
  e.note = std::move(note);
  e.ok = std::isfinite(max_abs) && max_abs <= type_max && !(err > opt.budget) &&
         !(opt.max_condition > 0 && cond > opt.max_condition);
  return e;
}

inline PrecisionCertificate start(const char* rewrite, const CertifyOptions& opt) {
  detail::require(opt.budget > 0 && std::isfinite(opt.budget), ErrorKind::shape, rewrite,
                  "options.budget expected a finite value > 0, got ", opt.budget);
  detail::require(opt.max_condition >= 0, ErrorKind::shape, rewrite,
                  "options.max_condition expected >= 0, got ", opt.max_condition);
  PrecisionCertificate c;
  c.rewrite = rewrite;
  c.storage = opt.storage;
  c.budget = opt.budget;
  return c;
}

}  // namespace precision_detail

/// Slim attention, one form: cond of the inverted basis, max |W_KV| (or |W_VK|) and every stored
/// weight against the storage type, the largest cached value, and the attention output's error
/// measured through the kernels (as plan_layer) on `activations` (n x d; the overload without
/// uses synthetic ones). Throws what slim_attention throws for an inadmissible form.
template <class S>
PrecisionCertificate certify_slim(const AttentionWeights<S>& w, const AttentionConfig& cfg,
                                  CacheForm form, const RowMatrix<double>& activations,
                                  const CertifyOptions& opt = {}) {
  const char* fn = "rewrite::certify_slim";
  PrecisionCertificate c = precision_detail::start(fn, opt);
  c.rewrite = detail::concat("slim attention, ", name(form));
  PlanOptions po;
  po.cache = opt.storage;
  po.budget = opt.budget;
  po.weights_in_cache_type = opt.weights_in_storage;
  po.decode_steps = std::min<Index>(4, activations.rows() - 1);
  precision_detail::check_layer(fn, w, cfg);
  detail::check_dim(fn, "activations.cols() (= d)", cfg.shape.d, activations.cols());
  precision_detail::check_options(fn, po, activations.rows());
  {  // inadmissible forms throw the rewrite's own error
    SlimOptions so;
    so.form = form;
    (void)slim_attention<float>(w, cfg, so);
  }
  const PlanForm pf = form == CacheForm::keys     ? PlanForm::keys
                      : form == CacheForm::values ? PlanForm::values
                                                  : PlanForm::inputs;
  const AttentionWeights<double> wd = precision_detail::to_double(w);
  const RowMatrix<float> X = activations.cast<float>();
  const RowMatrix<double> ref = precision_detail::attention_double(X.cast<double>(), wd, cfg);
  const double top = storage_max(opt.storage);
  FormMeasure m = precision_detail::with_storage(opt.storage, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return precision_detail::measure_form<T>(pf, wd, cfg, X, ref, po);
  });
  FormMeasure v = precision_detail::with_storage(opt.storage, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return precision_detail::measure_form<T>(PlanForm::vanilla, wd, cfg, X, ref, po);
  });
  const char* what = form == CacheForm::keys ? "W_KV = W_K^{-1} W_V (inverse of the keys' basis)"
                     : form == CacheForm::values
                         ? "W_VK = W_V^{-1} W_K (inverse of the values' basis)"
                         : "W_K, W_V read through the cached X (no inverse)";
  const double nan = std::numeric_limits<double>::quiet_NaN();
  c.entries.push_back(precision_detail::entry(
      what, form == CacheForm::inputs ? nan : m.cond_estimate, m.max_abs_transform, top, nan, opt,
      opt.weights_in_storage ? "stored at the storage type"
                             : "stored in float; range vs the storage type"));
  c.entries.push_back(precision_detail::entry("every stored weight of the form", nan,
                                              m.max_abs_weights, top, nan, opt));
  c.entries.push_back(precision_detail::entry(detail::concat("cached rows (", name(pf), ")"), nan,
                                              m.max_abs_cached, top, nan, opt));
  c.entries.push_back(
      precision_detail::entry(detail::concat("attention output, ", name(pf), " cache"), nan,
                              m.max_abs_cached, top, m.measured_rel_error, opt, m.notes));
  c.entries.push_back(precision_detail::entry("attention output, vanilla K+V cache (baseline)", nan,
                                              v.max_abs_cached, top, v.measured_rel_error, opt,
                                              v.notes));
  return c;
}

template <class S>
PrecisionCertificate certify_slim(const AttentionWeights<S>& w, const AttentionConfig& cfg,
                                  CacheForm form, const CertifyOptions& opt = {}) {
  precision_detail::check_layer("rewrite::certify_slim", w, cfg);
  return certify_slim(w, cfg, form, synthetic_activations(cfg.shape.d, opt.synthetic), opt);
}

// FlashNorm fold ------------------------------------------------------------------------------

namespace precision_detail {

/// norm(a) in double: RMSNorm a / sqrt(mean(a^2) + eps) * g, LayerNorm centred with beta.
template <class S>
RowMatrix<double> norm_double(const NormSpec& spec, const NormWeights<S>& norm,
                              const RowMatrix<double>& A) {
  const RowVector<double> g = applied_gain(spec, norm.gain);
  const double n = static_cast<double>(A.cols());
  RowMatrix<double> Y(A.rows(), A.cols());
  for (Index r = 0; r < A.rows(); ++r) {
    RowVector<double> a = A.row(r);
    if (spec.kind == NormKind::layer) a.array() -= a.mean();
    const double rms = std::sqrt(a.squaredNorm() / n + spec.eps);
    Y.row(r) = (a / rms).cwiseProduct(g);
    if (norm.beta.size()) Y.row(r) += norm.beta.template cast<double>();
  }
  return Y;
}

}  // namespace precision_detail

/// FlashNorm's gain fold W* = diag(g) W (b* = b + beta W): no inverse (cond not applicable);
/// max |W*| against the storage type; the error of the folded runtime (a W*_T) / RMS(a) + b*
/// (W* stored at the storage type, float accumulation; LayerNorm inputs centred first, as the
/// fold requires) against norm(a) W + b in double, next to the vanilla order norm(a) then W_T
/// at the same precision. `norm`: gain (in), beta (LayerNorm, may be empty); `w`: in x out;
/// `bias`: out or empty; `activations`: n x in (the norm's input).
template <class S>
PrecisionCertificate certify_flashnorm_fold(const NormSpec& spec, const NormWeights<S>& norm,
                                            const RowMatrix<S>& w, const RowVector<S>& bias,
                                            const RowMatrix<double>& activations,
                                            const CertifyOptions& opt = {}) {
  const char* fn = "rewrite::certify_flashnorm_fold";
  PrecisionCertificate c = precision_detail::start(fn, opt);
  c.rewrite = "FlashNorm gain fold W* = diag(g) W";
  detail::check_dim(fn, "activations.cols() (= w.rows())", w.rows(), activations.cols());
  detail::require(activations.rows() > 0, ErrorKind::shape, fn,
                  "activations.rows() expected > 0, got 0");
  const NormWeights<double> nd = cast_weights<double>(norm);
  const RowMatrix<double> Wd = w.template cast<double>();
  const RowVector<double> bd = bias.template cast<double>();
  const FoldedLinear<double> f = fold_norm(spec, nd, Wd, bd);  // checks the shapes
  const double top = storage_max(opt.storage), nan = std::numeric_limits<double>::quiet_NaN();
  RowMatrix<double> ref = precision_detail::norm_double(spec, norm, activations) * Wd;
  if (bd.size()) ref.rowwise() += bd;
  const double max_w = precision_detail::max_abs(f.w), max_b = precision_detail::max_abs(f.b);
  c.entries.push_back(
      precision_detail::entry("W* = diag(g) W (no inverse)", nan, max_w, top, nan, opt));
  if (f.b.size())
    c.entries.push_back(precision_detail::entry("b* = b + beta W", nan, max_b, top, nan, opt));
  if (!(max_w <= top && max_b <= top)) {
    c.entries.back().note = "not representable: the folded layer cannot run at this type";
    return c;
  }
  // LayerNorm: the fold needs zero-mean inputs; the runtime centres them (in float) first.
  RowMatrix<float> A = activations.cast<float>();
  if (spec.kind == NormKind::layer) A.colwise() -= A.rowwise().mean();
  precision_detail::with_storage(opt.storage, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Index out = f.w.cols();
    // The runtime: kernel::flashnorm_linear on W* and b* stored at T.
    const RowMatrix<T> Wt = f.w.template cast<T>();
    const RowVector<float> bt = f.b.template cast<T>().template cast<float>();
    RowMatrix<float> Y(A.rows(), out);
    kernel::flashnorm_linear<T>(A, Wt, bt, {f.eps, f.divide_by_n}, Y);
    c.entries.push_back(precision_detail::entry(
        "folded output (a W*) / RMS(a) + b*", nan, precision_detail::max_abs(Y),
        max_finite<float>(), precision_detail::rel_error(Y, ref), opt,
        detail::concat("kernel::flashnorm_linear, W* at ", type_name<T>(),
                       ", float accumulation")));
    // Vanilla at the same precision: kernel::rms_normalize in float (on the centred input, then
    // + beta, for LayerNorm), then kernel::linear_unscaled with W (and b) at T.
    RowMatrix<float> N(A.rows(), A.cols());
    kernel::rms_normalize<float>(A, applied_gain(spec, norm.gain).template cast<float>(), spec.eps,
                                 N);
    if (norm.beta.size()) N.rowwise() += norm.beta.template cast<float>();
    const RowMatrix<T> Wvt = Wd.template cast<T>();
    const RowVector<float> bvt = bd.template cast<T>().template cast<float>();  // empty: none
    RowMatrix<float> Yv(A.rows(), out);
    kernel::linear_unscaled<T>(N, Wvt, bvt, Yv);
    c.entries.push_back(precision_detail::entry(
        "vanilla norm(a) W + b (baseline)", nan, precision_detail::max_abs(Yv), max_finite<float>(),
        precision_detail::rel_error(Yv, ref), opt,
        detail::concat("kernel::rms_normalize + kernel::linear_unscaled, W at ", type_name<T>())));
  });
  return c;
}

// Skipless merges ------------------------------------------------------------------------------

/// Skipless rewrite of a model (see rewrite/skipless.hpp): per block, the removed matrix A's cond
/// and the solve residual; the largest |value| of every rewritten block matrix (and the new
/// embedding) against the storage type; and, measured, the identity each consumer must satisfy
/// after rounding its new matrix M = A^{-1} B to the storage type: ||A M_T - B||_F / ||B||_F
/// (e.g. W_Q K* = W_K for Q removal); and end to end, the logits of every token of
/// options.tokens (or synthetic ids) through kernel::SkiplessModel (float accumulation) with the
/// merged weights stored at the storage type, against the ORIGINAL model run in double by the
/// same runtime (||L - L_ref||_F / ||L_ref||_F; inf when a weight overflows the type), next to
/// the original model at the storage type (the baseline). The double run holds a double copy of
/// the weights. Errors: what skipless() and kernel::SkiplessModel throw for bad weights; ShapeError
/// for token ids outside [0, vocab).
template <class S>
PrecisionCertificate certify_skipless(const ModelConfig& cfg, const ModelWeights<S>& w,
                                      const SkiplessOptions& sopt = {},
                                      const CertifyOptions& opt = {}) {
  const char* fn = "rewrite::certify_skipless";
  PrecisionCertificate c = precision_detail::start(fn, opt);
  SkiplessResult<double> r = skipless<double>(cfg, w, sopt);
  c.rewrite = detail::concat("skipless, removed ", to_string(r.report.removal),
                             r.report.output_projection_merged ? " and P" : "");
  const double top = storage_max(opt.storage), nan = std::numeric_limits<double>::quiet_NaN();
  using precision_detail::max_abs;
  c.entries.push_back(precision_detail::entry("embedding E* (absorbs block 0's basis)", nan,
                                              max_abs(r.weights.embedding), top, nan, opt));
  for (std::size_t l = 0; l < r.weights.blocks.size(); ++l) {
    const auto& b = r.weights.blocks[l];
    const auto& o = w.blocks[l];
    const auto& rep = r.report.layers[l];
    const double m =
        std::max({max_abs(b.attn.wq), max_abs(b.attn.wk), max_abs(b.attn.wv), max_abs(b.attn.wo),
                  max_abs(b.ffn.w_in), max_abs(b.ffn.w_up), max_abs(b.ffn.w_out)});
    // The identity A M = B for each consumer of the removed matrix A, with M rounded to T.
    const RowMatrix<S>* A = nullptr;
    std::vector<std::pair<const RowMatrix<double>*, const RowMatrix<S>*>> consumers;
    switch (r.report.removal) {
      case SkiplessRemoval::query:
        A = &o.attn.wq;
        consumers = {{&b.attn.wk, &o.attn.wk}, {&b.attn.wv, &o.attn.wv}};
        break;
      case SkiplessRemoval::key:
        A = &o.attn.wk;
        consumers = {{&b.attn.wq, &o.attn.wq}, {&b.attn.wv, &o.attn.wv}};
        break;
      case SkiplessRemoval::value:
        A = &o.attn.wv;
        consumers = {{&b.attn.wq, &o.attn.wq}, {&b.attn.wk, &o.attn.wk}};
        break;
      default:
        break;
    }
    double err = nan;
    if (A && rep.cond > 0) {
      err = 0;
      const RowMatrix<double> Ad = A->template cast<double>();
      for (const auto& consumer : consumers) {
        // Not a structured binding: C++17 lambdas cannot capture one (clang rejects it).
        const auto* M = consumer.first;
        const auto* B = consumer.second;
        if (M->rows() != Ad.cols() || M->cols() != B->cols()) continue;
        const RowMatrix<double> Mt = precision_detail::with_storage(opt.storage, [&](auto tag) {
          using T = typename decltype(tag)::type;
          return RowMatrix<double>(M->template cast<T>().template cast<double>());
        });
        err = std::max(err, precision_detail::rel_error(Ad * Mt, B->template cast<double>()));
      }
    }
    c.entries.push_back(precision_detail::entry(
        detail::concat("block ", l, ": removed ", to_string(r.report.removal),
                       " (consumers A^{-1} B)"),
        rep.cond > 0 ? rep.cond : nan, m, top, err, opt,
        detail::concat("solve residual ", rep.residual,
                       " in double; error = max over consumers "
                       "of ||A M_T - B|| / ||B||")));
  }
  // End to end: merged at T vs the original in double, both through the runtime.
  std::vector<int> ids = opt.tokens;
  if (ids.empty()) {
    Index n = opt.synthetic.tokens;
    if (cfg.learned_positions) n = std::min(n, cfg.max_positions);
    std::mt19937_64 rng(opt.synthetic.seed);
    std::uniform_int_distribution<int> pick(0, static_cast<int>(cfg.vocab) - 1);
    for (Index i = 0; i < n; ++i) ids.push_back(pick(rng));
  }
  detail::require(!ids.empty(), ErrorKind::shape, fn,
                  "options.tokens expected at least 1 token (or synthetic.tokens > 0), got 0");
  const Index n = static_cast<Index>(ids.size());
  const RowMatrix<double> ref =
      kernel::SkiplessModel<double>(cfg, cast_weights<double>(w), n).forward(ids);
  precision_detail::with_storage(opt.storage, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const RowMatrix<float> merged =
        kernel::SkiplessModel<T>(r.config, cast_weights<T>(r.weights), n).forward(ids);
    const RowMatrix<float> original =
        kernel::SkiplessModel<T>(cfg, cast_weights<T>(w), n).forward(ids);
    const std::string note =
        detail::concat(n, opt.tokens.empty() ? " synthetic" : "", " tokens; weights at ",
                       type_name<T>(), ", float accumulation, vs the original in double");
    c.entries.push_back(precision_detail::entry(
        "end-to-end logits, merged model (kernel::SkiplessModel)", nan, max_abs(merged),
        max_finite<float>(), precision_detail::rel_error(merged, ref), opt, note));
    c.entries.push_back(precision_detail::entry(
        "end-to-end logits, original model (baseline)", nan, max_abs(original), max_finite<float>(),
        precision_detail::rel_error(original, ref), opt, note));
  });
  return c;
}

// First-layer tables ---------------------------------------------------------------------------

/// First-layer precompute: the per-vocabulary rows [x | norm(x) W_Q + b_Q | ... ] stored at the
/// storage type, built with double accumulation (TableCompute::exact) and with float
/// (TableCompute::working), against the same rows in double, on up to `max_tokens` vocabulary
/// entries spread evenly over the table. No inverse. Overflow of the storage type (the builder's
/// NumericalError) is reported as a failed entry.
template <class S>
PrecisionCertificate certify_first_layer(const RowMatrix<S>& embedding,
                                         const BlockWeights<S>& block, const BlockConfig& cfg,
                                         const CertifyOptions& opt = {}, Index max_tokens = 256) {
  const char* fn = "rewrite::certify_first_layer";
  PrecisionCertificate c = precision_detail::start(fn, opt);
  c.rewrite = "first-layer table";
  detail::require(max_tokens > 0, ErrorKind::shape, fn, "max_tokens expected > 0, got ",
                  max_tokens);
  detail::check_first_layer(fn, embedding, block, cfg);
  const Index vocab = embedding.rows(), k = std::min(vocab, max_tokens);
  RowMatrix<S> sub(k, embedding.cols());
  for (Index i = 0; i < k; ++i) sub.row(i) = embedding.row(i * vocab / k);
  std::vector<int> ids(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) ids[static_cast<std::size_t>(i)] = static_cast<int>(i);
  const Index width = FirstLayerLayout::of(cfg.attn.shape).width();
  RowMatrix<double> ref(k, width);
  compute_first_layer_rows<double>(sub, block, cfg, ids.data(), k, ref, 1);
  const double top = storage_max(opt.storage), nan = std::numeric_limits<double>::quiet_NaN();
  for (TableCompute how : {TableCompute::exact, TableCompute::working}) {
    const char* label = how == TableCompute::exact ? "table rows, double compute, stored at type"
                                                   : "table rows, float compute, stored at type";
    FirstLayerOptions fo;
    fo.compute = how;
    fo.threads = 1;
    precision_detail::with_storage(opt.storage, [&](auto tag) {
      using T = typename decltype(tag)::type;
      try {
        const FirstLayerTable<T> t = build_first_layer_table<T>(sub, block, cfg, fo);
        c.entries.push_back(precision_detail::entry(label, nan, t.report.max_abs, top,
                                                    precision_detail::rel_error(t.rows, ref), opt,
                                                    detail::concat(k, " of ", vocab, " tokens")));
      } catch (const NumericalError& e) {
        c.entries.push_back(precision_detail::entry(label, nan, precision_detail::max_abs(ref), top,
                                                    std::numeric_limits<double>::infinity(), opt,
                                                    e.what()));
      }
    });
  }
  if (k < vocab)
    c.not_measured.push_back(detail::concat("tokens other than the ", k, " sampled of ", vocab,
                                            " (raise max_tokens to check them all)"));
  return c;
}

// Encoder-decoder ------------------------------------------------------------------------------

/// Encoder-decoder cross-attention (rewrite/encdec.hpp) of decoder rows X (n x d) over encoder
/// output E (p x d): the keys form's cond(W_K) and max |W_KV| (when e = d), and the measured
/// error of three caches at the storage type against double cross-attention: vanilla cross K,V;
/// K-only (V = K W_KV); the shared encoder cache (rows E themselves, no inverse). Measured on the
/// library's runtime path: the caches (KVCache, CrossKCache, ECache at the storage type) read by
/// kernel/encdec.hpp's kv_heads / keys_heads / inputs_heads, float weights and arithmetic.
template <class S>
PrecisionCertificate certify_encdec(const AttentionWeights<S>& w, const AttentionConfig& cfg,
                                    const RowMatrix<double>& encoder_output,
                                    const RowMatrix<double>& decoder_inputs,
                                    const CertifyOptions& opt = {}) {
  const char* fn = "rewrite::certify_encdec";
  PrecisionCertificate c = precision_detail::start(fn, opt);
  c.rewrite = "encoder-decoder cross-attention caches";
  const AttentionShape& s = cfg.shape;
  precision_detail::check_layer(fn, w, cfg);
  detail::require(!cfg.rope.enabled(), ErrorKind::unsupported, fn,
                  "cfg.rope expected disabled (cross-attention), got rotary_dim ",
                  cfg.rope.rotary_dim);
  detail::check_dim(fn, "encoder_output.cols() (= d)", s.d, encoder_output.cols());
  detail::check_dim(fn, "decoder_inputs.cols() (= d)", s.d, decoder_inputs.cols());
  detail::require(encoder_output.rows() > 0 && decoder_inputs.rows() > 0, ErrorKind::shape, fn,
                  "encoder_output.rows() and decoder_inputs.rows() expected > 0, "
                  "got ",
                  encoder_output.rows(), " and ", decoder_inputs.rows());
  const double top = storage_max(opt.storage), nan = std::numeric_limits<double>::quiet_NaN();
  const Index dk = s.head_dim, e = s.kv_width();
  const RowMatrix<float> Ef = encoder_output.cast<float>(), Xf = decoder_inputs.cast<float>();
  const AttentionWeights<double> wd = precision_detail::to_double(w);
  // Double reference on the float-rounded inputs.
  RowMatrix<double> ref;
  {
    const RowMatrix<double> E = Ef.cast<double>(), X = Xf.cast<double>();
    RowMatrix<double> Q = X * wd.wq, K = E * wd.wk, V = E * wd.wv;
    if (wd.bq.size()) Q.rowwise() += wd.bq;
    if (wd.bk.size()) K.rowwise() += wd.bk;
    if (wd.bv.size()) V.rowwise() += wd.bv;
    RowMatrix<double> H(X.rows(), s.q_width());
    for (Index i = 0; i < s.heads; ++i) {
      const Index g = s.kv_head_of(i);
      RowMatrix<double> Sc =
          cfg.effective_scale() * Q.middleCols(i * dk, dk) * K.middleCols(g * dk, dk).transpose();
      for (Index r = 0; r < Sc.rows(); ++r) {
        Sc.row(r).array() = (Sc.row(r).array() - Sc.row(r).maxCoeff()).exp();
        Sc.row(r) /= Sc.row(r).sum();
      }
      H.middleCols(i * dk, dk) = Sc * V.middleCols(g * dk, dk);
    }
    ref = H * wd.wo;
    if (wd.bo.size()) ref.rowwise() += wd.bo;
  }
  auto finish = [&](const RowMatrix<float>& H, const RowMatrix<float>& wo,
                    const RowVector<float>& bo) {
    RowMatrix<float> Y = H * wo;
    if (bo.size()) Y.rowwise() += bo;
    return precision_detail::rel_error(Y, ref);
  };
  const Index n = Xf.rows(), p = Ef.rows();
  precision_detail::with_storage(opt.storage, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Each cache is range-checked before it is built (a value T cannot hold: error infinity),
    // then every decoder row runs through the runtime's kernel for that form.
    RowMatrix<float> H(n, s.q_width());
    // Vanilla cross K, V at T (kernel::kv_heads, the streaming decode_vanilla).
    {
      const AttentionWeights<float> wf = {
          wd.wq.cast<float>(), wd.wk.cast<float>(), wd.wv.cast<float>(), wd.wo.cast<float>(),
          wd.bq.cast<float>(), wd.bk.cast<float>(), wd.bv.cast<float>(), wd.bo.cast<float>()};
      RowMatrix<float> Q = Xf * wf.wq, K = Ef * wf.wk, V = Ef * wf.wv;
      if (wf.bq.size()) Q.rowwise() += wf.bq;
      if (wf.bk.size()) K.rowwise() += wf.bk;
      if (wf.bv.size()) V.rowwise() += wf.bv;
      const double m = std::max(precision_detail::max_abs(K), precision_detail::max_abs(V));
      double err = std::numeric_limits<double>::infinity();
      if (m <= top) {
        KVCache<T> cache(s, p);
        cache.append(K, V);
        for (Index r = 0; r < n; ++r)
          kernel::kv_heads(RowVector<float>(Q.row(r)), cache, cfg.effective_scale(), nullptr,
                           H.row(r));
        err = finish(H, wf.wo, wf.bo);
      }
      c.entries.push_back(
          precision_detail::entry("vanilla cross K,V cache (baseline)", nan, m, top, err, opt));
    }
    // Shared encoder cache: rows E at T (kernel::inputs_heads over an ECache).
    {
      const InputsAttention<float> ia = inputs_attention<float>(wd, cfg);
      RowMatrix<float> Q = Xf * ia.wq;
      if (ia.bq.size()) Q.rowwise() += ia.bq;
      const double m = precision_detail::max_abs(Ef);
      double err = std::numeric_limits<double>::infinity();
      if (m <= top) {
        ECache<T> cache(s.d, p);
        cache.assign(Ef);
        for (Index r = 0; r < n; ++r)
          kernel::inputs_heads(RowVector<float>(Q.row(r)), ia, cache.rows(), nullptr, H.row(r));
        err = finish(H, ia.wo, ia.bo);
      }
      c.entries.push_back(precision_detail::entry("shared encoder cache (rows E, no inverse)", nan,
                                                  m, top, err, opt));
    }
    // K-only cross cache: K = E W_K at T, V = K W_KV (kernel::keys_heads over a CrossKCache).
    if (e == s.d) {
      const KeysAttention<float> ka = keys_attention<float>(wd, cfg);
      RowMatrix<float> Q = Xf * ka.wq;
      if (ka.bq.size()) Q.rowwise() += ka.bq;
      const RowMatrix<float> K = Ef * ka.wk;
      const double m = precision_detail::max_abs(K);
      double err = std::numeric_limits<double>::infinity();
      if (m <= top) {
        CrossKCache<T> cache(s, p);
        cache.assign(K);
        for (Index r = 0; r < n; ++r)
          kernel::keys_heads(RowVector<float>(Q.row(r)), ka, cache.keys(), nullptr, H.row(r));
        err = finish(H, ka.wo, ka.bo);
      }
      c.entries.push_back(precision_detail::entry("W_KV = W_K^{-1} W_V (K-only cross cache)",
                                                  ka.report.cond_estimate, ka.max_abs_wkv, top, nan,
                                                  opt));
      c.entries.push_back(precision_detail::entry("K-only cross cache, V = K W_KV",
                                                  ka.report.cond_estimate, m, top, err, opt));
    } else {
      c.not_measured.push_back(detail::concat(
          "the K-only cross cache: it needs e = d (square W_K), got e = ", e, ", d = ", s.d));
    }
  });
  c.not_measured.push_back(
      "the decoder's self-attention caches: certify them with certify_slim / plan_layer");
  return c;
}

}  // namespace rewrite
}  // namespace ttx
