// First layer per batch of tokens, with and without the precomputed table (SPEC.md §4):
//   computed: gather embedding rows, norm, Q/K/V projections (kernel::first_layer_compute, all
//             OpenMP threads), RoPE, K and V into a KVCache
//   table:    gather table rows (kernel::first_layer_lookup, one thread), RoPE, K and V into a
//             KVCache
// Serial (Mistral-like) layer 1: h_kv/h = 1/4, head_dim 128; d 1024 (reduced) and d 4096
// (Mistral-7B's layer 1). Embedding and table hold random values: the time does not depend on
// them, and building a d 4096 table here would dominate the run.
// Names: first_layer/<computed|table>/<f32|bf16>/d:<d>/batch:<b>.
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "roofline.hpp"
#include "ttx/kernel/first_layer.hpp"

namespace {

using ttx::Index;

struct Shape {
  Index d, heads, kv_heads, head_dim, vocab;
};

template <class T>
ttx::RowMatrix<T> random_rows(Index rows, Index cols, double stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> n(0.0f, static_cast<float>(stddev));
  ttx::RowMatrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(n(rng));
  return m;
}

template <class T>
struct Setup {
  ttx::BlockConfig cfg;
  ttx::RowMatrix<T> embedding;
  ttx::BlockWeights<T> block;
  ttx::rewrite::FirstLayerTable<T> table;

  explicit Setup(const Shape& s) {
    std::mt19937_64 rng(7);
    cfg.kind = ttx::BlockKind::serial;
    cfg.attn.shape = {s.d, s.heads, s.kv_heads, s.head_dim};
    cfg.attn.rope = ttx::RopeSpec::full(s.head_dim, ttx::RopeLayout::half_split);
    cfg.norm = ttx::NormSpec::rms(1e-5);
    const double w = 1.0 / std::sqrt(static_cast<double>(s.d));
    embedding = random_rows<T>(s.vocab, s.d, 1.0, rng);
    block.norm1.gain = ttx::RowVector<T>::Ones(s.d);
    block.attn.wq = random_rows<T>(s.d, cfg.attn.shape.q_width(), w, rng);
    block.attn.wk = random_rows<T>(s.d, cfg.attn.shape.kv_width(), w, rng);
    block.attn.wv = random_rows<T>(s.d, cfg.attn.shape.kv_width(), w, rng);
    table.kind = cfg.kind;
    table.attn = cfg.attn;
    table.layout = ttx::rewrite::FirstLayerLayout::of(cfg.attn.shape);
    table.rows = random_rows<T>(s.vocab, table.layout.width(), 1.0, rng);
  }
};

template <class T>
const Setup<T>& setup(const Shape& s) {
  // One setup per (type, d), built on first use and kept for the run.
  static std::vector<std::pair<Index, std::unique_ptr<Setup<T>>>> all;
  for (auto& [d, p] : all)
    if (d == s.d) return *p;
  all.emplace_back(s.d, std::make_unique<Setup<T>>(s));
  return *all.back().second;
}

template <class T>
void run(benchmark::State& state, Shape s, bool use_table, Index batch) {
  const Setup<T>& st = setup<T>(s);
  const ttx::AttentionShape& a = st.cfg.attn.shape;
  const auto L = ttx::rewrite::FirstLayerLayout::of(a);
  std::mt19937_64 rng(static_cast<unsigned long long>(batch));
  std::uniform_int_distribution<int> pick(0, static_cast<int>(s.vocab - 1));
  std::vector<int> ids(static_cast<size_t>(batch));
  for (auto& t : ids) t = pick(rng);
  ttx::KVCache<T> cache(a, batch);
  ttx::RowMatrix<float> q(batch, a.q_width()), res(batch, a.d);
  for (auto _ : state) {
    cache.clear();
    if (use_table)
      ttx::kernel::first_layer_lookup(st.table, ids, cache, q, res);
    else
      ttx::kernel::first_layer_compute(st.embedding, st.block, st.cfg, ids, cache, q, res);
    benchmark::DoNotOptimize(q.data());
    benchmark::DoNotOptimize(cache.keys().data());
    benchmark::ClobberMemory();
  }
  const double B = static_cast<double>(batch), sz = sizeof(T);
  const double writes = B * 2.0 * static_cast<double>(L.kv_width) * sz +
                        B * static_cast<double>(L.q_width + L.d) * 4.0;
  const double rope =
      B * static_cast<double>(a.heads + a.kv_heads) * static_cast<double>(a.head_dim / 2) * 6.0;
  const double proj = static_cast<double>(a.d * (L.q_width + 2 * L.kv_width));
  const double bytes =
      use_table ? B * static_cast<double>(L.width()) * sz + writes
                : (proj + static_cast<double>(a.d) + B * static_cast<double>(a.d)) * sz + writes;
  const double flops = use_table ? rope : 2.0 * B * proj + rope;
  const int threads = use_table ? 1 : ttx::bench::max_threads();
  ttx::bench::report(state, bytes, flops, threads);
  state.counters["tokens/s"] =
      benchmark::Counter(B * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

template <class T>
void register_type() {
  const std::vector<Shape> shapes{{1024, 8, 2, 128, 4096}, {4096, 32, 8, 128, 2048}};
  for (const Shape& s : shapes)
    for (Index b : {1, 16, 256})
      for (bool table : {false, true}) {
        const std::string name = ttx::bench::name("first_layer", table ? "table" : "computed",
                                                  ttx::type_name<T>(), {{"d", s.d}, {"batch", b}});
        benchmark::RegisterBenchmark(name.c_str(), run<T>, s, table, b)
            ->UseRealTime()
            ->MinTime(0.2)
            ->Unit(benchmark::kMicrosecond);
      }
}

const bool registered = [] {
  register_type<float>();
  register_type<ttx::bf16>();
  return true;
}();

}  // namespace
