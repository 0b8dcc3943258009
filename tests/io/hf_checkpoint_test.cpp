// ttx-test-labels: io
// HuggingFace checkpoint loading: the three committed tiny checkpoints (Llama F32 tied with
// llama3 RoPE scaling, Mistral BF16 sharded with head_dim != hidden/heads, Qwen2 F16 with q/k/v
// biases and tied embeddings) load, map to the right ttx config, and reproduce the logits and
// greedy tokens of the PyTorch implementation in tools/gen_checkpoints.py; every error path
// (config, index, files, tensors) raises the right ttx error naming what is wrong. Damaged
// checkpoints are made at run time in a temp dir from the committed ones.
#include "ttx/io/hf_checkpoint.hpp"

#include <gtest/gtest.h>

#include <filesystem>

#include "io/io_test_util.hpp"
#include "support/fixture.hpp"
#include "support/random.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/model.hpp"

using namespace ttx;
using test::throws_with;
namespace fs = std::filesystem;

namespace {

std::string checkpoint(const std::string& name) {
  return std::string(TTX_TEST_DATA_DIR) + "/checkpoints/" + name;
}

std::vector<int> as_tokens(const RowVector<double>& v) {
  std::vector<int> t;
  for (Index i = 0; i < v.size(); ++i) t.push_back(static_cast<int>(v(i)));
  return t;
}

// Both sides evaluate the same function of identical inputs in float64: the stored F32/F16/BF16
// values widen exactly to float (loader) and then to double (test), as PyTorch widened them to
// float64. What differs is only the order of summation in the products and the libm/ATen
// exp/cos/sin/rsqrt implementations (<= 1-2 ulp each). Measured: about 1e-15 (~9 double ulps) on
// all three checkpoints; the bound 1e-13 (~450 u) leaves margin for another BLAS order and still
// fails on any mapping mistake (a wrong transpose, RoPE layout or frequency gives 1e-3..1).
constexpr double kGoldenBound = 1e-13;
const char* kGoldenWhy =
    "same rounded weights, both in float64; only summation order and libm differ";

struct Case {
  const char* dir;
  const char* arch;
  const char* dtype;
  size_t files;
  Index head_dim;
  bool tied, qkv_bias;
};

class Golden : public ::testing::TestWithParam<Case> {};

TEST_P(Golden, LoadsAndMatchesPyTorch) {
  const Case c = GetParam();
  const io::HfCheckpoint ck = io::load_hf_checkpoint(checkpoint(c.dir));
  EXPECT_EQ(ck.hf.architecture, c.arch);
  EXPECT_EQ(ck.stored_dtypes, (std::set<std::string>{c.dtype}));
  EXPECT_EQ(ck.files.size(), c.files);
  EXPECT_TRUE(ck.unused_tensors.empty());
  EXPECT_EQ(ck.hf.tie_word_embeddings, c.tied);

  const ModelConfig& m = ck.config;
  EXPECT_EQ(m.vocab, 128);
  EXPECT_EQ(m.layers, 2);
  EXPECT_EQ(m.block.kind, BlockKind::serial);
  EXPECT_EQ(m.block.attn.shape, (AttentionShape{64, 4, 2, c.head_dim}));
  EXPECT_EQ(m.block.attn.rope.rotary_dim, c.head_dim);
  EXPECT_EQ(m.block.attn.rope.layout, RopeLayout::half_split);
  EXPECT_EQ(m.block.norm.kind, NormKind::rms);
  EXPECT_EQ(m.block.norm.gain, GainConvention::plain);
  EXPECT_EQ(m.block.ffn.kind, FfnKind::glu);
  EXPECT_EQ(m.block.ffn.act, Activation::silu);
  EXPECT_TRUE(m.final_norm);

  const test::Fixture fx(std::string("checkpoints/") + c.dir + "/expected");
  const auto freqs = m.block.attn.rope.frequencies();
  const RowVector<double> got_freqs =
      Eigen::Map<const RowVector<double>>(freqs.data(), static_cast<Index>(freqs.size()));
  EXPECT_TRUE(test::close_to(got_freqs, fx.vector("inv_freq"), 1e-15,
                             "inv_freq from config, both in double", "f64"));

  const ModelWeights<float>& w = ck.weights;
  const auto& b0 = w.blocks[0];
  EXPECT_EQ(b0.attn.bq.size(), c.qkv_bias ? 4 * c.head_dim : 0);
  EXPECT_EQ(b0.attn.bk.size(), c.qkv_bias ? 2 * c.head_dim : 0);
  EXPECT_EQ(b0.attn.bo.size(), 0);
  if (c.tied) {
    EXPECT_TRUE(test::bitwise_equal(w.lm_head, RowMatrix<float>(w.embedding.transpose())));
  }

  reference::DecoderModel<double> model(m, test::cast<double>(w));
  const RowMatrix<double> logits = model.forward(as_tokens(fx.vector("prompt")));
  EXPECT_TRUE(test::close_to(logits, fx.matrix("prefill_logits"), kGoldenBound, kGoldenWhy, "f64"))
      << c.dir;

  model.reset();
  std::vector<RowVector<double>> step_logits;
  const RowVector<double> expected_tokens = fx.vector("tokens");
  const auto tokens =
      model.generate(as_tokens(fx.vector("prompt")), expected_tokens.size(), &step_logits);
  EXPECT_EQ(tokens, as_tokens(expected_tokens)) << c.dir;
  const RowMatrix<double> expected_steps = fx.matrix("step_logits");
  ASSERT_EQ(static_cast<Index>(step_logits.size()), expected_steps.rows());
  for (Index s = 0; s < expected_steps.rows(); ++s)
    EXPECT_TRUE(test::close_to(step_logits[static_cast<size_t>(s)], expected_steps.row(s),
                               kGoldenBound, kGoldenWhy, "f64"))
        << c.dir << " step " << s;
}

INSTANTIATE_TEST_SUITE_P(
    Io, Golden,
    ::testing::Values(Case{"llama_f32_tied", "LlamaForCausalLM", "F32", 1, 16, true, false},
                      Case{"mistral_bf16_sharded", "MistralForCausalLM", "BF16", 2, 24, false,
                           false},
                      Case{"qwen2_f16_tied", "Qwen2ForCausalLM", "F16", 1, 16, true, true}),
    [](const auto& info) { return std::string(info.param.dir); });

// The golden test can fail: ignoring the llama3 rope_scaling moves the logits far beyond the bound.
TEST(HfCheckpoint, Llama3ScalingMatters) {
  io::HfCheckpoint ck = io::load_hf_checkpoint(checkpoint("llama_f32_tied"));
  EXPECT_EQ(ck.hf.rope_scaling_type, "llama3");
  ck.config.block.attn.rope.inv_freq.clear();  // plain theta^(-2j/d)
  const test::Fixture fx("checkpoints/llama_f32_tied/expected");
  reference::DecoderModel<double> model(ck.config, test::cast<double>(ck.weights));
  const RowMatrix<double> logits = model.forward(as_tokens(fx.vector("prompt")));
  const double err = test::relative_error(logits, fx.matrix("prefill_logits")).rel;
  EXPECT_GT(err, 1e3 * kGoldenBound) << "unscaled RoPE should not match the llama3 golden";
}

TEST(HfCheckpoint, ConfigDefaultsAndExtras) {
  const io::HfCheckpoint ck = io::load_hf_checkpoint(checkpoint("mistral_bf16_sharded") +
                                                     "/config.json");  // a config path works too
  EXPECT_EQ(ck.hf.rope_theta, 10000.0);                                // absent: HF default
  EXPECT_EQ(ck.hf.rms_norm_eps, 1e-6);                                 // absent: HF default
  EXPECT_EQ(ck.config.block.norm.eps, 1e-6);
  EXPECT_EQ(ck.hf.sliding_window, 4096);
  EXPECT_EQ(ck.hf.torch_dtype, "bfloat16");
  EXPECT_EQ(ck.hf.eos_token_ids, (std::vector<int>{2}));
  EXPECT_EQ(ck.hf.bos_token_id, 1);
  EXPECT_EQ(ck.weights.blocks[1].attn.wq.rows(), 64);  // (in x out): hidden x heads*head_dim
  EXPECT_EQ(ck.weights.blocks[1].attn.wq.cols(), 96);
  const io::HfCheckpoint q = io::load_hf_checkpoint(checkpoint("qwen2_f16_tied"));
  EXPECT_EQ(q.hf.sliding_window, 0);  // use_sliding_window false
  EXPECT_EQ(q.config.block.attn.rope.base, 1e6);
}

// transformers 5 writes RoPE settings as one "rope_parameters" object (theta inside).
TEST(HfCheckpoint, TransformersFiveRopeParameters) {
  test::TempDir tmp;
  const fs::path dir = tmp.path() / "llama";
  fs::copy(checkpoint("llama_f32_tied"), dir, fs::copy_options::recursive);
  const std::string path = (dir / "config.json").string();
  nlohmann::json j = nlohmann::json::parse(test::read_file(path));
  nlohmann::json rp = j["rope_scaling"];
  rp["rope_theta"] = j["rope_theta"];
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = rp;
  test::write_file(path, j.dump(2));
  const io::HfCheckpoint a = io::load_hf_checkpoint(dir.string());
  const io::HfCheckpoint b = io::load_hf_checkpoint(checkpoint("llama_f32_tied"));
  EXPECT_EQ(a.hf.rope_theta, 50000.0);
  EXPECT_EQ(a.hf.rope_scaling_type, "llama3");
  EXPECT_EQ(a.config.block.attn.rope.frequencies(), b.config.block.attn.rope.frequencies());
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  test::write_file(path, j.dump(2));
  EXPECT_EQ(io::load_hf_checkpoint(dir.string()).config.block.attn.rope.base, 1e6);
  j["rope_parameters"] = {{"rope_type", "dynamic"}, {"rope_theta", 1e6}, {"factor", 2.0}};
  test::write_file(path, j.dump(2));
  EXPECT_TRUE(throws_with<UnsupportedError>([&] { io::load_hf_checkpoint(dir.string()); },
                                            {"rope_parameters type \"dynamic\""}));
}

TEST(HfCheckpoint, Llama3FrequencyBands) {
  // theta 10000, head_dim 16: wavelengths 2 pi 10000^(j/8) = 6.3, 20, 63, 199, ...; with
  // original 64, low 1, high 4: j=0 high (kept), j=1,2 medium (blended), j>=3 low (divided).
  const auto f = io::llama3_inv_freq(16, 10000.0, 8.0, 1.0, 4.0, 64.0);
  ASSERT_EQ(f.size(), 8u);
  const auto base = [](int j) { return std::pow(10000.0, -j / 8.0); };
  EXPECT_EQ(f[0], base(0));
  for (int j = 3; j < 8; ++j) EXPECT_DOUBLE_EQ(f[static_cast<size_t>(j)], base(j) / 8.0);
  for (int j = 1; j <= 2; ++j) {
    EXPECT_LT(f[static_cast<size_t>(j)], base(j));
    EXPECT_GT(f[static_cast<size_t>(j)], base(j) / 8.0);
  }
}

// ---------------------------------------------------------------------------------------------
// Error paths, on damaged copies of the committed checkpoints.

std::string copy_of(const test::TempDir& tmp, const std::string& name) {
  const fs::path dst = tmp.path() / name;
  fs::copy(checkpoint(name), dst, fs::copy_options::recursive);
  return dst.string();
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  const std::string path = dir + "/config.json";
  nlohmann::json j = nlohmann::json::parse(test::read_file(path));
  edit(j);
  test::write_file(path, j.dump(2));
}

/// Rewrites a safetensors file after editing its tensor entries.
void edit_tensors(const std::string& path,
                  const std::function<void(std::vector<test::StEntry>&)>& edit) {
  std::vector<test::StEntry> e;
  {
    const io::SafetensorsFile f(path);
    e = test::st_entries(f);
  }
  edit(e);
  test::write_file(path, test::st_bytes(test::st_header(e, {{"format", "pt"}}), e));
}

TEST(HfCheckpointErrors, UnsupportedArchitecture) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "llama_f32_tied");
  edit_config(dir, [](nlohmann::json& j) { j["architectures"] = {"GPT2LMHeadModel"}; });
  EXPECT_TRUE(throws_with<UnsupportedError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"config.json", "architecture \"GPT2LMHeadModel\" is not supported",
       "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"}));
  edit_config(dir, [](nlohmann::json& j) { j.erase("architectures"); });
  EXPECT_TRUE(throws_with<UnsupportedError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"config.json", "\"architectures\"", "no such key", "LlamaForCausalLM"}));
}

TEST(HfCheckpointErrors, UnsupportedFeatures) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "llama_f32_tied");
  const std::string orig = test::read_file(dir + "/config.json");
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {[](nlohmann::json& j) {
         j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
       },
       {"rope_scaling type \"yarn\"", "supported: none, default, llama3"}},
      {[](nlohmann::json& j) {
         j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
       },
       {"rope_scaling type \"linear\""}},
      {[](nlohmann::json& j) { j["hidden_act"] = "gelu"; }, {"hidden_act \"gelu\"", "silu"}},
      {[](nlohmann::json& j) { j["mlp_bias"] = true; }, {"mlp_bias=true"}},
      {[](nlohmann::json& j) { j["partial_rotary_factor"] = 0.5; }, {"partial_rotary_factor 0.5"}},
  };
  for (const auto& c : cases) {
    test::write_file(dir + "/config.json", orig);
    edit_config(dir, c.edit);
    try {
      io::load_hf_checkpoint(dir);
      ADD_FAILURE() << "no exception for " << c.parts[0];
    } catch (const UnsupportedError& e) {
      for (const auto& p : c.parts)
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
            << "lacks " << p << ": " << e.what();
    }
  }
}

TEST(HfCheckpointErrors, BadConfigValues) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "qwen2_f16_tied");
  const std::string orig = test::read_file(dir + "/config.json");
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {[](nlohmann::json& j) { j.erase("hidden_size"); },
       {"config.json", "missing required key \"hidden_size\"", "Qwen2ForCausalLM"}},
      {[](nlohmann::json& j) { j["vocab_size"] = nullptr; },
       {"missing required key \"vocab_size\""}},
      {[](nlohmann::json& j) { j["num_hidden_layers"] = "two"; },
       {"key \"num_hidden_layers\" expected a positive integer, got \"two\""}},
      {[](nlohmann::json& j) { j["num_key_value_heads"] = 3; },
       {"num_key_value_heads expected a divisor of num_attention_heads=4, got 3"}},
      {[](nlohmann::json& j) { j["rms_norm_eps"] = "small"; },
       {"key \"rms_norm_eps\" expected a number"}},
      {[](nlohmann::json& j) {
         j["architectures"] = {"LlamaForCausalLM"};
         j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
       },
       {"rope_scaling", "missing required key \"low_freq_factor\""}},
  };
  for (const auto& c : cases) {
    test::write_file(dir + "/config.json", orig);
    edit_config(dir, c.edit);
    try {
      io::load_hf_checkpoint(dir);
      ADD_FAILURE() << "no exception for " << c.parts[0];
    } catch (const FormatError& e) {
      for (const auto& p : c.parts)
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
            << "lacks " << p << ": " << e.what();
    }
  }
  test::write_file(dir + "/config.json", "{\"architectures\": [");
  EXPECT_TRUE(throws_with<FormatError>([&] { io::load_hf_checkpoint(dir); },
                                       {"config.json", "expected a JSON object"}));
  fs::remove(dir + "/config.json");
  EXPECT_TRUE(throws_with<FormatError>([&] { io::load_hf_checkpoint(dir); },
                                       {"cannot open", "config.json"}));
}

TEST(HfCheckpointErrors, MissingTensor) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "qwen2_f16_tied");
  edit_tensors(dir + "/model.safetensors", [](std::vector<test::StEntry>& e) {
    e.erase(std::remove_if(e.begin(), e.end(),
                           [](const test::StEntry& x) {
                             return x.name == "model.layers.1.self_attn.k_proj.bias";
                           }),
            e.end());
  });
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"missing tensor 'model.layers.1.self_attn.k_proj.bias'", "model.safetensors"}));
}

TEST(HfCheckpointErrors, MisShapedTensor) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "qwen2_f16_tied");
  edit_tensors(dir + "/model.safetensors", [](std::vector<test::StEntry>& e) {
    for (auto& x : e)
      if (x.name == "model.layers.0.self_attn.k_proj.weight") x.shape = {64, 32};  // transposed
  });
  EXPECT_TRUE(throws_with<ShapeError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"model.safetensors", "tensor 'model.layers.0.self_attn.k_proj.weight'",
       "expected shape [32, 64] (out x in), got [64, 32]"}));
}

TEST(HfCheckpointErrors, UnsupportedDtype) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "llama_f32_tied");
  edit_tensors(dir + "/model.safetensors", [](std::vector<test::StEntry>& e) {
    for (auto& x : e)
      if (x.name == "model.norm.weight") {
        x.dtype = "F64";
        x.bytes += x.bytes;  // 64 x 8 bytes
      }
  });
  EXPECT_TRUE(throws_with<UnsupportedError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"model.safetensors", "tensor 'model.norm.weight'", "dtype F64", "F32, F16, BF16"}));
}

TEST(HfCheckpointErrors, TruncatedFile) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "qwen2_f16_tied");
  const std::string bytes = test::read_file(dir + "/model.safetensors");
  test::write_file(dir + "/model.safetensors", bytes.substr(0, bytes.size() - 1000));
  EXPECT_TRUE(throws_with<FormatError>([&] { io::load_hf_checkpoint(dir); },
                                       {"model.safetensors", "truncated"}));
}

TEST(HfCheckpointErrors, BadHeaderLengthInShard) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "mistral_bf16_sharded");
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  std::string bytes = test::read_file(shard);
  bytes[3] = '\x10';  // header length + 2^28
  test::write_file(shard, bytes);
  EXPECT_TRUE(
      throws_with<FormatError>([&] { io::load_hf_checkpoint(dir); },
                               {"model-00002-of-00002.safetensors", "header length field says"}));
}

TEST(HfCheckpointErrors, BadIndex) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "mistral_bf16_sharded");
  const std::string index = dir + "/model.safetensors.index.json";
  const std::string orig = test::read_file(index);
  auto edit_index = [&](const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j = nlohmann::json::parse(orig);
    f(j);
    test::write_file(index, j.dump());
  };
  edit_index([](nlohmann::json& j) {
    j["weight_map"]["lm_head.weight"] = "model-00003-of-00002.safetensors";
  });
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"tensor 'lm_head.weight'", "model-00003-of-00002", "does not exist"}));
  edit_index([](nlohmann::json& j) {
    j["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";
  });
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"tensor 'lm_head.weight'", "model-00001-of-00002", "has no such tensor"}));
  edit_index([](nlohmann::json& j) { j["weight_map"].erase("model.norm.weight"); });
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"missing tensor 'model.norm.weight'", "model.safetensors.index.json"}));
}

TEST(HfCheckpointErrors, NoWeightFilesOrNoDirectory) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "qwen2_f16_tied");
  fs::remove(dir + "/model.safetensors");
  EXPECT_TRUE(throws_with<FormatError>([&] { io::load_hf_checkpoint(dir); },
                                       {"expected model.safetensors", "found none"}));
  EXPECT_TRUE(throws_with<FormatError>([&] { io::load_hf_checkpoint(dir + "/nope"); },
                                       {"nope", "expected a checkpoint directory"}));
}

TEST(HfCheckpointErrors, DuplicateTensorAcrossUnindexedShards) {
  test::TempDir tmp;
  const std::string dir = copy_of(tmp, "mistral_bf16_sharded");
  fs::remove(dir + "/model.safetensors.index.json");
  // Without an index every *.safetensors is read: the two shards load as before.
  EXPECT_EQ(io::load_hf_checkpoint(dir).files.size(), 2u);
  fs::copy_file(dir + "/model-00001-of-00002.safetensors", dir + "/model-copy.safetensors");
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::load_hf_checkpoint(dir); },
      {"appears in both", "model-00001-of-00002.safetensors", "model-copy.safetensors"}));
}

}  // namespace
