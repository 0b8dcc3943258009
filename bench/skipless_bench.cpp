// One decode step of a skipless model before and after the Q + P removal (SPEC.md §3), through
// the same runtime (ttx::kernel::SkiplessModel): the only difference is the weights it reads.
// Shape: d 2048, 8 layers, GQA 16:4 heads of 128, SwiGLU f = 7168 (Mistral's 3.5 d), vocab 32000,
// a 16-token context, so that the weights dominate the bytes read. Expected speed-up = weight
// bytes read per step, original / merged (reported as the `expected` counter on both rows; the
// Mistral-7B figure, all weights counted once, would be 1.17x).
//
// The weights are uniform random values (timing does not depend on them), generated directly at
// the merged shapes (Q empty = identity, P empty and M* e_q x f): running the double-precision
// rewrite on a 2 GB model would make the benchmark's set-up take minutes, and its exactness is what
// tests/rewrite/skipless_test.cpp checks. Single-threaded, like the runtime.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "roofline.hpp"
#include "ttx/kernel/skipless_model.hpp"

namespace {

using ttx::Index;

constexpr Index kD = 2048, kLayers = 8, kHeads = 16, kKvHeads = 4, kHeadDim = 128, kFfn = 7168,
                kVocab = 32000, kContext = 16;

ttx::ModelConfig bench_config() {
  ttx::ModelConfig c;
  c.vocab = kVocab;
  c.layers = kLayers;
  c.block.kind = ttx::BlockKind::skipless_serial;
  c.block.attn = ttx::AttentionConfig{{kD, kHeads, kKvHeads, kHeadDim},
                                      0.0,
                                      ttx::RopeSpec::full(kHeadDim, ttx::RopeLayout::half_split)};
  c.block.ffn = ttx::FfnSpec::swiglu();
  c.final_norm = false;
  return c;
}

// Uniform values in [-sqrt(3/in), sqrt(3/in)] (variance 1/in), from a cheap xorshift generator.
template <class T>
ttx::RowMatrix<T> fill(Index rows, Index cols, std::uint64_t& state) {
  ttx::RowMatrix<T> m(rows, cols);
  const float a = std::sqrt(3.0f / static_cast<float>(rows));
  for (Index i = 0; i < m.size(); ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const float u = static_cast<float>(state >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    m.data()[i] = static_cast<T>(a * (2.0f * u - 1.0f));
  }
  return m;
}

template <class T>
ttx::ModelWeights<T> bench_weights(bool merged) {
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  ttx::ModelWeights<T> w;
  w.embedding = fill<T>(kVocab, kD, state);
  w.lm_head = fill<T>(kD, kVocab, state);
  const Index e = kKvHeads * kHeadDim, eq = kHeads * kHeadDim;
  for (Index l = 0; l < kLayers; ++l) {
    ttx::BlockWeights<T> b;
    if (!merged) b.attn.wq = fill<T>(kD, eq, state);  // merged: Q absorbed by the previous O
    b.attn.wk = fill<T>(kD, e, state);
    b.attn.wv = fill<T>(kD, e, state);
    if (!merged) b.attn.wo = fill<T>(eq, kD, state);  // merged: P folded into M* = P M
    b.ffn.w_in = fill<T>(merged ? eq : kD, kFfn, state);
    b.ffn.w_up = fill<T>(merged ? eq : kD, kFfn, state);
    b.ffn.w_out = fill<T>(kFfn, kD, state);
    w.blocks.push_back(std::move(b));
  }
  return w;
}

// Weight bytes one step reads (every block matrix, the LM head, one embedding row).
double step_weight_bytes(bool merged, double bytes_per_value) {
  const double d = kD, e = kKvHeads * kHeadDim, eq = kHeads * kHeadDim, f = kFfn;
  const double block =
      (merged ? 0 : d * eq + eq * d) + 2 * d * e + 2 * (merged ? eq : d) * f + f * d;
  return (kLayers * block + d * kVocab + d) * bytes_per_value;
}

// Only one 1-2 GB model alive at a time: benchmarks run one variant after another.
struct Slot {
  std::string key;
  std::unique_ptr<ttx::kernel::SkiplessModel<float>> f32;
  std::unique_ptr<ttx::kernel::SkiplessModel<ttx::bf16>> bf16;
};
Slot& slot() {
  static Slot s;
  return s;
}

template <class T>
ttx::kernel::SkiplessModel<T>& model(bool merged) {
  Slot& s = slot();
  const std::string key = std::string(ttx::type_name<T>()) + (merged ? "/merged" : "/original");
  auto& ptr = [&]() -> std::unique_ptr<ttx::kernel::SkiplessModel<T>>& {
    if constexpr (std::is_same_v<T, float>)
      return s.f32;
    else
      return s.bf16;
  }();
  if (s.key != key || !ptr) {
    s.f32.reset();
    s.bf16.reset();
    ptr = std::make_unique<ttx::kernel::SkiplessModel<T>>(bench_config(), bench_weights<T>(merged),
                                                          kContext + 1);
    std::vector<int> prompt(kContext);
    for (Index i = 0; i < kContext; ++i) prompt[static_cast<size_t>(i)] = static_cast<int>(i * 7);
    ptr->forward(prompt);
    s.key = key;
  }
  return *ptr;
}

template <class T>
void skipless_step(benchmark::State& state, bool merged) {
  auto& m = model<T>(merged);
  for (auto _ : state) {
    m.truncate(kContext);
    const auto& logits = m.step(3);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  const double cache_bytes = 2.0 * kLayers * (kContext + 1) * kKvHeads * kHeadDim * sizeof(float);
  ttx::bench::report(state, static_cast<double>(m.weight_bytes_per_step()) + cache_bytes,
                     m.flops_per_step(kContext + 1), 1);
  state.counters["weight_GB"] = static_cast<double>(m.weight_bytes_per_step()) / 1e9;
  state.counters["expected"] =
      step_weight_bytes(false, sizeof(T)) / step_weight_bytes(true, sizeof(T));
}

const bool registered = [] {
  for (bool merged : {false, true}) {
    const char* variant = merged ? "merged" : "original";
    benchmark::RegisterBenchmark(
        ttx::bench::name("skipless_step", variant, "f32", {{"d", kD}, {"layers", kLayers}}).c_str(),
        skipless_step<float>, merged)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.3);
  }
  for (bool merged : {false, true}) {
    const char* variant = merged ? "merged" : "original";
    benchmark::RegisterBenchmark(
        ttx::bench::name("skipless_step", variant, "bf16", {{"d", kD}, {"layers", kLayers}})
            .c_str(),
        skipless_step<ttx::bf16>, merged)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.3);
  }
  return true;
}();

}  // namespace
