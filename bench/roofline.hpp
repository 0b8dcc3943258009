// The machine's roofline, measured once when ttx_bench starts, and the counters every benchmark
// reports: bytes and flops per iteration, GB/s, GFLOP/s, and
//   roofline = max(bytes / read_bandwidth, flops / peak_flops) / measured time
// (1.0 = at the bound; the bound for 1 thread or for all threads, as the benchmark ran).
// Benchmarks must use real time (->UseRealTime()): the kernels run their own threads.
#pragma once

#include <benchmark/benchmark.h>

#include <string>

namespace ttx::bench {

struct Roofline {
  double read_gbps_1t = 0, read_gbps = 0;      ///< best of a streaming reduction and a GEMV, GB/s
  double peak_gflops_1t = 0, peak_gflops = 0;  ///< Eigen fp32 GEMM 2048^3, GFLOP/s
  int threads = 1;                             ///< hardware threads used for the "all" figures
};

/// Measured on first use (ttx_bench's main calls it before running anything).
const Roofline& roofline();

/// Threads available to a kernel (hardware concurrency).
int max_threads();

/// Sets counters bytes, flops (per iteration), GB/s, GFLOP/s and roofline for a run on `threads`.
void report(benchmark::State& state, double bytes, double flops, int threads);

/// "a/b/c" style name builder: name("decode", "vanilla", "f32", {{"h",32},{"n",4096}}).
std::string name(const std::string& what, const std::string& variant, const std::string& type,
                 std::initializer_list<std::pair<const char*, long long>> keys);

}  // namespace ttx::bench
