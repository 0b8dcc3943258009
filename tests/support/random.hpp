// Deterministic random weights for tests, scaled like a trained model's: projections with
// entries ~ N(0, 1/in), norm gains ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.02^2), embeddings ~ N(0, 1).
#pragma once

#include <Eigen/QR>
#include <cmath>
#include <random>
#include <vector>

#include "ttx/reference/model.hpp"

namespace ttx::test {

using Rng = std::mt19937_64;

template <class T>
RowMatrix<T> random_matrix(Index rows, Index cols, double stddev, Rng& rng) {
  std::normal_distribution<double> n(0.0, stddev);
  RowMatrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(n(rng));
  return m;
}
template <class T>
RowVector<T> random_vector(Index n, double mean, double stddev, Rng& rng) {
  std::normal_distribution<double> g(mean, stddev);
  RowVector<T> v(n);
  for (Index i = 0; i < n; ++i) v(i) = static_cast<T>(g(rng));
  return v;
}
/// A projection (in x out) with entries N(0, 1/in).
template <class T>
RowMatrix<T> random_projection(Index in, Index out, Rng& rng) {
  return random_matrix<T>(in, out, 1.0 / std::sqrt(static_cast<double>(in)), rng);
}

/// An n x n matrix with the given singular values (largest first or any order): U diag(s) V^T with
/// Haar-random orthogonal U, V. cond = max(s) / min(s).
inline RowMatrix<double> with_singular_values(const std::vector<double>& s, Rng& rng) {
  const Index n = static_cast<Index>(s.size());
  auto orth = [&] {
    Eigen::MatrixXd g = random_matrix<double>(n, n, 1.0, rng);
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
    return Eigen::MatrixXd(qr.householderQ());
  };
  const Eigen::MatrixXd U = orth(), V = orth();
  Eigen::VectorXd sv(n);
  for (Index i = 0; i < n; ++i) sv(i) = s[static_cast<size_t>(i)];
  return U * sv.asDiagonal() * V.transpose();
}
/// Singular values spread geometrically from 1 down to 1/cond.
inline std::vector<double> geometric_singular_values(Index n, double cond) {
  std::vector<double> s(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i)
    s[static_cast<size_t>(i)] = std::pow(cond, -static_cast<double>(i) / std::max<Index>(1, n - 1));
  return s;
}

struct BiasOptions {
  bool q = false, k = false, v = false, o = false;
  static BiasOptions all() { return {true, true, true, true}; }
  static BiasOptions whisper() { return {true, false, true, true}; }
};

template <class T>
reference::AttentionWeights<T> random_attention(const AttentionShape& s, Rng& rng,
                                                BiasOptions b = {}) {
  reference::AttentionWeights<T> w;
  w.wq = random_projection<T>(s.d, s.q_width(), rng);
  w.wk = random_projection<T>(s.d, s.kv_width(), rng);
  w.wv = random_projection<T>(s.d, s.kv_width(), rng);
  w.wo = random_projection<T>(s.q_width(), s.d, rng);
  if (b.q) w.bq = random_vector<T>(s.q_width(), 0, 0.02, rng);
  if (b.k) w.bk = random_vector<T>(s.kv_width(), 0, 0.02, rng);
  if (b.v) w.bv = random_vector<T>(s.kv_width(), 0, 0.02, rng);
  if (b.o) w.bo = random_vector<T>(s.d, 0, 0.02, rng);
  return w;
}

template <class T>
reference::NormWeights<T> random_norm(Index d, const NormSpec& spec, Rng& rng) {
  reference::NormWeights<T> w;
  // The one_plus convention stores g with the applied gain 1 + g.
  w.gain = random_vector<T>(d, spec.gain == GainConvention::one_plus ? 0.0 : 1.0, 0.1, rng);
  if (spec.kind == NormKind::layer) w.beta = random_vector<T>(d, 0, 0.02, rng);
  return w;
}

template <class T>
reference::FfnWeights<T> random_ffn(Index d, Index f, const FfnSpec& spec, Rng& rng,
                                    bool biases = false) {
  reference::FfnWeights<T> w;
  w.w_in = random_projection<T>(d, f, rng);
  if (spec.kind == FfnKind::glu) w.w_up = random_projection<T>(d, f, rng);
  w.w_out = random_projection<T>(f, d, rng);
  if (biases) {
    w.b_in = random_vector<T>(f, 0, 0.02, rng);
    if (spec.kind == FfnKind::glu) w.b_up = random_vector<T>(f, 0, 0.02, rng);
    w.b_out = random_vector<T>(d, 0, 0.02, rng);
  }
  return w;
}

/// A whole random model for `cfg` (ffn width f).
template <class T>
reference::ModelWeights<T> random_model(const reference::ModelConfig& cfg, Index f, Rng& rng,
                                        BiasOptions attn_bias = {}, bool ffn_bias = false) {
  const AttentionShape& s = cfg.block.attn.shape;
  reference::ModelWeights<T> w;
  w.embedding = random_matrix<T>(cfg.vocab, s.d, 1.0, rng);
  if (cfg.learned_positions) w.positions = random_matrix<T>(cfg.max_positions, s.d, 0.1, rng);
  for (Index l = 0; l < cfg.layers; ++l) {
    reference::BlockWeights<T> b;
    b.norm1 = random_norm<T>(s.d, cfg.block.norm, rng);
    b.norm2 = random_norm<T>(s.d, cfg.block.norm, rng);
    b.attn = random_attention<T>(s, rng, attn_bias);
    b.ffn = random_ffn<T>(s.d, f, cfg.block.ffn, rng, ffn_bias);
    w.blocks.push_back(std::move(b));
  }
  w.final_norm = random_norm<T>(s.d, cfg.final_norm_spec, rng);
  w.lm_head = random_projection<T>(s.d, cfg.vocab, rng);
  return w;
}

/// Converts weights between scalar types (e.g. build in double, run the oracle in float): the
/// library's ttx::cast_weights, for every weight struct and plain matrix/vector.
template <class To, class W>
auto cast(const W& w) {
  return cast_weights<To>(w);
}

}  // namespace ttx::test
