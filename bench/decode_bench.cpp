// One decode step, vanilla (KV cache) against slim attention (K cache only, then head_i = U_i
// W_KV,i), side by side at identical shapes (MHA, d = h * dk):
//   decode/vanilla/<type>/h:<h>/dk:<dk>/n:<n>/threads:<t>
//   decode/slim/<type>/h:<h>/dk:<dk>/n:<n>/threads:<t>
// Per iteration (counted honestly):
//   vanilla  bytes 2 n e sizeof(T)                        flops 4 n h dk (scores, P V)
//   slim     bytes n d sizeof(T) + d d 4 (float W_KV)     flops 2 n h dk (scores) + 2 h n d (S K)
//                                                               + 2 h d dk (U_i W_KV,i)
//   counter read_fraction: a plain read of those bytes on the same threads, timed after every
//   iteration (outside the timing), over the iteration's time (median; bench::cold_read_seconds)
//   decode/paired/<type>/h:<h>/dk:128/n:<n>/threads:<all>  both in every iteration, alternating;
//     counters slim_over_vanilla (median of per-iteration ratios), slim_ms, vanilla_ms, and
//     {slim,vanilla}_read_fraction: a plain read of the kernel's bytes, timed in the same
//     iteration, over the kernel's time (the bandwidth roofline fraction measured in the moment)
//   decode/paired_rope_{raw,rotated}/<f32|bf16>/h:<4|8>/dk:128/n:16384/threads:<all>  the same
//     with RoPE: slim rotates raw keys as it reads them, or un-rotates cached rotated keys
// Caches are filled once; several copies are cycled (bench::cold_copies) so each iteration reads
// memory that is not in the last-level cache (as in a real model, where the other layers' caches
// evict this one).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "roofline.hpp"
#include "ttx/kernel/decode.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace ttx;
using kernel::KeyRotation;

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

/// Vanilla decode: KV caches (cycled copies), the query and the output.
template <class T>
struct VanillaStep {
  AttentionShape sh;
  double cache_bytes, flops;
  std::vector<std::unique_ptr<KVCache<T>>> caches;
  RowVector<float> q, out;
  kernel::DecodeOptions opt;
  size_t next = 0;
  VanillaStep(Index h, Index dk, Index n, int threads)
      : sh{h * dk, h, h, dk},
        cache_bytes(2.0 * static_cast<double>(n * sh.kv_width()) * sizeof(T)),
        flops(4.0 * static_cast<double>(n * h * dk)),
        q(sh.q_width()),
        out(sh.q_width()) {
    const Index e = sh.kv_width();
    for (int c = 0, nc = bench::cold_copies(cache_bytes); c < nc; ++c) {
      caches.push_back(std::make_unique<KVCache<T>>(sh, n));
      fill(caches.back()->keys().extend(n).data(), n * e, 2 * c + 1);
      fill(caches.back()->values().extend(n).data(), n * e, 2 * c + 2);
    }
    fill(q.data(), q.size(), 99);
    opt.threads = threads;
  }
  double bytes() const { return cache_bytes; }
  void run() {
    kernel::decode_vanilla<T>(q, *caches[next++ % caches.size()], sh, opt, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
};

/// Slim decode: K caches (cycled copies), W_KV at float working precision (d x d, head i =
/// columns i*dk..), U and the heads (h x dk). With a rotation, full-width half-split RoPE is
/// applied per key as the kernel reads it (rotate_on_read: raw keys cached; unrotate_on_read:
/// rotated keys cached, un-rotated for the sum) — the cost slim pays for RoPE, which a vanilla
/// cache of rotated keys does not.
template <class T>
struct SlimStep {
  AttentionShape sh;
  double cache_bytes, flops;
  std::vector<std::unique_ptr<RowCache<T>>> caches;
  RowMatrix<float> wkv, U, H;
  RowVector<float> q;
  RopeSpec rope;
  kernel::DecodeOptions opt;
  size_t next = 0;
  SlimStep(Index h, Index dk, Index n, int threads, KeyRotation rotation = KeyRotation::none)
      : sh{h * dk, h, h, dk},
        cache_bytes(static_cast<double>(n * sh.d) * sizeof(T)),
        flops(2.0 * static_cast<double>(n * h * dk) + 2.0 * static_cast<double>(h * n * sh.d) +
              2.0 * static_cast<double>(h * sh.d * dk)),
        wkv(sh.d, sh.d),
        U(h, sh.d),
        H(h, dk),
        q(sh.q_width()),
        rope(RopeSpec::full(dk, RopeLayout::half_split)) {
    const Index d = sh.d;
    for (int c = 0, nc = bench::cold_copies(cache_bytes); c < nc; ++c) {
      caches.push_back(std::make_unique<RowCache<T>>(d, n));
      fill(caches.back()->extend(n).data(), n * d, 2 * c + 1);
    }
    fill(wkv.data(), wkv.size(), 77);
    wkv /= static_cast<float>(std::sqrt(static_cast<double>(d)));
    fill(q.data(), q.size(), 99);
    opt.threads = threads;
    if (rotation != KeyRotation::none) {
      opt.rope = &rope;
      opt.rotation = rotation;
    }
  }
  double bytes() const { return cache_bytes + static_cast<double>(sh.d * sh.d) * sizeof(float); }
  void run() {
    kernel::decode_weighted_keys<T>(q, *caches[next++ % caches.size()], sh, opt, U);
    // head_i = U_i W_KV,i, as kernel::slim_decode runs it (threads split W_KV's rows from 1 MB).
    kernel::decode_heads_from_weighted(U, wkv, sh, opt.threads, H);
    benchmark::DoNotOptimize(H.data());
    benchmark::ClobberMemory();
  }
};

template <class Step>
void bm_step(benchmark::State& state, Step& step, int threads) {
  using clock = std::chrono::steady_clock;
  std::vector<double> fractions;  // same-moment read of the step's bytes over the step's time
  for (auto _ : state) {
    const auto t0 = clock::now();
    step.run();
    const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
    state.PauseTiming();
    fractions.push_back(bench::cold_read_seconds(step.bytes(), threads) / seconds);
    state.ResumeTiming();
  }
  state.counters["read_fraction"] = bench::median(fractions);
  bench::report(state, step.bytes(), step.flops, threads);
  state.counters["cache_bytes"] = static_cast<double>(step.caches[0]->bytes());
}

/// Both kernels back to back in every iteration (bench::run_paired): the counter
/// slim_over_vanilla cancels this VM's bandwidth drift, which moves the separate runs' medians by
/// 10-30 % between repetitions.
template <class T>
void bm_paired(benchmark::State& state, Index h, Index dk, Index n, int threads,
               KeyRotation rotation = KeyRotation::none) {
  VanillaStep<T> van(h, dk, n, threads);
  SlimStep<T> slim(h, dk, n, threads, rotation);
  van.run();  // first touch of the outputs and the per-thread scratch
  slim.run();
  const bench::PairedMedians m = bench::run_paired(
      state, [&] { van.run(); }, [&] { slim.run(); }, van.bytes(), slim.bytes(), threads);
  bench::report(state, van.bytes() + slim.bytes(), van.flops + slim.flops, threads);
  state.counters["slim_over_vanilla"] = m.b_over_a;
  state.counters["slim_ms"] = 1e3 * m.b_seconds;
  state.counters["vanilla_ms"] = 1e3 * m.a_seconds;
  state.counters["slim_read_fraction"] = m.b_read_fraction;
  state.counters["vanilla_read_fraction"] = m.a_read_fraction;
}

/// 1 and all threads: the two counts the roofline is measured for.
std::vector<int> thread_counts() {
  const int all = bench::max_threads();
  return all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
}

template <class T>
void register_type() {
  const int all = bench::max_threads();
  for (Index h : {4, 8, 16, 32})
    for (Index dk : {64, 128})
      for (Index n : {1024, 4096, 16384, 32768})
        for (int t : thread_counts()) {
          const auto keys = {
              std::pair<const char*, long long>{"h", h}, {"dk", dk}, {"n", n}, {"threads", t}};
          benchmark::RegisterBenchmark(
              bench::name("decode", "vanilla", type_name<T>(), keys).c_str(),
              [=](benchmark::State& s) {
                VanillaStep<T> step(h, dk, n, t);
                bm_step(s, step, t);
              })
              ->UseRealTime()
              ->MinTime(0.15)
              ->Unit(benchmark::kMillisecond);
          benchmark::RegisterBenchmark(bench::name("decode", "slim", type_name<T>(), keys).c_str(),
                                       [=](benchmark::State& s) {
                                         SlimStep<T> step(h, dk, n, t);
                                         bm_step(s, step, t);
                                       })
              ->UseRealTime()
              ->MinTime(0.15)
              ->Unit(benchmark::kMillisecond);
        }
  // The headline pairs (issue 3's table): n 4096 and 16384, head_dim 128, all threads.
  for (Index h : {4, 8, 16, 32})
    for (Index n : {4096, 16384}) {
      const auto keys = {
          std::pair<const char*, long long>{"h", h}, {"dk", 128}, {"n", n}, {"threads", all}};
      benchmark::RegisterBenchmark(bench::name("decode", "paired", type_name<T>(), keys).c_str(),
                                   [=](benchmark::State& s) { bm_paired<T>(s, h, 128, n, all); })
          ->UseManualTime()
          ->MinTime(0.5)
          ->Unit(benchmark::kMillisecond);
    }
  // The same pairs with RoPE (float and bf16 caches, h 4 and 8, n 16384): vanilla caches rotated
  // keys and is unchanged; slim rotates (or un-rotates) every key it reads.
  if constexpr (!std::is_same_v<T, f16>)
    for (Index h : {4, 8})
      for (KeyRotation rot : {KeyRotation::rotate_on_read, KeyRotation::unrotate_on_read}) {
        const auto keys = {
            std::pair<const char*, long long>{"h", h}, {"dk", 128}, {"n", 16384}, {"threads", all}};
        const char* variant =
            rot == KeyRotation::rotate_on_read ? "paired_rope_raw" : "paired_rope_rotated";
        benchmark::RegisterBenchmark(
            bench::name("decode", variant, type_name<T>(), keys).c_str(),
            [=](benchmark::State& s) { bm_paired<T>(s, h, 128, 16384, all, rot); })
            ->UseManualTime()
            ->MinTime(0.5)
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
