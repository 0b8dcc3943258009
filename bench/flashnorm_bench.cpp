// FlashNorm linear against RMSNorm-then-linear, side by side at identical shapes:
//   flashnorm_linear/fused/<type>/d:<d>/k:<k>/batch:<b>    z = (a W*) / RMS(a), one pass over a
//   flashnorm_linear/unfused/<type>/d:<d>/k:<k>/batch:<b>  a' = a / RMS(a) * g, then z = a' W
// Both use the same product code (kernel::flashnorm_linear / kernel::linear_unscaled share it):
// batch 1 is the AVX-512 GEMV streaming rows of W, batch > 1 Eigen's GEMM (bf16: per-panel
// widening). Per iteration: bytes d k sizeof(T) + b (d + k) 4, flops 2 b d k. Weights are cycled
// over several copies (bench::cold_copies) so each iteration reads W from memory, not cache.
//   flashnorm_linear/paired/<type>/d:<d>/k:<k>/batch:<b>  both, alternating within every
// iteration (order swapped each time); counter fused_over_unfused = median of the per-iteration
// time ratios. This VM's bandwidth drifts within seconds (the separate runs above show 20-30 %
// spreads at batch 1); pairs measured microseconds apart cancel most of that drift. Counters
// fused_read_fraction / unfused_read_fraction: a plain read of the same bytes from memory, timed in
// the same iteration, over the kernel's time (median): the bandwidth roofline fraction without the
// drift of the start-of-run probe.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "roofline.hpp"
#include "ttx/kernel/flashnorm.hpp"

namespace {

using namespace ttx;

template <class T>
void fill(T* p, Index count, std::uint64_t seed, float scale) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (Index i = 0; i < count; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const double u = static_cast<double>(x >> 11) / static_cast<double>(std::uint64_t(1) << 53);
    p[i] = static_cast<T>(static_cast<float>(2.0 * u - 1.0) * scale);
  }
}

template <class T>
struct Setup {
  std::vector<RowMatrix<T>> w;
  RowMatrix<float> a, tmp, out;
  RowVector<float> gain;
  Setup(Index d, Index k, Index b) {
    const double bytes = static_cast<double>(d * k) * sizeof(T);
    const int copies = bench::cold_copies(bytes);
    for (int c = 0; c < copies; ++c) {
      w.emplace_back(d, k);
      fill(w.back().data(), d * k, static_cast<std::uint64_t>(c + 1),
           static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))));
    }
    a.resize(b, d);
    fill(a.data(), a.size(), 77, 1.0f);
    tmp.resize(b, d);
    out.resize(b, k);
    gain = RowVector<float>::Ones(d);
  }
};

template <class T>
void run_once(Setup<T>& s, const RowMatrix<T>& w, bool fused) {
  const RowVector<float> none;
  if (fused) {
    kernel::flashnorm_linear<T>(s.a, w, none, {1e-5}, s.out);
  } else {
    kernel::rms_normalize<float>(s.a, s.gain, 1e-5, s.tmp);
    kernel::linear_unscaled<T>(s.tmp, w, none, s.out);
  }
  benchmark::DoNotOptimize(s.out.data());
  benchmark::ClobberMemory();
}

template <class T>
void bm_linear(benchmark::State& state, bool fused, Index d, Index k, Index b) {
  Setup<T> s(d, k, b);
  size_t next = 0;
  for (auto _ : state) {
    const RowMatrix<T>& w = s.w[next];
    next = (next + 1) % s.w.size();
    run_once(s, w, fused);
  }
  const double bytes =
      static_cast<double>(d * k) * sizeof(T) + static_cast<double>(b * (d + k)) * 4;
  const double flops = 2.0 * static_cast<double>(b * d * k);
  bench::report(state, bytes, flops, bench::max_threads());
}

template <class T>
void bm_paired(benchmark::State& state, Index d, Index k, Index b) {
  Setup<T> s(d, k, b);
  size_t next = 0;
  auto once = [&](bool fused) {
    const RowMatrix<T>& w = s.w[next];
    next = (next + 1) % s.w.size();
    run_once(s, w, fused);
  };
  const double bytes =
      static_cast<double>(d * k) * sizeof(T) + static_cast<double>(b * (d + k)) * 4;
  const bench::PairedMedians m = bench::run_paired(
      state, [&] { once(false); }, [&] { once(true); }, bytes, bytes, bench::max_threads());
  const double flops = 2.0 * static_cast<double>(b * d * k);
  bench::report(state, 2 * bytes, 2 * flops, bench::max_threads());  // both products
  state.counters["fused_over_unfused"] = m.b_over_a;
  state.counters["fused_ms"] = 1e3 * m.b_seconds;
  state.counters["unfused_ms"] = 1e3 * m.a_seconds;
  state.counters["fused_read_fraction"] = m.b_read_fraction;
  state.counters["unfused_read_fraction"] = m.a_read_fraction;
}

template <class T>
void register_type() {
  struct Shape {
    Index d, k;
  };
  for (Shape sh : {Shape{4096, 4096}, Shape{2048, 2560}})
    for (Index b : {1, 16, 512})
      for (bool fused : {true, false}) {
        benchmark::RegisterBenchmark(
            bench::name("flashnorm_linear", fused ? "fused" : "unfused", type_name<T>(),
                        {{"d", sh.d}, {"k", sh.k}, {"batch", b}})
                .c_str(),
            [=](benchmark::State& st) { bm_linear<T>(st, fused, sh.d, sh.k, b); })
            ->UseRealTime()
            ->MinTime(0.2)
            ->Unit(benchmark::kMillisecond);
      }
  for (Shape sh : {Shape{4096, 4096}, Shape{2048, 2560}})
    for (Index b : {1, 16, 512})
      benchmark::RegisterBenchmark(bench::name("flashnorm_linear", "paired", type_name<T>(),
                                               {{"d", sh.d}, {"k", sh.k}, {"batch", b}})
                                       .c_str(),
                                   [=](benchmark::State& st) { bm_paired<T>(st, sh.d, sh.k, b); })
          ->UseManualTime()
          ->MinTime(0.5)
          ->Unit(benchmark::kMillisecond);
}

const bool registered = [] {
  register_type<float>();
  register_type<bf16>();
  return true;
}();

}  // namespace
