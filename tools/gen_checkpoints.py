#!/usr/bin/python3
"""Writes the tiny HuggingFace-format checkpoints under tests/data/checkpoints/ that
tests/io/hf_checkpoint_test.cpp loads, and for each a golden expected.ttxf.

Run with Debian's interpreter and packages (python3-torch, python3-numpy):
    /usr/bin/python3 tools/gen_checkpoints.py [out_dir]

Checkpoints (d 64, 2 layers, 4 query heads, 2 KV heads (GQA), vocab 128):
  llama_f32_tied/        LlamaForCausalLM (SmolLM-style tied embeddings), F32, one
                         model.safetensors, rope_theta 50000 with llama3 rope_scaling chosen so
                         that the high, medium and low frequency bands all occur.
  mistral_bf16_sharded/  MistralForCausalLM, BF16, two shards + model.safetensors.index.json,
                         head_dim 24 (heads*head_dim = 96 != hidden 64), untied lm_head,
                         rope_theta and rms_norm_eps left to HF's defaults.
  qwen2_f16_tied/        Qwen2ForCausalLM, F16, q/k/v biases (no o bias), tied embeddings,
                         rope_theta 1e6.

The safetensors bytes are written directly (no safetensors package): an 8-byte little-endian
header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
"__metadata__": {...}} padded with spaces to a multiple of 8, then the tensors' bytes.

expected.ttxf (format of tests/support/fixture.hpp) holds the logits of a fixed prompt and the
greedy continuation, computed by a PyTorch model written the way HF's modeling_llama /
modeling_mistral / modeling_qwen2 write it (RMSNorm with rsqrt, rotate_half RoPE on cos/sin of
cat(freqs, freqs), repeat_kv, causal softmax attention with scale 1/sqrt(head_dim), SwiGLU MLP,
tied or separate lm_head), in float64, from the *stored* weights (rounded to the checkpoint's
dtype first, then widened exactly to float64). The greedy steps recompute the whole sequence
without a cache, so the C++ cached decode is checked against an independent formulation.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

from ttxf import llama3_scaled_inv_freq, write_ttxf

VOCAB, D, LAYERS, HEADS, KV_HEADS, FFN = 128, 64, 2, 4, 2, 96
PROMPT = [1, 17, 42, 99, 5, 63, 120, 8]
STEPS = 6

DTYPE_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
TORCH_DTYPE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# ----------------------------------------------------------------------------------------------
# safetensors writer (byte format, no library)


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes()
    if t.dtype == torch.float32:
        return t.numpy().astype("<f4").tobytes()
    raise ValueError(t.dtype)


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        b = tensor_bytes(t)
        header[name] = {"dtype": DTYPE_NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return offset


# ----------------------------------------------------------------------------------------------
# the model, written the HF way, in float64


def rms_norm(x, weight, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep):
    b, h, s, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n_rep, s, hd).reshape(b, h * n_rep, s, hd)


def default_inv_freq(cfg, head_dim):
    base = float(cfg.get("rope_theta", 10000.0))
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float64)
                           / head_dim))


def llama3_inv_freq(cfg, head_dim):
    """transformers' _compute_llama3_parameters, in float64."""
    rs = cfg["rope_scaling"]
    return llama3_scaled_inv_freq(default_inv_freq(cfg, head_dim), rs["factor"],
                                  rs["low_freq_factor"], rs["high_freq_factor"],
                                  rs["original_max_position_embeddings"])


def inv_freq_of(cfg, head_dim):
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        return llama3_inv_freq(cfg, head_dim)
    return default_inv_freq(cfg, head_dim)


def forward(cfg, w, ids):
    """Logits (seq x vocab) of the whole sequence `ids`, no cache, float64."""
    d = cfg["hidden_size"]
    h = cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads", h)
    hd = cfg.get("head_dim") or d // h
    eps = cfg.get("rms_norm_eps", 1e-6)
    arch = cfg["architectures"][0]
    qkv_bias = arch == "Qwen2ForCausalLM" or (arch == "LlamaForCausalLM"
                                              and cfg.get("attention_bias", False))
    o_bias = arch == "LlamaForCausalLM" and cfg.get("attention_bias", False)

    def lin(x, name, bias):
        y = x @ w[name + ".weight"].T  # nn.Linear: weight is (out x in)
        return y + w[name + ".bias"] if bias else y

    seq = len(ids)
    pos = torch.arange(seq, dtype=torch.float64)
    freqs = pos[:, None] * inv_freq_of(cfg, hd)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    mask = torch.full((seq, seq), float("-inf"), dtype=torch.float64).triu(1)

    x = w["model.embed_tokens.weight"][torch.tensor(ids)][None]  # (1, seq, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        res = x
        x = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin(x, p + "self_attn.q_proj", qkv_bias).view(1, seq, h, hd).transpose(1, 2)
        k = lin(x, p + "self_attn.k_proj", qkv_bias).view(1, seq, kvh, hd).transpose(1, 2)
        v = lin(x, p + "self_attn.v_proj", qkv_bias).view(1, seq, kvh, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, h // kvh), repeat_kv(v, h // kvh)
        scores = q @ k.transpose(2, 3) / math.sqrt(hd) + mask
        a = torch.softmax(scores, dim=-1) @ v
        a = a.transpose(1, 2).reshape(1, seq, h * hd)
        x = res + lin(a, p + "self_attn.o_proj", o_bias)
        res = x
        x = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin(x, p + "mlp.gate_proj", False)
        x = res + lin(torch.nn.functional.silu(g) * lin(x, p + "mlp.up_proj", False),
                      p + "mlp.down_proj", False)
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = (w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False)
            else w["lm_head.weight"])
    return (x @ head.T)[0]


# ----------------------------------------------------------------------------------------------
# checkpoints


def make_weights(cfg, dtype, seed):
    """Trained-like random weights, rounded to `dtype` (what gets stored)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    d = cfg["hidden_size"]
    h = cfg["num_attention_heads"]
    kvh = cfg.get("num_key_value_heads", h)
    hd = cfg.get("head_dim") or d // h
    f = cfg["intermediate_size"]
    arch = cfg["architectures"][0]
    # Small embeddings (as trained models have) so the blocks' outputs dominate the residual
    # stream: with a tied head a large embedding makes every greedy step repeat its input token.
    w = {"model.embed_tokens.weight": randn(cfg["vocab_size"], d, std=0.1)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + randn(d, std=0.1).double()).to(dtype)
        w[p + "post_attention_layernorm.weight"] = (1 + randn(d, std=0.1).double()).to(dtype)
        w[p + "self_attn.q_proj.weight"] = randn(h * hd, d, std=d ** -0.5)
        w[p + "self_attn.k_proj.weight"] = randn(kvh * hd, d, std=d ** -0.5)
        w[p + "self_attn.v_proj.weight"] = randn(kvh * hd, d, std=d ** -0.5)
        w[p + "self_attn.o_proj.weight"] = randn(d, h * hd, std=(h * hd) ** -0.5)
        if arch == "Qwen2ForCausalLM":
            for n, width in (("q", h * hd), ("k", kvh * hd), ("v", kvh * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = randn(width, std=0.2)
        w[p + "mlp.gate_proj.weight"] = randn(f, d, std=d ** -0.5)
        w[p + "mlp.up_proj.weight"] = randn(f, d, std=d ** -0.5)
        w[p + "mlp.down_proj.weight"] = randn(d, f, std=f ** -0.5)
    w["model.norm.weight"] = (1 + randn(d, std=0.1).double()).to(dtype)
    if not cfg.get("tie_word_embeddings", False):
        w["lm_head.weight"] = randn(cfg["vocab_size"], d, std=d ** -0.5)
    return w


def golden(cfg, stored):
    w = {k: v.to(torch.float64) for k, v in stored.items()}  # exact widening
    prefill = forward(cfg, w, PROMPT)
    ids, step_logits = list(PROMPT), []
    for _ in range(STEPS):
        last = forward(cfg, w, ids)[-1]
        top2 = torch.topk(last, 2).values
        # A greedy token is only a fair test when its margin dwarfs float64 roundoff.
        assert float(top2[0] - top2[1]) > 1e-6 * float(last.abs().max()), "near-tie in greedy"
        step_logits.append(last)
        ids.append(int(torch.argmax(last)))
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert torch.allclose(forward(cfg, w, PROMPT)[-1], step_logits[0])
    return [("prompt", np.array(PROMPT, dtype=np.float64)),
            ("prefill_logits", prefill.numpy()),
            ("tokens", np.array(ids[len(PROMPT):], dtype=np.float64)),
            ("step_logits", torch.stack(step_logits).numpy()),
            ("inv_freq", inv_freq_of(cfg, hd).numpy())]


def write_checkpoint(out, name, cfg, dtype, seed, shards=1):
    path = os.path.join(out, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    cfg = dict(cfg, torch_dtype=TORCH_DTYPE[dtype])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    w = make_weights(cfg, dtype, seed)
    meta = {"format": "pt"}
    if shards == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), w, meta)
    else:
        # Layer i goes to shard min(i, shards-1); embeddings to the first, the head to the last.
        def shard_of(n):
            if n.startswith("model.layers."):
                return min(int(n.split(".")[2]), shards - 1)
            return 0 if n.startswith("model.embed_tokens") else shards - 1
        files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
        total, weight_map = 0, {}
        for i, fname in enumerate(files):
            part = {n: t for n, t in w.items() if shard_of(n) == i}
            total += write_safetensors(os.path.join(path, fname), part, meta)
            weight_map.update({n: fname for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total},
                       "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")
    write_ttxf(os.path.join(path, "expected.ttxf"), golden(cfg, w))


BASE = {"hidden_size": D, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "data", "checkpoints")
    torch.set_grad_enabled(False)
    write_checkpoint(out, "llama_f32_tied", dict(
        BASE, architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5,
        rope_theta=50000.0, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        max_position_embeddings=2048,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        torch.float32, seed=11)
    write_checkpoint(out, "mistral_bf16_sharded", dict(
        BASE, architectures=["MistralForCausalLM"], model_type="mistral", head_dim=24,
        sliding_window=4096, tie_word_embeddings=False, max_position_embeddings=32768),
        torch.bfloat16, seed=12, shards=2)
    write_checkpoint(out, "qwen2_f16_tied", dict(
        BASE, architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
        sliding_window=4096, max_window_layers=LAYERS, rope_scaling=None,
        max_position_embeddings=32768),
        torch.float16, seed=13)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main()
