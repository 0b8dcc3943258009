#include "roofline.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ttx::bench {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Sum of [p, p + count), read as 8 interleaved streams (8 far-apart chunks, one vector from each
// per step) into 8 accumulators. One sequential stream with one accumulator (Eigen's sum()) is
// bound by add latency and by one stream's prefetch depth: it measured 20 GB/s on one thread here,
// where a GEMV streaming several rows at once reads 37 GB/s.
float streaming_sum(const float* p, size_t count) {
  constexpr size_t kStreams = 8;
  const size_t chunk = count / kStreams / 16 * 16;
#if defined(__AVX512F__)
  __m512 a[kStreams];
  for (auto& x : a) x = _mm512_setzero_ps();
  for (size_t i = 0; i < chunk; i += 16)
    for (size_t k = 0; k < kStreams; ++k)
      a[k] = _mm512_add_ps(a[k], _mm512_loadu_ps(p + k * chunk + i));
  for (size_t k = 1; k < kStreams; ++k) a[0] = _mm512_add_ps(a[0], a[k]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, a[0]);
  float s = 0;
  for (float x : lanes) s += x;
#else
  float acc[kStreams][16] = {};
  for (size_t i = 0; i < chunk; i += 16)
    for (size_t k = 0; k < kStreams; ++k)
      for (size_t l = 0; l < 16; ++l) acc[k][l] += p[k * chunk + i + l];
  float s = 0;
  for (const auto& row : acc)
    for (float x : row) s += x;
#endif
  for (size_t i = kStreams * chunk; i < count; ++i) s += p[i];
  return s;
}

// 512 MB, far larger than the last-level cache.
std::vector<float>& probe_buffer() {
  static std::vector<float> buf((size_t(512) << 20) / sizeof(float), 1.0f);
  return buf;
}

// Seconds to read [p, p + count) with `threads` threads, each streaming its own contiguous share
// (threads started before the clock so only the reading is timed; the slowest thread's span).
double timed_read(const float* p, size_t count, int threads) {
  std::vector<float> partial(static_cast<size_t>(threads), 0.f);
  std::vector<double> spans(static_cast<size_t>(threads), 0.0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      const size_t lo = count * static_cast<size_t>(t) / static_cast<size_t>(threads);
      const size_t hi = count * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
      const double t0 = now();
      partial[static_cast<size_t>(t)] = streaming_sum(p + lo, hi - lo);
      spans[static_cast<size_t>(t)] = now() - t0;
    });
  for (auto& th : pool) th.join();
  benchmark::DoNotOptimize(partial.data());
  return *std::max_element(spans.begin(), spans.end());
}

// Read bandwidth over the whole probe buffer.
double read_bandwidth(int threads) {
  const std::vector<float>& buf = probe_buffer();
  std::vector<double> rates;
  for (int rep = 0; rep < 7; ++rep)
    rates.push_back(static_cast<double>(buf.size() * sizeof(float)) /
                    timed_read(buf.data(), buf.size(), threads) / 1e9);
  return median(rates);
}

// The same bound seen by a real streaming kernel: Eigen's row-major GEMV over 128 MB (each thread
// its own block of rows). It reads several rows at once and measured faster than the reduction
// above on this machine; the roofline takes the better of the two.
double gemv_bandwidth(int threads) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static const Mat A = Mat::Constant(8192, 4096, 0.5f);
  static const Eigen::VectorXf x = Eigen::VectorXf::Ones(4096);
  Eigen::VectorXf y(A.rows());
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<double> spans(static_cast<size_t>(threads), 0.0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        const Eigen::Index lo = A.rows() * t / threads, hi = A.rows() * (t + 1) / threads;
        const double t0 = now();
        y.segment(lo, hi - lo).noalias() = A.middleRows(lo, hi - lo) * x;
        spans[static_cast<size_t>(t)] = now() - t0;
      });
    for (auto& th : pool) th.join();
    benchmark::DoNotOptimize(y.data());
    const double dt = *std::max_element(spans.begin(), spans.end());
    rates.push_back(static_cast<double>(A.size()) * sizeof(float) / dt / 1e9);
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

// 12 independent chains of 16-lane FMAs (more than latency x throughput), distinct start values
// so the compiler cannot merge them; best of 5 on each of `threads` threads. 0 without AVX-512.
double fma_gflops(int threads) {
#if defined(__AVX512F__)
  constexpr long kIters = 20000000;
  std::vector<double> spans(static_cast<size_t>(threads), 0.0);
  float sink = 0;
  int team = 1;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
#ifdef _OPENMP
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    if (t == 0) team = omp_get_num_threads();
#else
    const size_t t = 0;
#endif
    spans[t] = 1e30;
    const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);
    for (int rep = 0; rep < 5; ++rep) {
      __m512 a[12];
      for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_ps(static_cast<float>(k + rep + 1));
      const double t0 = now();
      for (long i = 0; i < kIters; ++i)
        for (auto& x : a) x = _mm512_fmadd_ps(x, m, c);
      spans[t] = std::min(spans[t], now() - t0);
      alignas(64) float lanes[16];
      for (const auto& x : a) {
        _mm512_store_ps(lanes, x);
        sink += lanes[0];
      }
    }
  }
  benchmark::DoNotOptimize(sink);
  const double slowest = *std::max_element(spans.begin(), spans.end());
  return team * 12.0 * 32.0 * kIters / slowest / 1e9;
#else
  (void)threads;
  return 0;
#endif
}

}  // namespace

double cold_read_seconds(double bytes, int threads) {
  static size_t next = 0;  // successive reads walk the buffer: each region was read >= 512 MB ago
  std::vector<float>& buf = probe_buffer();
  // More than the buffer (a 1 GB cache) is read as several chunks, their times summed.
  double seconds = 0;
  for (size_t left = static_cast<size_t>(bytes / sizeof(float)); left > 0;) {
    const size_t count = std::min(left, buf.size());
    if (next + count > buf.size()) next = 0;
    const float* p = buf.data() + next;
    next += count;
    left -= count;
#ifdef _OPENMP
    // Run the way the kernels run (an OpenMP team, fork and join inside the timing), so the two
    // times differ by the reading only.
    std::vector<float> partial(static_cast<size_t>(threads), 0.f);
    const double t0 = now();
#pragma omp parallel num_threads(threads)
    {
      const size_t t = static_cast<size_t>(omp_get_thread_num());
      const size_t nt = static_cast<size_t>(omp_get_num_threads());
      partial[t] = streaming_sum(p + count * t / nt, count * (t + 1) / nt - count * t / nt);
    }
    seconds += now() - t0;
    benchmark::DoNotOptimize(partial.data());
#else
    seconds += timed_read(p, count, threads);
#endif
  }
  return seconds;
}

int max_threads() {
  return std::max(1u, std::thread::hardware_concurrency());
}

const Roofline& roofline() {
  static const Roofline r = [] {
    Roofline m;
    m.threads = max_threads();
    m.read_gbps_1t = std::max(read_bandwidth(1), gemv_bandwidth(1));
    m.read_gbps = std::max(read_bandwidth(m.threads), gemv_bandwidth(m.threads));
    m.peak_gflops_1t = gemm_gflops(1);
    m.peak_gflops = gemm_gflops(m.threads);
    m.fma_gflops_1t = fma_gflops(1);
    m.fma_gflops = fma_gflops(m.threads);
    std::fprintf(stderr,
                 "ttx roofline: read %.1f GB/s (1 thread), %.1f GB/s (%d threads); fp32 GEMM "
                 "%.1f GFLOP/s (1 thread), %.1f GFLOP/s (%d threads); register FMA %.1f / %.1f "
                 "GFLOP/s\n",
                 m.read_gbps_1t, m.read_gbps, m.threads, m.peak_gflops_1t, m.peak_gflops, m.threads,
                 m.fma_gflops_1t, m.fma_gflops);
    return m;
  }();
  return r;
}

void report(benchmark::State& state, double bytes, double flops, int threads) {
  const Roofline& r = roofline();
  if (threads != 1 && threads != r.threads) {  // no bound measured for it: no fraction to report
    state.SkipWithError(("no roofline measured for " + std::to_string(threads) +
                         " threads (measured: 1 and " + std::to_string(r.threads) + ")")
                            .c_str());
    return;
  }
  const bool all = threads == r.threads && threads > 1;
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
