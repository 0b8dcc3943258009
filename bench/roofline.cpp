#include "roofline.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ttx::bench {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Vectorised read reduction over a buffer far larger than the last-level cache.
double read_bandwidth(int threads) {
  const size_t n = (size_t(512) << 20) / sizeof(float);
  static std::vector<float> buf(n, 1.0f);
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<float> partial(static_cast<size_t>(threads), 0.f);
    const double t0 = now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        const size_t lo = n * static_cast<size_t>(t) / static_cast<size_t>(threads);
        const size_t hi = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
        partial[static_cast<size_t>(t)] =
            Eigen::Map<const Eigen::ArrayXf>(buf.data() + lo, static_cast<Eigen::Index>(hi - lo))
                .sum();
      });
    for (auto& th : pool) th.join();
    const double dt = now() - t0;
    benchmark::DoNotOptimize(partial.data());
    rates.push_back(static_cast<double>(n * sizeof(float)) / dt / 1e9);
  }
  return median(rates);
}

double gemm_gflops(int threads) {
#ifdef _OPENMP
  Eigen::setNbThreads(threads);
#else
  (void)threads;
#endif
  const Eigen::Index n = 2048;
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
  std::vector<double> rates;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = now();
    c.noalias() = a * b;
    const double dt = now() - t0;
    benchmark::DoNotOptimize(c.data());
    rates.push_back(2.0 * n * n * n / dt / 1e9);
  }
#ifdef _OPENMP
  Eigen::setNbThreads(0);
#endif
  return median(rates);
}

}  // namespace

int max_threads() {
  return std::max(1u, std::thread::hardware_concurrency());
}

const Roofline& roofline() {
  static const Roofline r = [] {
    Roofline m;
    m.threads = max_threads();
    m.read_gbps_1t = read_bandwidth(1);
    m.read_gbps = read_bandwidth(m.threads);
    m.peak_gflops_1t = gemm_gflops(1);
    m.peak_gflops = gemm_gflops(m.threads);
    std::fprintf(stderr,
                 "ttx roofline: read %.1f GB/s (1 thread), %.1f GB/s (%d threads); fp32 GEMM "
                 "%.1f GFLOP/s (1 thread), %.1f GFLOP/s (%d threads)\n",
                 m.read_gbps_1t, m.read_gbps, m.threads, m.peak_gflops_1t, m.peak_gflops,
                 m.threads);
    return m;
  }();
  return r;
}

void report(benchmark::State& state, double bytes, double flops, int threads) {
  const Roofline& r = roofline();
  const bool all = threads > 1;
  const double bw = (all ? r.read_gbps : r.read_gbps_1t) * 1e9;
  const double peak = (all ? r.peak_gflops : r.peak_gflops_1t) * 1e9;
  const double bound_seconds = std::max(bytes / bw, flops / peak);
  using C = benchmark::Counter;
  state.counters["bytes"] = C(bytes);
  state.counters["flops"] = C(flops);
  state.counters["GB/s"] = C(bytes / 1e9, C::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = C(flops / 1e9, C::kIsIterationInvariantRate);
  // bound time * iterations / elapsed = fraction of the roofline reached
  state.counters["roofline"] = C(bound_seconds, C::kIsIterationInvariantRate);
}

std::string name(const std::string& what, const std::string& variant, const std::string& type,
                 std::initializer_list<std::pair<const char*, long long>> keys) {
  std::string s = what + "/" + variant + "/" + type;
  for (const auto& [k, v] : keys) s += "/" + std::string(k) + ":" + std::to_string(v);
  return s;
}

}  // namespace ttx::bench
