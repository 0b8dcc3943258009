// Loads a HuggingFace decoder-only checkpoint directory (config.json + *.safetensors, single file
// or sharded with model.safetensors.index.json) of the Llama family (LlamaForCausalLM, which
// SmolLM uses, MistralForCausalLM, Qwen2ForCausalLM) into ttx::ModelConfig + ModelWeights<float>.
// Weights are read from the memory-mapped files and converted exactly to float copies
// (F32/F16/BF16 all fit in float), nn.Linear's (out x in) transposed to ttx's (in x out).
// Mapping: pre-norm serial blocks, RMSNorm with plain gain and rms_norm_eps, attention with
// half-split ("rotate_half") full-width RoPE (rope_theta, optional llama3 scaling), SwiGLU FFN
// (w_in = gate_proj, w_up = up_proj, w_out = down_proj), final RMSNorm, LM head (embedding^T when
// tie_word_embeddings). Anything else raises UnsupportedError naming what was found.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ttx/core/activation.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"
#include "ttx/io/safetensors.hpp"

namespace ttx::io {

/// The architectures load_hf_checkpoint understands (config.json "architectures"[0]).
inline const std::vector<std::string>& supported_hf_architectures() {
  static const std::vector<std::string> a = {"LlamaForCausalLM", "MistralForCausalLM",
                                             "Qwen2ForCausalLM"};
  return a;
}

/// What config.json says, after defaults (HF's own defaults where the key is optional).
struct HfConfig {
  std::string architecture;  ///< architectures[0]
  std::string model_type;
  Index hidden_size = 0;
  Index num_attention_heads = 0;
  Index num_key_value_heads = 0;  ///< default: num_attention_heads
  Index head_dim = 0;             ///< default: hidden_size / num_attention_heads
  Index intermediate_size = 0;
  Index num_hidden_layers = 0;
  Index vocab_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::string rope_scaling_type;  ///< "" (none) or "llama3"
  double rope_factor = 1.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  Index rope_original_max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  ///< q/k/v projections have biases (Qwen2 always; Llama attention_bias)
  bool o_bias = false;    ///< o projection has a bias (Llama attention_bias only)
  std::string torch_dtype;
  Index max_position_embeddings = 0;  ///< 0 when absent
  /// Sliding attention window (Mistral sliding_window; Qwen2 when use_sliding_window), 0 = none.
  /// ttx's decoder attends to every past token, which equals HF for sequences <= this length.
  Index sliding_window = 0;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
};

namespace detail {

[[noreturn]] inline void raise_unsupported(const std::string& message) {
  ttx::detail::raise(ErrorKind::unsupported, message);
}

/// Typed, defaulted access to config.json keys with messages naming the file and key.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string source) : j_(j), src_(std::move(source)) {}

  /// Present and not null.
  bool has(const char* key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }
  const nlohmann::json& at(const char* key) const { return *j_.find(key); }

  Index positive_int(const char* key, bool required, Index fallback) const {
    if (!has(key)) {
      if (required)
        raise_format(ttx::detail::concat("ttx::io: ", src_, ": missing required key \"", key,
                                         "\" (", arch_, ")"));
      return fallback;
    }
    const auto& v = at(key);
    if (!v.is_number_integer() || v.get<long long>() <= 0)
      raise_format(ttx::detail::concat("ttx::io: ", src_, ": key \"", key,
                                       "\" expected a positive integer, got ", v.dump()));
    return static_cast<Index>(v.get<long long>());
  }
  double number(const char* key, double fallback, bool required = false) const {
    if (!has(key)) {
      if (required)
        raise_format(ttx::detail::concat("ttx::io: ", src_, ": missing required key \"", key,
                                         "\" (", arch_, ")"));
      return fallback;
    }
    const auto& v = at(key);
    if (!v.is_number())
      raise_format(ttx::detail::concat("ttx::io: ", src_, ": key \"", key,
                                       "\" expected a number, got ", v.dump()));
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const auto& v = at(key);
    if (!v.is_boolean())
      raise_format(ttx::detail::concat("ttx::io: ", src_, ": key \"", key,
                                       "\" expected true or false, got ", v.dump()));
    return v.get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const auto& v = at(key);
    if (!v.is_string())
      raise_format(ttx::detail::concat("ttx::io: ", src_, ": key \"", key,
                                       "\" expected a string, got ", v.dump()));
    return v.get<std::string>();
  }
  void set_arch(const std::string& a) { arch_ = a; }
  const std::string& source() const { return src_; }

 private:
  const nlohmann::json& j_;
  std::string src_;
  std::string arch_;
};

inline std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

inline std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) raise_format(ttx::detail::concat("ttx::io: cannot open ", path));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

inline nlohmann::json parse_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    raise_format(ttx::detail::concat("ttx::io: ", path, ": expected a JSON object"));
  return j;
}

}  // namespace detail

/// HF's "llama3" RoPE scaling (transformers' _compute_llama3_parameters), in double: with
/// base frequencies f_j = theta^(-2j/head_dim) and wavelength w_j = 2 pi / f_j, low frequencies
/// (w_j > original / low_freq_factor) are divided by `factor`, high ones (w_j < original /
/// high_freq_factor) kept, and the band between interpolated with s = (original / w_j - low) /
/// (high - low): f_j ((1 - s) / factor + s). Returns head_dim / 2 frequencies.
inline std::vector<double> llama3_inv_freq(Index head_dim, double theta, double factor,
                                           double low_freq_factor, double high_freq_factor,
                                           double original_max_position_embeddings) {
  const double pi = 3.14159265358979323846;
  const double low_wavelen = original_max_position_embeddings / low_freq_factor;
  const double high_wavelen = original_max_position_embeddings / high_freq_factor;
  std::vector<double> f(static_cast<size_t>(head_dim / 2));
  for (Index j = 0; j < head_dim / 2; ++j) {
    const double base =
        std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
    const double wavelen = 2 * pi / base;
    double v = base;
    if (wavelen > low_wavelen) {
      v = base / factor;
    } else if (!(wavelen < high_wavelen)) {
      const double s = (original_max_position_embeddings / wavelen - low_freq_factor) /
                       (high_freq_factor - low_freq_factor);
      v = (1 - s) * base / factor + s * base;
    }
    f[static_cast<size_t>(j)] = v;
  }
  return f;
}

/// Reads a parsed config.json (`source` names it in messages). Throws UnsupportedError for an
/// architecture, activation, RoPE scaling or MLP bias this loader does not map, FormatError for a
/// missing required key (hidden_size, num_attention_heads, intermediate_size, num_hidden_layers,
/// vocab_size), a wrongly typed value or inconsistent head counts.
inline HfConfig parse_hf_config(const nlohmann::json& j, const std::string& source) {
  using ttx::detail::concat;
  const auto& supported = supported_hf_architectures();
  HfConfig c;
  auto arch = j.find("architectures");
  if (arch == j.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string())
    detail::raise_unsupported(concat("ttx::io: ", source,
                                     ": \"architectures\" expected a list naming one of ",
                                     detail::join(supported), "; got ",
                                     arch == j.end() ? std::string("no such key") : arch->dump()));
  c.architecture = (*arch)[0].get<std::string>();
  if (std::find(supported.begin(), supported.end(), c.architecture) == supported.end())
    detail::raise_unsupported(concat("ttx::io: ", source, ": architecture \"", c.architecture,
                                     "\" is not supported; supported: ", detail::join(supported)));
  detail::ConfigReader r(j, source);
  r.set_arch(c.architecture);
  c.model_type = r.string("model_type", "");
  c.hidden_size = r.positive_int("hidden_size", true, 0);
  c.num_attention_heads = r.positive_int("num_attention_heads", true, 0);
  c.num_key_value_heads = r.positive_int("num_key_value_heads", false, c.num_attention_heads);
  c.intermediate_size = r.positive_int("intermediate_size", true, 0);
  c.num_hidden_layers = r.positive_int("num_hidden_layers", true, 0);
  c.vocab_size = r.positive_int("vocab_size", true, 0);
  if (!r.has("head_dim") && c.hidden_size % c.num_attention_heads != 0)
    detail::raise_format(concat("ttx::io: ", source, ": hidden_size=", c.hidden_size,
                                " expected a multiple of num_attention_heads=",
                                c.num_attention_heads, " when head_dim is absent"));
  c.head_dim = r.positive_int("head_dim", false, c.hidden_size / c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    detail::raise_format(concat("ttx::io: ", source,
                                ": num_key_value_heads expected a divisor of num_attention_heads=",
                                c.num_attention_heads, ", got ", c.num_key_value_heads));
  if (c.head_dim % 2 != 0)
    detail::raise_format(
        concat("ttx::io: ", source, ": head_dim expected even (RoPE pairs), got ", c.head_dim));
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);  // HF Llama/Mistral/Qwen2
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", ""));
  c.max_position_embeddings =
      r.has("max_position_embeddings") ? r.positive_int("max_position_embeddings", false, 0) : 0;
  c.bos_token_id = r.has("bos_token_id") && r.at("bos_token_id").is_number_integer()
                       ? r.at("bos_token_id").get<int>()
                       : -1;
  if (r.has("eos_token_id")) {
    const auto& e = r.at("eos_token_id");
    if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int>());
    if (e.is_array())
      for (const auto& x : e)
        if (x.is_number_integer()) c.eos_token_ids.push_back(x.get<int>());
  }

  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu")
    detail::raise_unsupported(concat("ttx::io: ", source, ": hidden_act \"", act,
                                     "\" is not supported for ", c.architecture,
                                     "; supported: silu (SwiGLU)"));
  if (r.boolean("mlp_bias", false))
    detail::raise_unsupported(
        concat("ttx::io: ", source, ": mlp_bias=true is not supported; supported: false"));
  if (r.has("partial_rotary_factor") && r.number("partial_rotary_factor", 1.0) != 1.0)
    detail::raise_unsupported(concat("ttx::io: ", source, ": partial_rotary_factor ",
                                     r.number("partial_rotary_factor", 1.0),
                                     " is not supported; supported: 1 (full rotary)"));

  if (c.architecture == "Qwen2ForCausalLM") {
    c.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o without
    if (r.boolean("use_sliding_window", false))
      c.sliding_window = r.positive_int("sliding_window", false, 0);
  } else if (c.architecture == "LlamaForCausalLM") {
    c.qkv_bias = c.o_bias = r.boolean("attention_bias", false);
  } else {  // Mistral: no attention biases
    c.sliding_window = r.has("sliding_window") ? r.positive_int("sliding_window", false, 0) : 0;
  }

  // RoPE: transformers < 5 writes rope_theta and rope_scaling at the top level; transformers 5
  // writes one "rope_parameters" object holding rope_type, rope_theta and the scaling fields.
  const char* rope_key = r.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  c.rope_theta = r.number("rope_theta", 10000.0);
  if (r.has(rope_key)) {
    const auto& rs = r.at(rope_key);
    if (!rs.is_object())
      detail::raise_format(concat("ttx::io: ", source, ": ", rope_key,
                                  " expected an object or null, got ", rs.dump()));
    detail::ConfigReader s(rs, source + " " + rope_key);
    s.set_arch(c.architecture);
    c.rope_theta = s.number("rope_theta", c.rope_theta);
    const std::string type = s.string("rope_type", s.string("type", "default"));
    if (type == "llama3") {
      c.rope_scaling_type = type;
      c.rope_factor = s.number("factor", 0, true);
      c.rope_low_freq_factor = s.number("low_freq_factor", 0, true);
      c.rope_high_freq_factor = s.number("high_freq_factor", 0, true);
      c.rope_original_max_position_embeddings =
          s.positive_int("original_max_position_embeddings", true, 0);
      if (!(c.rope_factor > 0) || !(c.rope_high_freq_factor > c.rope_low_freq_factor) ||
          !(c.rope_low_freq_factor > 0))
        detail::raise_format(concat("ttx::io: ", source, ": ", rope_key,
                                    " llama3 expected factor > 0 and high_freq_factor > "
                                    "low_freq_factor > 0, got factor=",
                                    c.rope_factor, " low_freq_factor=", c.rope_low_freq_factor,
                                    " high_freq_factor=", c.rope_high_freq_factor));
    } else if (type != "default") {
      detail::raise_unsupported(concat("ttx::io: ", source, ": ", rope_key, " type \"", type,
                                       "\" is not supported; supported: none, default, llama3"));
    }
  }
  if (!(c.rope_theta > 0))
    detail::raise_format(
        concat("ttx::io: ", source, ": rope_theta expected > 0, got ", c.rope_theta));
  return c;
}

/// Reads config.json at `path` (see parse_hf_config).
inline HfConfig read_hf_config(const std::string& path) {
  return parse_hf_config(detail::parse_json_file(path), path);
}

/// The ttx model described by an HF config: serial pre-norm blocks, RMSNorm (plain gain, eps),
/// attention shape {hidden, heads, kv_heads, head_dim} with scale 1/sqrt(head_dim) and full
/// half-split RoPE (llama3 frequencies when scaled), SwiGLU, final RMSNorm.
inline ModelConfig to_model_config(const HfConfig& hf) {
  ModelConfig m;
  m.vocab = hf.vocab_size;
  m.layers = hf.num_hidden_layers;
  m.block.kind = BlockKind::serial;
  m.block.attn.shape =
      AttentionShape{hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim};
  m.block.attn.scale = 0.0;  // 1/sqrt(head_dim), as HF
  m.block.attn.rope = RopeSpec::full(hf.head_dim, RopeLayout::half_split, hf.rope_theta);
  if (hf.rope_scaling_type == "llama3")
    m.block.attn.rope.inv_freq = llama3_inv_freq(
        hf.head_dim, hf.rope_theta, hf.rope_factor, hf.rope_low_freq_factor,
        hf.rope_high_freq_factor, static_cast<double>(hf.rope_original_max_position_embeddings));
  m.block.norm = NormSpec::rms(hf.rms_norm_eps, GainConvention::plain);
  m.block.ffn = FfnSpec::swiglu();
  m.learned_positions = false;
  m.max_positions = hf.max_position_embeddings;
  m.final_norm = true;
  m.final_norm_spec = NormSpec::rms(hf.rms_norm_eps, GainConvention::plain);
  return m;
}

/// Every tensor of a checkpoint directory, from model.safetensors.index.json (its weight_map
/// says which shard holds each tensor) when present, else model.safetensors, else every
/// *.safetensors file in the directory. Files stay mapped while this object lives.
class CheckpointTensors {
 public:
  explicit CheckpointTensors(const std::string& dir) : dir_(dir) {
    namespace fs = std::filesystem;
    const fs::path d(dir);
    const fs::path index = d / "model.safetensors.index.json";
    if (fs::exists(index)) {
      source_ = index.string();
      const nlohmann::json j = detail::parse_json_file(source_);
      auto wm = j.find("weight_map");
      if (wm == j.end() || !wm->is_object())
        detail::raise_format(
            ttx::detail::concat("ttx::io: ", source_, ": \"weight_map\" expected an object"));
      std::map<std::string, size_t> file_of;
      for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it.value().is_string())
          detail::raise_format(ttx::detail::concat("ttx::io: ", source_, ": weight_map entry '",
                                                   it.key(), "' expected a file name, got ",
                                                   it.value().dump()));
        const std::string f = it.value().get<std::string>();
        if (!file_of.count(f)) {
          const fs::path p = d / f;
          if (!fs::exists(p))
            detail::raise_format(ttx::detail::concat("ttx::io: ", source_, ": tensor '", it.key(),
                                                     "' is mapped to ", p.string(),
                                                     ", which does not exist"));
          file_of[f] = files_.size();
          files_.emplace_back(p.string());
        }
        const size_t k = file_of[f];
        if (!files_[k].contains(it.key()))
          detail::raise_format(ttx::detail::concat("ttx::io: ", source_, ": tensor '", it.key(),
                                                   "' is mapped to ", files_[k].path(),
                                                   ", which has no such tensor"));
        where_[it.key()] = k;
      }
    } else {
      std::vector<std::string> paths;
      if (fs::exists(d / "model.safetensors")) {
        paths.push_back((d / "model.safetensors").string());
      } else if (fs::is_directory(d)) {
        for (const auto& e : fs::directory_iterator(d))
          if (e.is_regular_file() && e.path().extension() == ".safetensors")
            paths.push_back(e.path().string());
        std::sort(paths.begin(), paths.end());
      }
      if (paths.empty())
        detail::raise_format(
            ttx::detail::concat("ttx::io: ", dir,
                                ": expected model.safetensors, model.safetensors.index.json or "
                                "*.safetensors files, found none"));
      source_ = detail::join(paths);
      for (const auto& p : paths) {
        files_.emplace_back(p);
        for (const auto& kv : files_.back().tensors()) {
          if (where_.count(kv.first))
            detail::raise_format(ttx::detail::concat("ttx::io: ", dir, ": tensor '", kv.first,
                                                     "' appears in both ",
                                                     files_[where_[kv.first]].path(), " and ", p));
          where_[kv.first] = files_.size() - 1;
        }
      }
    }
  }

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// The named tensor; FormatError naming the checkpoint and tensor when absent.
  const TensorView& tensor(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
      detail::raise_format(ttx::detail::concat("ttx::io: ", dir_, ": missing tensor '", name,
                                               "' (looked in ", source_, ")"));
    return files_[it->second].tensor(name);
  }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& kv : where_) n.push_back(kv.first);
    return n;
  }
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::string dir_, source_;
  std::vector<SafetensorsFile> files_;  // a vector move keeps every mapping where it was
  std::map<std::string, size_t> where_;
};

/// A loaded checkpoint: what config.json said, the ttx model and float weights.
struct HfCheckpoint {
  HfConfig hf;
  ModelConfig config;
  ModelWeights<float> weights;
  std::vector<std::string> files;           ///< the safetensors files read
  std::set<std::string> stored_dtypes;      ///< dtypes of the tensors used ("BF16", ...)
  std::vector<std::string> unused_tensors;  ///< tensors in the files the model does not use
};

namespace detail {

/// Loads one tensor of the expected shape as float (F32/F16/BF16, exact).
inline RowMatrix<float> load_tensor(const CheckpointTensors& ts, const std::string& name,
                                    const std::vector<Index>& shape, const char* layout,
                                    std::set<std::string>& used, std::set<std::string>& dtypes) {
  const TensorView& t = ts.tensor(name);
  if (t.shape != shape)
    ttx::detail::raise(ErrorKind::shape,
                       ttx::detail::concat("ttx::io::load_hf_checkpoint: ", t.file, ": tensor '",
                                           name, "' expected shape ", shape_string(shape), " ",
                                           layout, ", got ", t.shape_string()));
  used.insert(name);
  dtypes.insert(dtype_name(t.dtype));
  return to_float_matrix(t);
}

}  // namespace detail

/// Loads the checkpoint in directory `dir` (or the directory of a config.json path).
/// Each projection becomes a float (in x out) copy: weights.blocks[l].attn.wq is hidden x
/// heads*head_dim, wo heads*head_dim x hidden, ffn.w_in/w_up hidden x intermediate, w_out
/// intermediate x hidden, embedding vocab x hidden, lm_head hidden x vocab.
/// Errors: UnsupportedError (architecture, rope scaling, dtype other than F32/F16/BF16),
/// FormatError (missing config key or tensor, truncated or corrupt file), ShapeError (a tensor
/// whose shape does not match config.json), each naming the file and the key or tensor.
///
///   auto ck = ttx::io::load_hf_checkpoint("SmolLM-135M/");
///   ttx::reference::DecoderModel<float> model(ck.config, std::move(ck.weights));
inline HfCheckpoint load_hf_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path dir(path);
  if (!fs::is_directory(dir) && dir.filename() == "config.json") dir = dir.parent_path();
  if (!fs::is_directory(dir))
    detail::raise_format(ttx::detail::concat("ttx::io: ", path,
                                             ": expected a checkpoint directory (config.json + "
                                             "*.safetensors)"));
  HfCheckpoint ck;
  ck.hf = read_hf_config((dir / "config.json").string());
  ck.config = to_model_config(ck.hf);
  const HfConfig& c = ck.hf;
  const CheckpointTensors ts(dir.string());
  for (const auto& f : ts.files()) ck.files.push_back(f.path());

  std::set<std::string> used;
  auto vec = [&](const std::string& name, Index n) -> RowVector<float> {
    const RowMatrix<float> m = detail::load_tensor(ts, name, {n}, "", used, ck.stored_dtypes);
    return Eigen::Map<const RowVector<float>>(m.data(), n);
  };
  // nn.Linear stores (out x in); ttx wants (in x out).
  auto linear = [&](const std::string& name, Index out, Index in) -> RowMatrix<float> {
    return detail::load_tensor(ts, name, {out, in}, "(out x in)", used, ck.stored_dtypes)
        .transpose();
  };

  const Index d = c.hidden_size, eq = c.num_attention_heads * c.head_dim,
              e = c.num_key_value_heads * c.head_dim, f = c.intermediate_size;
  ModelWeights<float>& w = ck.weights;
  w.embedding = detail::load_tensor(ts, "model.embed_tokens.weight", {c.vocab_size, d},
                                    "(vocab x hidden)", used, ck.stored_dtypes);
  w.blocks.resize(static_cast<size_t>(c.num_hidden_layers));
  for (Index l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(static_cast<long long>(l)) + ".";
    BlockWeights<float>& b = w.blocks[static_cast<size_t>(l)];
    b.norm1.gain = vec(p + "input_layernorm.weight", d);
    b.norm2.gain = vec(p + "post_attention_layernorm.weight", d);
    b.attn.wq = linear(p + "self_attn.q_proj.weight", eq, d);
    b.attn.wk = linear(p + "self_attn.k_proj.weight", e, d);
    b.attn.wv = linear(p + "self_attn.v_proj.weight", e, d);
    b.attn.wo = linear(p + "self_attn.o_proj.weight", d, eq);
    if (c.qkv_bias) {
      b.attn.bq = vec(p + "self_attn.q_proj.bias", eq);
      b.attn.bk = vec(p + "self_attn.k_proj.bias", e);
      b.attn.bv = vec(p + "self_attn.v_proj.bias", e);
    }
    if (c.o_bias) b.attn.bo = vec(p + "self_attn.o_proj.bias", d);
    b.ffn.w_in = linear(p + "mlp.gate_proj.weight", f, d);
    b.ffn.w_up = linear(p + "mlp.up_proj.weight", f, d);
    b.ffn.w_out = linear(p + "mlp.down_proj.weight", d, f);
  }
  w.final_norm.gain = vec("model.norm.weight", d);
  // Tied: HF shares the embedding matrix (vocab x hidden) as the LM head's (out x in) weight.
  w.lm_head = c.tie_word_embeddings ? RowMatrix<float>(w.embedding.transpose())
                                    : linear("lm_head.weight", c.vocab_size, d);
  for (const auto& n : ts.names())
    if (!used.count(n)) ck.unused_tensors.push_back(n);
  return ck;
}

}  // namespace ttx::io
