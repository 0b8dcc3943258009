// The machine's roofline, measured once when ttx_bench starts, and the counters every benchmark
// reports: bytes and flops per iteration, GB/s, GFLOP/s, and
//   roofline = max(bytes / read_bandwidth, flops / peak_flops) / measured time
// (1.0 = at the bound; the bound for 1 thread or for all threads, as the benchmark ran).
// Benchmarks must use real time (->UseRealTime()): the kernels run their own threads.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

namespace ttx::bench {

struct Roofline {
  double read_gbps_1t = 0, read_gbps = 0;      ///< best of a streaming reduction and a GEMV, GB/s
  double peak_gflops_1t = 0, peak_gflops = 0;  ///< Eigen fp32 GEMM 2048^3, GFLOP/s
  /// fp32 FMAs on registers only (no loads), GFLOP/s: not a bound any kernel is held to, but with
  /// the two above it says which way this VM's balance of arithmetic to memory leans in a run
  /// (it moved by ~2x between sessions, with the read rate).
  double fma_gflops_1t = 0, fma_gflops = 0;
  int threads = 1;  ///< hardware threads used for the "all" figures
};

/// Measured on first use (ttx_bench's main calls it before running anything).
const Roofline& roofline();

/// Seconds to read `bytes` from memory with the probe's streaming reduction on `threads` threads
/// (an OpenMP team, as the kernels use, fork and join included): the bandwidth bound for that many
/// bytes, measured in the same moment as the kernel next to it (this VM's bandwidth moves by up to
/// 2x within one run, so the fraction of the start-up probe, `roofline`, can read above 1 or far
/// below the truth).
double cold_read_seconds(double bytes, int threads);

/// Copies of a benchmark's data (`bytes` each) to cycle so every iteration reads from memory: at
/// least 320 MB in all (at most 512 copies). 64 MB was not enough here: the 32 MB L3 kept part of
/// a 64 MB cycle (f32 4096 x 4096 GEMV, one 67 MB copy: 1.1-1.3x the rate of a plain cold read of
/// its bytes in the same iteration; with 320 MB, 0.89-1.0).
inline int cold_copies(double bytes) {
  return static_cast<int>(std::min(512.0, std::max(1.0, std::ceil(320e6 / std::max(1.0, bytes)))));
}

/// Threads available to a kernel (hardware concurrency).
int max_threads();

/// Sets counters bytes, flops (per iteration), GB/s, GFLOP/s and roofline for a run on `threads`.
void report(benchmark::State& state, double bytes, double flops, int threads);

/// "a/b/c" style name builder: name("decode", "vanilla", "f32", {{"h",32},{"n",4096}}).
std::string name(const std::string& what, const std::string& variant, const std::string& type,
                 std::initializer_list<std::pair<const char*, long long>> keys);

/// The upper median of v (v[size / 2] in sorted order), 0 when empty.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

/// Medians of a paired run: b's time over a's (per iteration), each one's seconds, and with a
/// same-moment read, each one's read fraction: the time a plain read of its bytes took in the same
/// iteration over its own time (1.0 = at the bandwidth bound).
struct PairedMedians {
  double b_over_a = 0, a_seconds = 0, b_seconds = 0;
  double a_read_fraction = 0, b_read_fraction = 0;
};

/// Runs a() and b() back to back in every iteration, the order swapped each time, and sets the
/// iteration time to their sum (register with ->UseManualTime()). This VM's bandwidth drifts
/// within seconds; pairs measured microseconds apart cancel most of that drift. With a_bytes and
/// b_bytes > 0, every iteration also times a cold read of a_bytes on `threads` threads (outside the
/// iteration time; b's read time scaled by b_bytes / a_bytes) for the read fractions.
template <class A, class B>
PairedMedians run_paired(benchmark::State& state, A&& a, B&& b, double a_bytes = 0,
                         double b_bytes = 0, int threads = 1) {
  using clock = std::chrono::steady_clock;
  bool b_first = true;
  std::vector<double> ratios, ta, tb, fa, fb;
  for (auto _ : state) {
    double t[2] = {0, 0};  // [a, b]
    for (int half = 0; half < 2; ++half) {
      const bool is_b = (half == 0) == b_first;
      const auto t0 = clock::now();
      if (is_b)
        b();
      else
        a();
      t[is_b] = std::chrono::duration<double>(clock::now() - t0).count();
    }
    b_first = !b_first;
    state.SetIterationTime(t[0] + t[1]);
    ratios.push_back(t[1] / t[0]);
    ta.push_back(t[0]);
    tb.push_back(t[1]);
    if (a_bytes > 0 && b_bytes > 0) {
      const double read = cold_read_seconds(a_bytes, threads);  // not in the manual time
      fa.push_back(read / t[0]);
      fb.push_back(read * (b_bytes / a_bytes) / t[1]);
    }
  }
  return {median(ratios), median(ta), median(tb), median(fa), median(fb)};
}

}  // namespace ttx::bench
