// ttx_demo: the same model three ways, token for token.
//
//   1. vanilla                    RMSNorm with gains, Q/K/V projections, KV cache, SwiGLU FFN
//   2. FlashNorm + slim attention gains folded into the next layers (1/RMS deferred), K-only cache
//                                 with V recomputed from K (W_KV = W_K^-1 W_V)
//   3. 2 + first-layer table      layer 1's residual, Q and K looked up per token id
//
// With no arguments it builds a small Llama-like MHA model from a fixed seed; with a directory
// it loads a HuggingFace checkpoint (config.json + *.safetensors). It prints whether the three
// generate identical greedy tokens, how far their logits are from each other and from a double
// precision reference, their context memory and their speed.
//   ttx_demo [--layers 4 --d 512 --heads 8 --ffn 1376 --vocab 4096 --context 1024 --steps 64
//             --cache f32|bf16|f16 --threads 0 --no-reference] [CHECKPOINT_DIR --prompt 1,2,3]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <ttx/io/hf_checkpoint.hpp>
#include <ttx/ttx.hpp>
#include <vector>

#include "demo_runners.hpp"

using namespace ttx;

namespace {

struct Options {
  Index layers = 4, d = 512, heads = 8, ffn = 1376, vocab = 4096, context = 1024, steps = 64;
  std::string cache = "f32", checkpoint;
  std::vector<int> prompt{1, 17, 42, 7, 311, 99, 5, 2024};
  int threads = 0;
  bool reference = true;
  bool prompt_given = false;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "ttx_demo: %s\nusage: ttx_demo [--layers N --d N --heads N --ffn N --vocab N "
               "--context N --steps N --cache f32|bf16|f16 --threads N --no-reference] "
               "[CHECKPOINT_DIR] [--prompt 1,2,3]\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  auto number = [&](int& i) {
    if (i + 1 >= argc) usage((std::string(argv[i]) + " needs a value").c_str());
    char* end = nullptr;
    const long v = std::strtol(argv[++i], &end, 10);
    if (*end != '\0' || v < 0) usage((std::string("bad number '") + argv[i] + "'").c_str());
    return static_cast<Index>(v);
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--layers")
      o.layers = number(i);
    else if (a == "--d")
      o.d = number(i);
    else if (a == "--heads")
      o.heads = number(i);
    else if (a == "--ffn")
      o.ffn = number(i);
    else if (a == "--vocab")
      o.vocab = number(i);
    else if (a == "--context")
      o.context = number(i);
    else if (a == "--steps")
      o.steps = number(i);
    else if (a == "--threads")
      o.threads = static_cast<int>(number(i));
    else if (a == "--no-reference")
      o.reference = false;
    else if (a == "--cache") {
      if (i + 1 >= argc) usage("--cache needs f32, bf16 or f16");
      o.cache = argv[++i];
      if (o.cache != "f32" && o.cache != "bf16" && o.cache != "f16")
        usage(("--cache expected f32, bf16 or f16, got " + o.cache).c_str());
    } else if (a == "--prompt") {
      if (i + 1 >= argc) usage("--prompt needs comma-separated token ids");
      o.prompt.clear();
      o.prompt_given = true;
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) o.prompt.push_back(std::atoi(t.c_str()));
    } else if (a == "--help" || a == "-h")
      usage("help");
    else if (!a.empty() && a[0] != '-')
      o.checkpoint = a;
    else
      usage(("unknown option " + a).c_str());
  }
  if (o.prompt.empty()) usage("--prompt expected at least one token id");
  if (o.steps == 0) usage("--steps expected > 0");
  return o;
}

/// The embedded default: a small Llama-like decoder (RoPE, RMSNorm, SwiGLU, MHA) with weights
/// from a fixed seed, scaled like a trained model's (projections ~ N(0, 1/in), gains ~ 1 ± 0.1).
demo::Model embedded_model(const Options& o) {
  if (o.heads == 0 || o.d % o.heads != 0) usage("--d must be a multiple of --heads");
  if ((o.d / o.heads) % 2 != 0) usage("--d / --heads (the head width) must be even for RoPE");
  demo::Model m;
  m.name = "embedded Llama-like MHA model (seed 2024)";
  ModelConfig& c = m.config;
  c.vocab = o.vocab;
  c.layers = o.layers;
  c.block.kind = BlockKind::serial;
  c.block.attn.shape = {o.d, o.heads, o.heads, o.d / o.heads};
  c.block.attn.rope = RopeSpec::full(o.d / o.heads, RopeLayout::half_split);
  c.block.norm = NormSpec::rms(1e-6);
  c.block.ffn = FfnSpec::swiglu();
  c.final_norm_spec = NormSpec::rms(1e-6);
  std::mt19937_64 rng(2024);
  auto mat = [&](Index r, Index cols, double sd) {
    std::normal_distribution<float> n(0.f, static_cast<float>(sd));
    RowMatrix<float> x(r, cols);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = n(rng);
    return x;
  };
  auto gain = [&] { return RowVector<float>(mat(1, o.d, 0.1).array() + 1.f); };
  const double s = 1.0 / std::sqrt(static_cast<double>(o.d));
  ModelWeights<float>& w = m.weights;
  w.embedding = mat(o.vocab, o.d, 1.0);
  for (Index l = 0; l < o.layers; ++l) {
    BlockWeights<float> b;
    b.norm1.gain = gain();
    b.norm2.gain = gain();
    b.attn.wq = mat(o.d, o.d, s);
    b.attn.wk = mat(o.d, o.d, s);
    b.attn.wv = mat(o.d, o.d, s);
    b.attn.wo = mat(o.d, o.d, s);
    b.ffn.w_in = mat(o.d, o.ffn, s);
    b.ffn.w_up = mat(o.d, o.ffn, s);
    b.ffn.w_out = mat(o.ffn, o.d, 1.0 / std::sqrt(static_cast<double>(o.ffn)));
    w.blocks.push_back(std::move(b));
  }
  w.final_norm.gain = gain();
  w.lm_head = mat(o.d, o.vocab, s);
  return m;
}

demo::Model checkpoint_model(const Options& o) {
  auto ck = io::load_hf_checkpoint(o.checkpoint);
  demo::Model m;
  m.name = "HuggingFace checkpoint " + o.checkpoint;
  m.config = ck.config;
  m.weights = std::move(ck.weights);
  m.tied_head = ck.hf.tie_word_embeddings;
  return m;
}

template <class T>
int run(const Options& o, const demo::Model& model) {
  const AttentionShape& s = model.config.block.attn.shape;
  std::printf("ttx demo: %s\n", model.name.c_str());
  std::printf(
      "  d=%ld heads=%ld kv_heads=%ld head_dim=%ld layers=%ld vocab=%ld; cache %s, "
      "capacity %ld tokens; prompt %zu tokens, %ld generated\n\n",
      long(s.d), long(s.heads), long(s.kv_heads), long(s.head_dim), long(model.config.layers),
      long(model.config.vocab), type_name<T>(), long(o.context), o.prompt.size(), long(o.steps));
  const Index needed = static_cast<Index>(o.prompt.size()) + o.steps;
  if (needed > o.context)
    usage(("--context " + std::to_string(o.context) +
           " is smaller than prompt + steps = " + std::to_string(needed))
              .c_str());

  std::vector<demo::Result> results;
  demo::VanillaRunner<T> vanilla(model, o.context, o.threads);
  results.push_back(demo::generate(vanilla, o.prompt, o.steps));

  demo::SlimRunner<T> slim(model, o.context, o.threads, /*first_layer_table=*/false);
  for (const auto& note : slim.notes()) std::printf("  note: %s\n", note.c_str());
  results.push_back(demo::generate(slim, o.prompt, o.steps));

  demo::SlimRunner<T> table(model, o.context, o.threads, /*first_layer_table=*/true);
  for (const auto& note : table.notes())
    if (note.rfind("first-layer", 0) == 0) std::printf("  note: %s\n", note.c_str());
  results.push_back(demo::generate(table, o.prompt, o.steps));

  demo::Result ref;
  if (o.reference) ref = demo::reference_generate(model, o.prompt, o.steps);
  demo::print(results, o.reference ? &ref : nullptr, table.table_bytes());

  if (o.checkpoint.empty())
    std::printf(
        "\nrerun with other sizes: ttx_demo --layers %ld --d %ld --heads %ld --ffn %ld "
        "--vocab %ld --context %ld --steps %ld --cache %s\n",
        long(o.layers), long(o.d), long(o.heads), long(o.ffn), long(o.vocab), long(o.context),
        long(o.steps), o.cache == "f32" ? "bf16" : "f32");
  else
    std::printf("\nrerun: ttx_demo %s --prompt 1,2,3 --steps %ld --context %ld --cache %s\n",
                o.checkpoint.c_str(), long(o.steps), long(o.context),
                o.cache == "f32" ? "bf16" : "f32");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  try {
    const demo::Model model = o.checkpoint.empty() ? embedded_model(o) : checkpoint_model(o);
    if (!o.prompt_given)  // the default prompt, folded into this vocabulary
      for (int& t : o.prompt) t %= static_cast<int>(model.config.vocab);
    for (int t : o.prompt)
      if (t < 0 || t >= model.config.vocab)
        usage(("--prompt token " + std::to_string(t) + " is outside the vocabulary [0, " +
               std::to_string(model.config.vocab) + ")")
                  .c_str());
    if (o.cache == "bf16") return run<bf16>(o, model);
    if (o.cache == "f16") return run<f16>(o, model);
    return run<float>(o, model);
  } catch (const ttx::Error& e) {
    std::fprintf(stderr, "ttx_demo: %s\n", e.what());
    return 1;
  }
}
