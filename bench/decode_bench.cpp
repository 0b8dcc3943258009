// One decode step, vanilla (KV cache) against slim attention (K cache only, then head_i = U_i
// W_KV,i), side by side at identical shapes (MHA, d = h * dk):
//   decode/vanilla/<type>/h:<h>/dk:<dk>/n:<n>/threads:<t>
//   decode/slim/<type>/h:<h>/dk:<dk>/n:<n>/threads:<t>
// Per iteration (counted honestly):
//   vanilla  bytes 2 n e sizeof(T)                        flops 4 n h dk (scores, P V)
//   slim     bytes n d sizeof(T) + d d 4 (float W_KV)     flops 2 n h dk (scores) + 2 h n d (S K)
//                                                               + 2 h d dk (U_i W_KV,i)
// Caches are filled once; when one cache is smaller than 64 MB, several copies are cycled so each
// iteration reads memory that is not in the last-level cache (cold-ish, as in a real model where
// the other layers' caches evict this one).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "roofline.hpp"
#include "ttx/kernel/decode.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace ttx;

constexpr double kColdBytes = 64.0 * (1 << 20);

/// Deterministic values ~ U(-1, 1), cheap enough to fill a gigabyte.
template <class T>
void fill(T* p, Index count, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (Index i = 0; i < count; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = static_cast<T>(
        static_cast<float>(static_cast<std::int64_t>(x >> 11) - (std::int64_t(1) << 52)) /
        static_cast<float>(std::int64_t(1) << 52));
  }
}

int copies_for(double bytes) {
  return static_cast<int>(std::min(16.0, std::max(1.0, std::ceil(kColdBytes / bytes))));
}

template <class T>
void bm_vanilla(benchmark::State& state, Index h, Index dk, Index n, int threads) {
  const AttentionShape sh{h * dk, h, h, dk};
  const Index e = sh.kv_width();
  const double cache_bytes = 2.0 * static_cast<double>(n * e) * sizeof(T);
  std::vector<std::unique_ptr<KVCache<T>>> caches;
  for (int c = 0, nc = copies_for(cache_bytes); c < nc; ++c) {
    caches.push_back(std::make_unique<KVCache<T>>(sh, n));
    fill(caches.back()->keys().extend(n).data(), n * e, 2 * c + 1);
    fill(caches.back()->values().extend(n).data(), n * e, 2 * c + 2);
  }
  RowVector<float> q(sh.q_width()), out(sh.q_width());
  fill(q.data(), q.size(), 99);
  kernel::DecodeOptions opt;
  opt.threads = threads;
  size_t it = 0;
  for (auto _ : state) {
    kernel::decode_vanilla<T>(q, *caches[it++ % caches.size()], sh, opt, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double flops = 4.0 * static_cast<double>(n * h * dk);
  bench::report(state, cache_bytes, flops, threads);
  state.counters["cache_bytes"] = static_cast<double>(caches[0]->bytes());
}

template <class T>
void bm_slim(benchmark::State& state, Index h, Index dk, Index n, int threads) {
  const AttentionShape sh{h * dk, h, h, dk};
  const Index d = sh.d;
  const double cache_bytes = static_cast<double>(n * d) * sizeof(T);
  std::vector<std::unique_ptr<RowCache<T>>> caches;
  for (int c = 0, nc = copies_for(cache_bytes); c < nc; ++c) {
    caches.push_back(std::make_unique<RowCache<T>>(d, n));
    fill(caches.back()->extend(n).data(), n * d, 2 * c + 1);
  }
  RowMatrix<float> wkv(d, d);  // W_KV at float working precision (d x d, head i = columns i*dk..)
  fill(wkv.data(), wkv.size(), 77);
  wkv /= static_cast<float>(std::sqrt(static_cast<double>(d)));
  RowVector<float> q(sh.q_width()), out(sh.q_width());
  fill(q.data(), q.size(), 99);
  RowMatrix<float> U(h, d);
  kernel::DecodeOptions opt;
  opt.threads = threads;
  const int nt = threads > 0 ? threads : bench::max_threads();
  size_t it = 0;
  for (auto _ : state) {
    kernel::decode_weighted_keys<T>(q, *caches[it++ % caches.size()], sh, opt, U);
    // head_i = U_i W_KV,i: h GEMVs (d x dk each) reading W_KV once. Split over the threads only
    // when W_KV is large (> 8 MB): below that a second parallel region costs more than it saves.
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && d * d > (Index(2) << 20))
#endif
    for (Index i = 0; i < h; ++i)
      out.segment(i * dk, dk).noalias() = U.row(i) * wkv.middleCols(i * dk, dk);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  (void)nt;
  const double flops = 2.0 * static_cast<double>(n * h * dk) +
                       2.0 * static_cast<double>(h * n * d) + 2.0 * static_cast<double>(h * d * dk);
  const double bytes = cache_bytes + static_cast<double>(d * d) * sizeof(float);
  bench::report(state, bytes, flops, threads);
  state.counters["cache_bytes"] = static_cast<double>(caches[0]->bytes());
}

template <class T>
void register_type() {
  for (Index h : {4, 8, 16, 32})
    for (Index dk : {64, 128})
      for (Index n : {1024, 4096, 16384, 32768})
        for (int t : {1, 2}) {
          const auto keys = {
              std::pair<const char*, long long>{"h", h}, {"dk", dk}, {"n", n}, {"threads", t}};
          benchmark::RegisterBenchmark(
              bench::name("decode", "vanilla", type_name<T>(), keys).c_str(),
              [=](benchmark::State& s) { bm_vanilla<T>(s, h, dk, n, t); })
              ->UseRealTime()
              ->MinTime(0.15)
              ->Unit(benchmark::kMillisecond);
          benchmark::RegisterBenchmark(bench::name("decode", "slim", type_name<T>(), keys).c_str(),
                                       [=](benchmark::State& s) { bm_slim<T>(s, h, dk, n, t); })
              ->UseRealTime()
              ->MinTime(0.15)
              ->Unit(benchmark::kMillisecond);
        }
}

const bool registered = [] {
  register_type<float>();
  register_type<bf16>();
  register_type<f16>();
  return true;
}();

}  // namespace
