// cache_sizes: context-memory bytes per token of every cache form, for real model shapes.
//
// The numbers come from ttx's own cache objects (bytes_per_token() of a KVCache, KCache, VCache,
// XCache or ECache built with capacity 1), never from a hand formula, and whether a form applies
// comes from rewrite::cached_width (a one-row cache only saves memory when it is narrower than the
// 2e values of K+V) and from RoPE (only the keys form survives the position-dependent rotation).
// Storage is bf16 (2 bytes); figures are summed over all layers.
//   cache_sizes          a table, with "n/a" and the reason for inadmissible forms
//   cache_sizes --csv    model,form,bytes_per_token (admissible forms only) for tools/plot_bench
#include <cstdio>
#include <cstring>
#include <string>
#include <ttx/cache/e_cache.hpp>
#include <ttx/cache/k_cache.hpp>
#include <ttx/cache/kv_cache.hpp>
#include <ttx/cache/v_cache.hpp>
#include <ttx/cache/x_cache.hpp>
#include <ttx/rewrite/slim.hpp>
#include <vector>

using namespace ttx;
using Store = bf16;

struct Family {
  const char* name;
  AttentionShape shape;  // d, heads, kv_heads, head_dim
  Index layers;          // decoder layers (each holds its own self-attention cache)
  bool rope;
  bool encoder_decoder;  // cross-attention over an encoder output of p rows
};

struct Row {
  std::string form;
  long long bytes = -1;  // -1: inadmissible
  std::string why;
};

// Self-attention cache forms of one decoder layer stack, per generated token.
std::vector<Row> self_forms(const Family& f) {
  using rewrite::CacheForm;
  const AttentionShape& s = f.shape;
  const long long L = f.layers;
  const Index e = s.kv_width();
  std::vector<Row> rows;
  rows.push_back({"vanilla K+V", L * (long long)KVCache<Store>(s, 1).bytes_per_token(), ""});
  // One row per token is a saving only when its width is below 2e. rewrite::cached_width is the
  // library's rule for that width (e when e >= d, the completed basis d when d/2 < e < d, d for
  // the inputs); rewrite::slim_attention refuses keys/values with UnsupportedError when e <= d/2.
  auto one_row = [&](CacheForm form, const char* label, std::size_t bytes_per_token) {
    const Index w = rewrite::cached_width(form, s);
    if (form != CacheForm::inputs && 2 * e <= s.d)
      return Row{label, -1,
                 "e = " + std::to_string(e) + " <= d/2 = " + std::to_string(s.d / 2) +
                     ": no one-row cache is smaller than K+V"};
    if (f.rope && form != CacheForm::keys)
      return Row{label, -1, "RoPE rotates keys per position; only the keys form is exact"};
    if (w >= 2 * e) return Row{label, -1, "width " + std::to_string(w) + " >= 2e, saves nothing"};
    return Row{label, L * (long long)bytes_per_token, ""};
  };
  const Index wk = rewrite::cached_width(CacheForm::keys, s);
  const Index wv = rewrite::cached_width(CacheForm::values, s);
  rows.push_back(one_row(CacheForm::keys, "keys (KCache)",
                         KCache<Store>(s, 1, KeyStorage::raw, wk).bytes_per_token()));
  rows.push_back(
      one_row(CacheForm::values, "values (VCache)", VCache<Store>(s, 1, wv).bytes_per_token()));
  rows.push_back(
      one_row(CacheForm::inputs, "inputs (XCache)", XCache<Store>(s, 1).bytes_per_token()));
  return rows;
}

// Cross-attention caches, per encoder position: a K+V pair in every layer, or one shared E row.
std::vector<Row> cross_forms(const Family& f) {
  const long long L = f.layers;
  return {{"cross vanilla K+V", L * (long long)KVCache<Store>(f.shape, 1).bytes_per_token(), ""},
          {"cross shared encoder (ECache)",
           (long long)ECache<Store>(f.shape.d, 1).bytes_per_token(), ""}};
}

int main(int argc, char** argv) {
  const bool csv = argc > 1 && std::strcmp(argv[1], "--csv") == 0;
  if (argc > 1 && !csv) {
    std::fprintf(stderr, "usage: cache_sizes [--csv]\n");
    return 2;
  }
  // Shapes from the models' published configs (hidden, heads, kv heads, head dim; layers).
  const std::vector<Family> families = {
      {"Llama-2-7B", {4096, 32, 32, 128}, 32, true, false},
      {"SmolLM2-1.7B", {2048, 32, 32, 64}, 24, true, false},
      {"Phi-3-mini", {3072, 32, 32, 96}, 32, true, false},
      {"Mistral-7B", {4096, 32, 8, 128}, 32, true, false},
      {"CodeGemma-7B", {3072, 16, 16, 256}, 28, true, false},
      {"Whisper-tiny", {384, 6, 6, 64}, 4, false, true},
      {"Whisper-base", {512, 8, 8, 64}, 6, false, true},
      {"Whisper-small", {768, 12, 12, 64}, 12, false, true},
      {"Whisper-medium", {1024, 16, 16, 64}, 24, false, true},
      {"Whisper-large", {1280, 20, 20, 64}, 32, false, true},
      {"T5-11B", {1024, 128, 128, 128}, 24, false, true},
  };
  try {
    if (csv) std::printf("model,form,bytes_per_token\n");
    for (const Family& f : families) {
      std::vector<Row> rows = self_forms(f);
      if (f.encoder_decoder)
        for (Row& r : cross_forms(f)) rows.push_back(r);
      const long long vanilla = rows.front().bytes;
      if (!csv)
        std::printf("%s (d=%ld, heads=%ld, kv_heads=%ld, head_dim=%ld, %ld layers%s)\n", f.name,
                    long(f.shape.d), long(f.shape.heads), long(f.shape.kv_heads),
                    long(f.shape.head_dim), long(f.layers), f.rope ? ", RoPE" : "");
      for (const Row& r : rows) {
        if (csv) {
          if (r.bytes >= 0) std::printf("%s,%s,%lld\n", f.name, r.form.c_str(), r.bytes);
        } else if (r.bytes < 0) {
          std::printf("  %-30s %12s  (%s)\n", r.form.c_str(), "n/a", r.why.c_str());
        } else {
          const bool cross = r.form.rfind("cross", 0) == 0;
          const long long base = cross ? rows[rows.size() - 2].bytes : vanilla;
          std::printf("  %-30s %12lld B/%s  %.3gx of vanilla\n", r.form.c_str(), r.bytes,
                      cross ? "enc row" : "token", double(r.bytes) / double(base));
        }
      }
    }
  } catch (const ttx::Error& e) {
    std::fprintf(stderr, "cache_sizes: %s\n", e.what());
    return 1;
  }
  return 0;
}
