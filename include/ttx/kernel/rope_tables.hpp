// RoPE with per-token scalars and per-dimension gains folded into the cos/sin tables
// (SPEC.md §2, "RoPE fusion"). For pair j with dims (p, q) (RopeSpec::pair: interleaved
// (2j, 2j+1) or half-split (j, j + r/2)) at position m, with token scalar s and gains g:
//   [out_p]     [cos -sin] [g_p  0 ] [x_p]   [s·g_p·cos  -s·g_q·sin] [x_p]
//   [out_q] = s [sin  cos] [ 0  g_q] [x_q] = [s·g_p·sin   s·g_q·cos] [x_q]
// — a 2x2 matrix per pair and position, shared by every head: still a table, four entries per
// pair instead of two. It is a scaled rotation (two entries) only when g_p = g_q. Dims r..d_k-1
// (partial rotary) are not rotated and take s·g. Typical s: 1/RMS(a) of the token that produced
// the row (deferred FlashNorm), times 1/sqrt(d_k) for queries (the score scale).
#pragma once

#include <cmath>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/types.hpp"

namespace ttx::kernel {

/// One position's coefficients (all heads share them): out_p = m00 x_p + m01 x_q,
/// out_q = m10 x_p + m11 x_q for each pair, out_i = pass[i - r] x_i for the non-rotated dims.
template <class S>
struct RopeTable {
  RopeSpec spec;
  Index head_dim = 0;
  std::vector<S> m00, m01, m10, m11;  ///< r/2 entries each
  std::vector<S> pass;                ///< head_dim - r entries
};

/// Fills `table` for position `pos` with token scalar `scalar` (formed in double, stored as S).
/// gain_p / gain_q: per-pair gains of the pair's first / second dim (r/2 values each, or both
/// empty = 1); pass_gain: gains of dims r..head_dim-1 (or empty = 1). These are the fields of
/// rewrite::QkGainRope. `freqs` = spec.frequencies() (computed once by the caller).
template <class S>
void build_rope_table(const RopeSpec& spec, Index head_dim, const std::vector<double>& freqs,
                      double pos, double scalar, const std::vector<double>& gain_p,
                      const std::vector<double>& gain_q, const std::vector<double>& pass_gain,
                      RopeTable<S>& table) {
  const char* fn = "kernel::build_rope_table";
  spec.validate(fn, head_dim);
  const Index pairs = spec.pairs(), rest = head_dim - spec.rotary_dim;
  detail::check_dim(fn, "freqs.size()", pairs, static_cast<Index>(freqs.size()));
  detail::require(gain_p.size() == gain_q.size(), ErrorKind::shape, fn,
                  "gain_q.size() expected gain_p.size()=", gain_p.size(), ", got ", gain_q.size());
  if (!gain_p.empty())
    detail::check_dim(fn, "gain_p.size()", pairs, static_cast<Index>(gain_p.size()));
  if (!pass_gain.empty())
    detail::check_dim(fn, "pass_gain.size() (= head_dim - rotary_dim)", rest,
                      static_cast<Index>(pass_gain.size()));
  table.spec = spec;
  table.head_dim = head_dim;
  const auto P = static_cast<size_t>(pairs);
  table.m00.resize(P);
  table.m01.resize(P);
  table.m10.resize(P);
  table.m11.resize(P);
  for (size_t j = 0; j < P; ++j) {
    const double angle = pos * freqs[j];
    const double c = std::cos(angle), s = std::sin(angle);
    const double gp = gain_p.empty() ? 1.0 : gain_p[j], gq = gain_q.empty() ? 1.0 : gain_q[j];
    table.m00[j] = static_cast<S>(scalar * gp * c);
    table.m01[j] = static_cast<S>(-scalar * gq * s);
    table.m10[j] = static_cast<S>(scalar * gp * s);
    table.m11[j] = static_cast<S>(scalar * gq * c);
  }
  table.pass.resize(static_cast<size_t>(rest));
  for (Index i = 0; i < rest; ++i)
    table.pass[static_cast<size_t>(i)] =
        static_cast<S>(scalar * (pass_gain.empty() ? 1.0 : pass_gain[static_cast<size_t>(i)]));
}

/// Applies one position's table to a row of `heads` heads (heads * head_dim values) in place.
template <class S>
void apply_rope_table(const RopeTable<S>& t, Index heads, Eigen::Ref<RowVector<S>> row) {
  detail::check_dim("kernel::apply_rope_table", "row.size() (= heads*head_dim)", heads * t.head_dim,
                    row.size());
  const Index pairs = t.spec.pairs(), r = t.spec.rotary_dim;
  for (Index h = 0; h < heads; ++h) {
    S* x = row.data() + h * t.head_dim;
    for (Index j = 0; j < pairs; ++j) {
      const auto [p, q] = t.spec.pair(j);
      const auto u = static_cast<size_t>(j);
      const S xp = x[p], xq = x[q];
      x[p] = t.m00[u] * xp + t.m01[u] * xq;
      x[q] = t.m10[u] * xp + t.m11[u] * xq;
    }
    for (Index i = r; i < t.head_dim; ++i) x[i] *= t.pass[static_cast<size_t>(i - r)];
  }
}

/// RoPE with deferred scalars on n rows X (n x heads*head_dim) in place: row i sits at position
/// start_pos + i and is multiplied by scalars(i) · extra_scale (e.g. 1/RMS(a_i) · 1/sqrt(d_k) for
/// queries) and by the folded gains, all through one table per row (built once, used by every
/// head).
template <class S>
void rope_scaled(Eigen::Ref<RowMatrix<S>> X, Index heads, Index head_dim, const RopeSpec& spec,
                 Index start_pos, const Eigen::Ref<const RowVector<S>>& scalars, double extra_scale,
                 const std::vector<double>& gain_p = {}, const std::vector<double>& gain_q = {},
                 const std::vector<double>& pass_gain = {}) {
  const char* fn = "kernel::rope_scaled";
  detail::check_dim(fn, "X.cols() (= heads*head_dim)", heads * head_dim, X.cols());
  detail::check_dim(fn, "scalars.size() (= X.rows())", X.rows(), scalars.size());
  spec.validate(fn, head_dim);
  const std::vector<double> freqs = spec.frequencies();
  RopeTable<S> t;
  for (Index i = 0; i < X.rows(); ++i) {
    build_rope_table(spec, head_dim, freqs, static_cast<double>(start_pos + i),
                     static_cast<double>(scalars(i)) * extra_scale, gain_p, gain_q, pass_gain, t);
    apply_rope_table<S>(t, heads, X.row(i));
  }
}

}  // namespace ttx::kernel
