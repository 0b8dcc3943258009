// One decoder step of a Whisper-shaped decoder (tiny, base; real vocabulary 51865, p = 1500
// encoder rows, 447 decoded tokens already cached: the step that reads the most) for a batch of
// sequences, each with its own caches: vanilla (self KV + cross KV per layer) vs cross K-only
// vs shared encoder cache vs hybrid (the three with the self X-cache, which for Whisper's e = d
// is the size of a self K-only cache). Every attention runs kernel/decode.hpp's streaming kernels
// (decode_vanilla for vanilla, decode_weighted_keys / decode_weighted_rows for the slim forms).
// Counters: bytes and flops per step; "predicted", the paper's memory-read model of the speedup
// over vanilla (vanilla reads / this form's reads, E-cache on chip, as the paper's Whisper
// table); "bytes_ratio", the same ratio from this benchmark's own byte counts (E-cache read from
// memory by every sequence); and the cache and weight megabytes.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "roofline.hpp"
#include "ttx/kernel/encdec.hpp"

namespace {

using ttx::Index;
using ttx::RowMatrix;
using ttx::rewrite::CrossForm;
using ttx::rewrite::SelfForm;

struct WhisperShape {
  const char* name;
  Index d, heads, layers, ffn;
};
constexpr Index kVocab = 51865, kEncoder = 1500, kContext = 448;

ttx::EncDecDecoderConfig config(const WhisperShape& s) {
  ttx::EncDecDecoderConfig c;
  c.vocab = kVocab;
  c.layers = s.layers;
  const ttx::AttentionShape a{s.d, s.heads, s.heads, s.d / s.heads};
  c.block.self_attn.shape = a;
  c.block.cross_attn.shape = a;
  c.learned_positions = true;
  c.max_positions = kContext;
  return c;
}

template <class T>
RowMatrix<T> rnd(Index r, Index c, double sd, std::mt19937_64& g) {
  std::normal_distribution<double> n(0, sd);
  RowMatrix<T> m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = T(n(g));
  return m;
}

ttx::EncDecDecoderWeights<float> weights(const ttx::EncDecDecoderConfig& c, Index f) {
  std::mt19937_64 g(42);
  const Index d = c.block.self_attn.shape.d;
  const double sd = 1.0 / std::sqrt(static_cast<double>(d));
  auto attn = [&] {
    ttx::AttentionWeights<float> w;
    w.wq = rnd<float>(d, d, sd, g);
    w.wk = rnd<float>(d, d, sd, g);
    w.wv = rnd<float>(d, d, sd, g);
    w.wo = rnd<float>(d, d, sd, g);
    w.bq = rnd<float>(1, d, 0.02, g);
    w.bv = rnd<float>(1, d, 0.02, g);
    w.bo = rnd<float>(1, d, 0.02, g);
    return w;
  };
  auto norm = [&] {
    return ttx::NormWeights<float>{ttx::RowVector<float>::Ones(d), ttx::RowVector<float>::Zero(d)};
  };
  ttx::EncDecDecoderWeights<float> w;
  w.embedding = rnd<float>(c.vocab, d, 1.0, g);
  w.positions = rnd<float>(c.max_positions, d, 0.1, g);
  for (Index l = 0; l < c.layers; ++l) {
    ttx::WhisperBlockWeights<float> b;
    b.norm_self = norm();
    b.norm_cross = norm();
    b.norm_ffn = norm();
    b.self_attn = attn();
    b.cross_attn = attn();
    b.ffn.w_in = rnd<float>(d, f, sd, g);
    b.ffn.b_in = rnd<float>(1, f, 0.02, g);
    b.ffn.w_out = rnd<float>(f, d, 1.0 / std::sqrt(static_cast<double>(f)), g);
    b.ffn.b_out = rnd<float>(1, d, 0.02, g);
    w.blocks.push_back(std::move(b));
  }
  w.final_norm = norm();
  w.lm_head = w.embedding.transpose();  // Whisper ties the LM head to the embedding
  return w;
}

// Fills a cache's rows with a repeating random pattern (fast; the values only need to be sane).
template <class T>
void fill(ttx::RowCache<T>& c, Index rows, const std::vector<float>& pattern) {
  auto m = c.extend(rows);
  const size_t n = pattern.size();
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = T(pattern[static_cast<size_t>(i) % n]);
}

// Bytes of every runtime weight a step reads (the embedding and position tables: one row).
template <class A>
double weight_bytes(const ttx::rewrite::EncDecDecoderPlan<A>& p) {
  double n = static_cast<double>(p.lm_head.size());
  for (const auto& L : p.layers) {
    auto add_attn = [&](const ttx::AttentionWeights<A>& w) {
      n += static_cast<double>(w.wq.size() + w.wk.size() + w.wv.size() + w.wo.size());
    };
    auto add_inputs = [&](const ttx::rewrite::InputsAttention<A>& w) {
      n += static_cast<double>(w.wq.size() + w.wk.size() + w.wv.size() + w.wo.size());
    };
    if (p.forms.self == SelfForm::kv)
      add_attn(L.self_kv);
    else
      add_inputs(L.self_inputs);
    switch (p.forms.cross) {
      case CrossForm::kv:  // K and V come from the cache: W_Q and W_O only
        n += static_cast<double>(L.cross_kv.wq.size() + L.cross_kv.wo.size());
        break;
      case CrossForm::keys:
        n += static_cast<double>(L.cross_keys.wq.size() + L.cross_keys.wkv.size() +
                                 L.cross_keys.wo.size());
        break;
      case CrossForm::shared_encoder:
        add_inputs(L.cross_inputs);
        break;
      case CrossForm::hybrid:
        if (L.cross_inputs.wq.size())
          add_inputs(L.cross_inputs);
        else
          n += static_cast<double>(L.cross_keys.wq.size() + L.cross_keys.wkv.size() +
                                   L.cross_keys.wo.size());
        break;
    }
    n += static_cast<double>(L.ffn.w_in.size() + L.ffn.w_out.size());
  }
  return n * sizeof(A);
}

// The paper's memory-read model (activations and parameters read per token, batch B):
// baseline = cross KV + self KV + params/B; K-only = half the caches + (params + d^2 L)/B;
// shared E = half the self cache + (params + 2 d^2 L)/B (E assumed on chip); hybrid as shared E
// minus one d^2 (layer 0 reads W_KV instead of W_K and W_V).
double predicted_speedup(const WhisperShape& s, CrossForm f, double B) {
  const double d = static_cast<double>(s.d), L = static_cast<double>(s.layers);
  const double params = d * kVocab + L * (6 * d * d + 2 * d * static_cast<double>(s.ffn));
  const double cross = 2.0 * kEncoder * d * L, self = 2.0 * kContext * d * L;
  const double base = cross + self + params / B;
  switch (f) {
    case CrossForm::kv:
      return 1.0;
    case CrossForm::keys:
      return base / ((cross + self) / 2 + (params + d * d * L) / B);
    case CrossForm::shared_encoder:
      return base / (self / 2 + (params + 2 * d * d * L) / B);
    case CrossForm::hybrid:
      return base / (self / 2 + (params + 2 * d * d * L - d * d) / B);
  }
  return 0;
}

// This benchmark's bytes per step for vanilla (weight_bytes + the caches' bytes() of
// whisper_step with CrossForm::kv), in closed form: W_Q,K,V,O self + W_Q,O cross + FFN per layer
// and the LM head, read once per batch; per sequence a self KV (448) and a cross KV (1500) cache.
double vanilla_bytes(const WhisperShape& s, double B) {
  const double d = static_cast<double>(s.d), L = static_cast<double>(s.layers);
  const double params = d * kVocab + L * (6 * d * d + 2 * d * static_cast<double>(s.ffn));
  return sizeof(float) * (params + B * L * 2 * d * (kContext + kEncoder));
}

void whisper_step(benchmark::State& state, WhisperShape s, CrossForm cross, int batch) {
  const auto cfg = config(s);
  const ttx::rewrite::EncDecForms forms{cross == CrossForm::kv ? SelfForm::kv : SelfForm::inputs,
                                        cross};
  const ttx::kernel::EncDecDecoder<float> dec(
      ttx::rewrite::plan_encdec_decoder<float>(cfg, weights(cfg, s.ffn), forms));
  std::vector<float> pattern(4099);
  std::mt19937_64 g(7);
  std::normal_distribution<float> n01(0.f, 1.f);
  for (auto& v : pattern) v = n01(g);
  const Index cached = kContext - 1;
  std::vector<std::unique_ptr<ttx::kernel::EncDecState<float>>> states;
  std::vector<ttx::kernel::EncDecState<float>*> ptrs;
  double cache_read = 0;
  for (int b = 0; b < batch; ++b) {
    auto st = std::make_unique<ttx::kernel::EncDecState<float>>(dec.make_state(kEncoder, kContext));
    for (auto& c : st->self_kv) {
      fill(c.keys(), cached, pattern);
      fill(c.values(), cached, pattern);
    }
    for (auto& c : st->self_rows) fill(c, cached, pattern);
    for (auto& c : st->cross_kv) {
      fill(c.keys(), kEncoder, pattern);
      fill(c.values(), kEncoder, pattern);
    }
    for (auto& c : st->cross_keys) fill(c.keys(), kEncoder, pattern);
    for (auto& c : st->encoder) fill(c.rows(), kEncoder, pattern);
    for (auto& c : st->basis) fill(c.keys(), kEncoder, pattern);
    st->position = cached;
    st->encoded = true;
    // Read per step: every row of every cache (the self caches hold 447 + the new token = their
    // capacity, the cross caches p rows), i.e. exactly the caches' bytes().
    cache_read += static_cast<double>(st->bytes());
    ptrs.push_back(st.get());
    states.push_back(std::move(st));
  }
  const std::vector<int> tokens(static_cast<size_t>(batch), 7);
  const double wbytes = weight_bytes(dec.plan());
  // Flops: weights (2 per weight per sequence) + attention over the caches.
  const double d = static_cast<double>(s.d), h = static_cast<double>(s.heads),
               L = static_cast<double>(s.layers), nself = kContext, p = kEncoder;
  double attn = 0;
  const double self_f = forms.self == SelfForm::kv ? 4 * nself * d : 4 * h * nself * d;
  switch (cross) {
    case CrossForm::kv:
      attn = 4 * p * d;
      break;
    case CrossForm::keys:
      attn = 2 * p * d + 2 * h * p * d;
      break;
    case CrossForm::shared_encoder:
      attn = 4 * h * p * d;
      break;
    case CrossForm::hybrid:
      attn = 4 * h * p * d;
      break;
  }
  const double flops = batch * (2 * wbytes / sizeof(float) + L * (self_f + attn));
  auto roll_back = [&] {  // the step appends one token: roll it back outside the timing
    for (auto* st : ptrs) {
      st->position = cached;
      for (auto& c : st->self_kv) {
        c.keys().truncate(cached);
        c.values().truncate(cached);
      }
      for (auto& c : st->self_rows) c.truncate(cached);
    }
  };
  // One untimed step first: a decode loop's steady state has its scratch grown and its threads
  // up (batch 64 runs only a few timed iterations, the first of which measured 1.5x slower).
  roll_back();
  benchmark::DoNotOptimize(dec.step(ptrs, tokens).data());
  for (auto _ : state) {
    state.PauseTiming();
    roll_back();
    state.ResumeTiming();
    auto logits = dec.step(ptrs, tokens);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  ttx::bench::report(state, wbytes + cache_read, flops, ttx::bench::max_threads());
  state.counters["predicted"] = predicted_speedup(s, cross, batch);
  state.counters["bytes_ratio"] = vanilla_bytes(s, batch) / (wbytes + cache_read);
  state.counters["cache_MB"] = cache_read / 1e6;
  state.counters["weight_MB"] = wbytes / 1e6;
}

const char* form_label(CrossForm f) {
  switch (f) {
    case CrossForm::kv:
      return "vanilla";
    case CrossForm::keys:
      return "cross_k";
    case CrossForm::shared_encoder:
      return "shared_e";
    case CrossForm::hybrid:
      return "hybrid";
  }
  return "?";
}

const bool registered = [] {
  for (const WhisperShape s :
       {WhisperShape{"tiny", 384, 6, 4, 1536}, WhisperShape{"base", 512, 8, 6, 2048}})
    for (int batch : {1, 8, 64})
      for (CrossForm f :
           {CrossForm::kv, CrossForm::keys, CrossForm::shared_encoder, CrossForm::hybrid}) {
        const std::string name = std::string("whisper_step/") + form_label(f) + "/" + s.name +
                                 "/batch:" + std::to_string(batch);
        benchmark::RegisterBenchmark(name.c_str(), whisper_step, s, f, batch)
            ->UseRealTime()
            ->MinTime(1.0)
            ->Unit(benchmark::kMillisecond);
      }
  return true;
}();

}  // namespace
