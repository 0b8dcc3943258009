// Reference yardsticks: the oracle's decode attention (reference::attend, one query against a KV
// cache of n rows, written for clarity, not speed) and a plain Eigen GEMV, the bandwidth yardstick
// every memory-bound kernel is compared against. Both single-threaded.
#include <Eigen/Core>
#include <random>

#include "roofline.hpp"
#include "ttx/reference/attention.hpp"

namespace {

using ttx::Index;
using ttx::RowMatrix;

RowMatrix<float> random_rows(Index rows, Index cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  RowMatrix<float> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

// One decode step of vanilla attention over n cached rows: reads K and V (2 n e floats), does
// 2 n d_k flops per head for the scores and 2 n d_k per head for the weighted sum (4 n e with
// e = h d_k = d for MHA).
void decode_reference(benchmark::State& state, Index heads, Index head_dim, Index n) {
  const ttx::AttentionShape s{heads * head_dim, heads, heads, head_dim};
  Eigen::setNbThreads(1);
  ttx::reference::KVCache<float> cache;
  cache.k = random_rows(n, s.kv_width(), 1);
  cache.v = random_rows(n, s.kv_width(), 2);
  const RowMatrix<float> q = random_rows(1, s.q_width(), 3);
  for (auto _ : state) {
    RowMatrix<float> out = ttx::reference::attend<float>(q, cache.k, cache.v, s, s.default_scale(),
                                                         /*causal=*/false, n);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(0);
  const double e = static_cast<double>(s.kv_width()), nn = static_cast<double>(n);
  const double bytes = 2.0 * nn * e * sizeof(float) + 2.0 * s.q_width() * sizeof(float);
  ttx::bench::report(state, bytes, 4.0 * nn * e, 1);
}

// y = A x, A rows x cols row-major: reads the matrix once; 2 rows cols flops.
void gemv_eigen(benchmark::State& state, Index rows, Index cols) {
  Eigen::setNbThreads(1);
  const RowMatrix<float> A = random_rows(rows, cols, 4);
  const Eigen::VectorXf x = Eigen::VectorXf::Random(cols);
  Eigen::VectorXf y(rows);
  for (auto _ : state) {
    y.noalias() = A * x;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(0);
  const double r = static_cast<double>(rows), c = static_cast<double>(cols);
  ttx::bench::report(state, (r * c + r + c) * sizeof(float), 2.0 * r * c, 1);
}

const bool registered = [] {
  for (Index n : {Index(4096), Index(16384)}) {
    const std::string name = ttx::bench::name("decode", "reference", "f32",
                                              {{"h", 32}, {"dk", 128}, {"n", n}, {"threads", 1}});
    benchmark::RegisterBenchmark(name.c_str(), decode_reference, Index(32), Index(128), n)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.2);
  }
  // 4096 x 8192 floats = 128 MB: far beyond the last-level cache, so this is the read roofline
  // as a real kernel sees it.
  const std::string name =
      ttx::bench::name("gemv", "eigen", "f32", {{"rows", 4096}, {"cols", 8192}, {"threads", 1}});
  benchmark::RegisterBenchmark(name.c_str(), gemv_eigen, Index(4096), Index(8192))
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.2);
  return true;
}();

}  // namespace
