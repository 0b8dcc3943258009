// ttx_plan: which cache form can you trust at which storage type? Measures, per layer, the
// attention output's relative error of every admissible cache form (vanilla K+V, slim keys,
// values, inputs) through ttx's own kernels against double, and picks the smallest cache within
// the error budget (ttx::rewrite::plan_model, include/ttx/rewrite/precision.hpp).
//
// Three synthetic models (random weights; synthetic heavy-tailed activations with outlier
// channels stand in for real layer inputs):
//   1. the demo's Llama-like model (MHA, RoPE: only vanilla or keys are admissible);
//   2. a Whisper-tiny-shaped decoder self-attention (no RoPE, biases on q/v/o) whose cond(W_K)
//      grows with depth up to 1e8, as in real Whisper checkpoints;
//   3. a deliberately ill-conditioned model (cond(W_K) = cond(W_V) = 1e9).
// Each for f32, f16 and bf16 caches.
//   ttx_plan [--budget 1e-2]
#include <Eigen/QR>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "ttx/rewrite/precision.hpp"

using namespace ttx;

namespace {

using Rng = std::mt19937_64;

RowMatrix<double> gaussian(Index rows, Index cols, double stddev, Rng& rng) {
  std::normal_distribution<double> n(0.0, stddev);
  RowMatrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

/// n x n with singular values geometric from `top` down to top / cond (random U, V).
RowMatrix<double> conditioned(Index n, double top, double cond, Rng& rng) {
  auto orth = [&] {
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(gaussian(n, n, 1.0, rng));
    return Eigen::MatrixXd(qr.householderQ());
  };
  Eigen::VectorXd s(n);
  for (Index i = 0; i < n; ++i)
    s(i) = top * std::pow(cond, -static_cast<double>(i) / static_cast<double>(n - 1));
  return RowMatrix<double>(orth() * s.asDiagonal() * orth().transpose());
}

AttentionWeights<double> layer(const AttentionShape& s, Rng& rng, double cond_k, double cond_v,
                               bool biases) {
  const double sd = 1.0 / std::sqrt(static_cast<double>(s.d));
  AttentionWeights<double> w;
  w.wq = gaussian(s.d, s.q_width(), sd, rng);
  w.wk = cond_k > 0 ? conditioned(s.d, 2.0, cond_k, rng) : gaussian(s.d, s.kv_width(), sd, rng);
  w.wv = cond_v > 0 ? conditioned(s.d, 2.0, cond_v, rng) : gaussian(s.d, s.kv_width(), sd, rng);
  w.wo = gaussian(s.q_width(), s.d, sd, rng);
  if (biases) {
    w.bq = gaussian(1, s.q_width(), 0.02, rng);
    w.bv = gaussian(1, s.kv_width(), 0.02, rng);
    w.bo = gaussian(1, s.d, 0.02, rng);
  }
  return w;
}

void show(const char* title, const std::vector<AttentionWeights<double>>& layers,
          const AttentionConfig& cfg, double budget) {
  const AttentionShape& s = cfg.shape;
  std::printf("\n=== %s: %zu layers, d=%ld heads=%ld kv_heads=%ld head_dim=%ld, RoPE %s ===\n",
              title, layers.size(), long(s.d), long(s.heads), long(s.kv_heads), long(s.head_dim),
              cfg.rope.enabled() ? "yes" : "no");
  for (rewrite::StorageType t :
       {rewrite::StorageType::f32, rewrite::StorageType::f16, rewrite::StorageType::bf16}) {
    rewrite::PlanOptions o;
    o.cache = t;
    o.budget = budget;
    rewrite::plan_model(layers, cfg, o).print(std::cout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  double budget = 1e-2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--budget" && i + 1 < argc) {
      budget = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: ttx_plan [--budget 1e-2]\n");
      return 2;
    }
  }
  Eigen::setNbThreads(1);  // small matrices: threads only add noise on a shared machine
  std::printf(
      "ttx_plan: per layer, the measured relative error of the attention output for every cache\n"
      "form (n/a = not admissible, * = over budget, inf = the cache type overflowed) and the\n"
      "smallest cache within budget. Activations: synthetic heavy-tailed rows with outlier\n"
      "channels (pass real ones to rewrite::plan_model for your model).\n");
  try {
    Rng rng(2024);
    {  // The demo's model (ttx_demo defaults): Llama-like MHA with RoPE.
      AttentionConfig cfg{AttentionShape{512, 8, 8, 64}, 0.0,
                          RopeSpec::full(64, RopeLayout::half_split)};
      std::vector<AttentionWeights<double>> layers;
      for (int l = 0; l < 4; ++l) layers.push_back(layer(cfg.shape, rng, 0, 0, false));
      show("Llama-like (the demo's model)", layers, cfg, budget);
    }
    {  // Whisper-tiny decoder self-attention shape, cond(W_K) 1e2 .. 1e8 with depth.
      AttentionConfig cfg{AttentionShape{384, 6, 6, 64}, 0.0, RopeSpec::none()};
      std::vector<AttentionWeights<double>> layers;
      for (int l = 0; l < 4; ++l)
        layers.push_back(
            layer(cfg.shape, rng, std::pow(10.0, 2 + 2 * l), std::pow(10.0, 1 + l), true));
      show("Whisper-like (no RoPE, cond(W_K) = 1e2, 1e4, 1e6, 1e8)", layers, cfg, budget);
    }
    {  // Deliberately ill-conditioned: both W_K and W_V.
      AttentionConfig cfg{AttentionShape{128, 4, 4, 32}, 0.0, RopeSpec::none()};
      std::vector<AttentionWeights<double>> layers;
      for (int l = 0; l < 2; ++l) layers.push_back(layer(cfg.shape, rng, 1e9, 1e9, true));
      show("ill-conditioned (cond(W_K) = cond(W_V) = 1e9)", layers, cfg, budget);
    }
  } catch (const ttx::Error& e) {
    std::fprintf(stderr, "ttx_plan: %s\n", e.what());
    return 1;
  }
  return 0;
}
