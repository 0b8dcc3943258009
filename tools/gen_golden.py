#!/usr/bin/python3
"""Golden fixtures for ttx's reference oracle, computed by PyTorch the way the model families do.

Run with Debian's interpreter (torch 1.13, numpy):   /usr/bin/python3 tools/gen_golden.py
It rewrites tests/data/*.ttxf and tests/data/MANIFEST.txt. Deterministic: fixed seed, one thread.

Every computation is written the way its model family writes it, not the way ttx does:
HuggingFace LlamaAttention (rotate_half, cos/sin cache, repeat_kv, GQA, KV cache), GPT-J
(rotate_every_two, partial rotary, float32 upcast in _attn), torch.nn.MultiheadAttention, Whisper
(q/v/o biases, no k bias, query scaled before the product), T5 (relative position buckets, scale
1), nn.LayerNorm, LlamaRMSNorm / GemmaRMSNorm (upcast then normalise), Llama / GPT-J / Whisper /
T5 MLPs, and a 2-layer Llama-like decoder with greedy decoding. transformers is not installed:
the structure of its modules is copied here (the code paths named in each function).

Each fixture is run twice from the same float64 parameters:
  * in torch.float64: the exact reference (tensor names without suffix);
  * in torch.float32: what PyTorch itself gets in single precision (suffix `_f32`, stored as
    float64). The C++ float test holds ttx's float oracle to within 2x of PyTorch's own float32
    error (SPEC.md §5 rule), so the float bound is measured, not guessed.
Where HF "upcasts to float32" (softmax dtype, RMSNorm, GPT-J _attn) the code upcasts to
promote(dtype, float32): float32 in the float32 run (HF's exact arithmetic), float64 in the
reference run (an upcast to float32 there would be a downcast).

File format (tests/support/fixture.hpp): b"TTXF1\\n", then per tensor a text line
"<name> <rows> <cols>\\n" followed by rows*cols float64 little-endian values, row-major.
Weights are stored in ttx's (in x out) layout (nn.Linear.weight transposed) except where the
name ends in `_out_in` (PyTorch's layout kept on purpose so tests exercise that path).
"""
import copy
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from ttxf import llama3_scaled_inv_freq, write_ttxf

SEED = 20250301
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
GEN = torch.Generator().manual_seed(SEED)


def randn(*shape, std=1.0, mean=0.0):
    return torch.randn(*shape, generator=GEN, dtype=torch.float64) * std + mean


def proj(inp, out):
    """nn.Linear-shaped weight (out x in), entries N(0, 1/in) like a trained projection."""
    return randn(out, inp, std=1.0 / math.sqrt(inp))


def acc_dtype(dtype):
    """HF's 'upcast to float32', written so the float64 reference run is not downcast."""
    return torch.promote_types(dtype, torch.float32)


def linear(x, w_out_in, b=None):
    return F.linear(x, w_out_in, b)


# ----------------------------------------------------------------------------------------------
# writer


class Fixture:
    def __init__(self, name, what):
        self.name, self.what, self.tensors = name, what, []

    def add(self, name, t):
        a = torch.as_tensor(t).detach().to(torch.float64).cpu().numpy()
        if a.ndim == 0:
            a = a.reshape(1, 1)
        elif a.ndim == 1:
            a = a.reshape(1, -1)
        elif a.ndim > 2:
            a = a.reshape(-1, a.shape[-1])
        assert all(n != name for n, _ in self.tensors), name
        self.tensors.append((name, np.ascontiguousarray(a, dtype="<f8")))

    def add_t(self, name, w_out_in):
        """An nn.Linear weight stored in ttx's (in x out) layout."""
        self.add(name, w_out_in.t())

    def add_run(self, runs, names):
        """Outputs of the float64 run under `name`, of the float32 run under `name_f32`."""
        for n in names:
            self.add(n, runs[torch.float64][n])
            self.add(n + "_f32", runs[torch.float32][n])

    def write(self):
        return write_ttxf(os.path.join(OUT, self.name + ".ttxf"), self.tensors)


def both(fn, params, *inputs):
    """Runs fn in float64 and in float32 from the same float64 parameters and inputs."""
    out = {}
    for dt in (torch.float64, torch.float32):
        cast = lambda v: v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v
        p = {k: cast(v) for k, v in params.items()}
        out[dt] = fn(p, *[cast(i) for i in inputs])
    return out


# ----------------------------------------------------------------------------------------------
# HuggingFace Llama (modeling_llama.py): LlamaRotaryEmbedding, rotate_half, apply_rotary_pos_emb,
# repeat_kv, LlamaAttention.forward with a DynamicCache, LlamaRMSNorm, LlamaMLP, decoder layer.


def llama_default_inv_freq(dim, base, dtype):
    # HF: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim))


def llama3_inv_freq(dim, base, factor, low_freq_factor, high_freq_factor, old_context_len, dtype):
    # HF modeling_rope_utils._compute_llama3_parameters
    return llama3_scaled_inv_freq(llama_default_inv_freq(dim, base, dtype), factor,
                                  low_freq_factor, high_freq_factor, old_context_len)


def llama_rotary(inv_freq, position_ids, dtype):
    # LlamaRotaryEmbedding.forward (computed in float32 in HF: acc_dtype here)
    a = acc_dtype(dtype)
    inv_freq_expanded = inv_freq[None, :, None].to(a).expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].to(a)
    freqs = (inv_freq_expanded @ position_ids_expanded).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen,
                                                          head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def causal_mask(q_len, past, dtype):
    # HF _prepare_4d_causal_attention_mask: min value above the diagonal (offset by the past)
    m = torch.zeros(q_len, past + q_len, dtype=dtype)
    i = torch.arange(q_len)[:, None]
    j = torch.arange(past + q_len)[None, :]
    return m.masked_fill(j > i + past, torch.finfo(dtype).min)[None, None]


def llama_attention(p, x, cache, heads, kv_heads, inv_freq):
    """LlamaAttention.forward on x (1, q_len, d); cache = [k, v] (1, kv_heads, past, dk) or None."""
    bsz, q_len, _ = x.shape
    head_dim = p["wq"].shape[0] // heads
    q = linear(x, p["wq"]).view(bsz, q_len, -1, head_dim).transpose(1, 2)
    k = linear(x, p["wk"]).view(bsz, q_len, -1, head_dim).transpose(1, 2)
    v = linear(x, p["wv"]).view(bsz, q_len, -1, head_dim).transpose(1, 2)
    past = 0 if cache[0] is None else cache[0].shape[2]
    position_ids = torch.arange(past, past + q_len)[None]
    cos, sin = llama_rotary(inv_freq, position_ids, x.dtype)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if cache[0] is not None:  # DynamicCache.update: concatenate along the sequence axis
        k = torch.cat([cache[0], k], dim=-2)
        v = torch.cat([cache[1], v], dim=-2)
    cache[0], cache[1] = k, v
    key_states = repeat_kv(k, heads // kv_heads)
    value_states = repeat_kv(v, heads // kv_heads)
    scaling = head_dim ** -0.5
    attn_weights = torch.matmul(q, key_states.transpose(2, 3)) * scaling
    attn_weights = attn_weights + causal_mask(q_len, past, x.dtype)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=acc_dtype(x.dtype)).to(q.dtype)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, -1)
    return linear(attn_output, p["wo"])


def llama_rmsnorm(x, weight, eps):
    # LlamaRMSNorm.forward
    input_dtype = x.dtype
    hidden_states = x.to(acc_dtype(input_dtype))
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def gemma_rmsnorm(x, weight, eps):
    # GemmaRMSNorm.forward: normalise in float32, multiply by (1 + weight) in float32, cast back
    def _norm(h):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)

    a = acc_dtype(x.dtype)
    output = _norm(x.to(a))
    output = output * (1.0 + weight.to(a))
    return output.type_as(x)


def llama_mlp(p, x, pre=""):
    # LlamaMLP: down_proj(act_fn(gate_proj(x)) * up_proj(x)), act_fn = SiLU
    return linear(F.silu(linear(x, p[pre + "w_gate"])) * linear(x, p[pre + "w_up"]),
                  p[pre + "w_down"])


# ----------------------------------------------------------------------------------------------
# fixtures


def fx_linear():
    fx = Fixture("linear_pytorch_layout",
                 "nn.Linear(24, 16) with bias; weight kept in PyTorch's (out x in) layout")
    lin = torch.nn.Linear(24, 16, bias=True, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(proj(24, 16))
        lin.bias.copy_(randn(16, std=0.1))
    x = randn(5, 24)
    params = {"w": lin.weight.detach(), "b": lin.bias.detach()}
    runs = both(lambda p, x: {"y": F.linear(x, p["w"], p["b"])}, params, x)
    fx.add("w_out_in", params["w"])
    fx.add("b", params["b"])
    fx.add("x", x)
    fx.add_run(runs, ["y"])
    return fx


def fx_llama_attention():
    d, heads, kv_heads, dk, prefill, steps = 32, 4, 2, 8, 5, 3
    fx = Fixture("llama_attention",
                 f"HF LlamaAttention, GQA h={heads} h_kv={kv_heads} d_k={dk}, half-split RoPE with "
                 f"Llama-3 scaled inv_freq, prefill {prefill} then {steps} decode steps (KV cache)")
    params = {"wq": proj(d, heads * dk), "wk": proj(d, kv_heads * dk), "wv": proj(d, kv_heads * dk),
              "wo": proj(heads * dk, d)}
    x = randn(prefill + steps, d)
    # Llama-3 scaling with a short original context so all three frequency bands occur at d_k=8
    inv_freq = llama3_inv_freq(dk, 10000.0, factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, old_context_len=64, dtype=torch.float64)

    def run(p, x):
        cache = [None, None]
        inv = inv_freq.to(x.dtype)
        y_pre = llama_attention(p, x[None, :prefill], cache, heads, kv_heads, inv)[0]
        y_dec = [llama_attention(p, x[None, prefill + s: prefill + s + 1], cache, heads, kv_heads,
                                 inv)[0] for s in range(steps)]
        # cache (1, h_kv, n, dk) -> (n, h_kv * dk): ttx's token-by-row layout
        to_rows = lambda c: c[0].transpose(0, 1).reshape(c.shape[2], -1)
        return {"y_prefill": y_pre, "y_decode": torch.cat(y_dec, 0), "k_cache": to_rows(cache[0]),
                "v_cache": to_rows(cache[1])}

    runs = both(run, params, x)
    for n in ("wq", "wk", "wv", "wo"):
        fx.add_t(n, params[n])
    fx.add("inv_freq", inv_freq)
    fx.add("x", x)
    fx.add_run(runs, ["y_prefill", "y_decode", "k_cache", "v_cache"])
    return fx


# GPT-J (modeling_gptj.py)


def create_sinusoidal_positions(num_pos, dim, dtype):
    # HF divides an int64 arange (-> default float32); the reference run divides in `dtype`
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim))
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(num_pos, dtype=torch.int64).to(dtype),
                                inv_freq)
    return torch.cat((torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)), dim=1)


def rotate_every_two(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


def gptj_apply_rotary_pos_emb(tensor, sin, cos):
    sin = torch.repeat_interleave(sin[:, :, None, :], 2, 3)
    cos = torch.repeat_interleave(cos[:, :, None, :], 2, 3)
    return (tensor * cos) + (rotate_every_two(tensor) * sin)


def gptj_attention(p, x, layer_past, heads, rotary_dim, embed_positions):
    """GPTJAttention.forward on x (1, q_len, d); layer_past = [k, v] (1, h, past, dk) or None."""
    bsz, q_len, d = x.shape
    head_dim = d // heads
    query = linear(x, p["wq"])
    key = linear(x, p["wk"])
    value = linear(x, p["wv"])
    split = lambda t: t.view(t.size()[:-1] + (heads, head_dim))  # _split_heads(rotary=True)
    query, key = split(query), split(key)
    value = split(value).permute(0, 2, 1, 3)
    past = 0 if layer_past[0] is None else layer_past[0].shape[-2]
    position_ids = torch.arange(past, past + q_len)[None]
    sincos = embed_positions[position_ids]
    sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
    k_rot, k_pass = key[:, :, :, :rotary_dim], key[:, :, :, rotary_dim:]
    q_rot, q_pass = query[:, :, :, :rotary_dim], query[:, :, :, rotary_dim:]
    k_rot = gptj_apply_rotary_pos_emb(k_rot, sin, cos)
    q_rot = gptj_apply_rotary_pos_emb(q_rot, sin, cos)
    key = torch.cat([k_rot, k_pass], dim=-1).permute(0, 2, 1, 3)
    query = torch.cat([q_rot, q_pass], dim=-1).permute(0, 2, 1, 3)
    if layer_past[0] is not None:
        key = torch.cat((layer_past[0], key), dim=-2)
        value = torch.cat((layer_past[1], value), dim=-2)
    layer_past[0], layer_past[1] = key, value
    # _attn: upcast, mask with finfo.min, divide by sqrt(head_dim), softmax, back to value dtype
    a = acc_dtype(x.dtype)
    query, key_a = query.to(a), key.to(a)
    attn_weights = torch.matmul(query, key_a.transpose(-1, -2))
    k_len = key.shape[-2]
    causal = (torch.arange(k_len)[None, :] <= torch.arange(past, past + q_len)[:, None])
    attn_weights = torch.where(causal, attn_weights, torch.tensor(torch.finfo(a).min, dtype=a))
    attn_weights = attn_weights / torch.sqrt(torch.tensor(head_dim, dtype=a))
    attn_weights = F.softmax(attn_weights, dim=-1).to(value.dtype)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.permute(0, 2, 1, 3).contiguous()  # _merge_heads
    attn_output = attn_output.view(attn_output.size()[:-2] + (heads * head_dim,))
    return linear(attn_output, p["wo"])


def fx_gptj_attention():
    d, heads, rotary_dim, prefill, steps = 32, 4, 4, 5, 2
    fx = Fixture("gptj_attention",
                 f"GPT-J attention, h={heads} d_k={d // heads}, interleaved partial rotary "
                 f"rotary_dim={rotary_dim} (rotate_every_two), prefill {prefill} + {steps} decode")
    params = {"wq": proj(d, d), "wk": proj(d, d), "wv": proj(d, d), "wo": proj(d, d)}
    # pre-norm activations of a trained model are O(1); scale up so the rotation is visible
    x = randn(prefill + steps, d, std=2.0)

    def run(p, x):
        pos = create_sinusoidal_positions(64, rotary_dim, x.dtype)
        cache = [None, None]
        y_pre = gptj_attention(p, x[None, :prefill], cache, heads, rotary_dim, pos)[0]
        y_dec = [gptj_attention(p, x[None, prefill + s: prefill + s + 1], cache, heads,
                                rotary_dim, pos)[0] for s in range(steps)]
        to_rows = lambda c: c[0].transpose(0, 1).reshape(c.shape[2], -1)
        return {"y_prefill": y_pre, "y_decode": torch.cat(y_dec, 0), "k_cache": to_rows(cache[0])}

    runs = both(run, params, x)
    for n in ("wq", "wk", "wv", "wo"):
        fx.add_t(n, params[n])
    fx.add("x", x)
    fx.add_run(runs, ["y_prefill", "y_decode", "k_cache"])
    return fx


def fx_mha():
    d, heads, prefill, steps = 32, 4, 5, 2
    fx = Fixture("torch_mha",
                 f"torch.nn.MultiheadAttention(d={d}, heads={heads}, bias=True), causal mask on "
                 f"the prompt, then {steps} decode steps as mha(x_new, x_all, x_all); weights in "
                 "PyTorch's (out x in) layout")
    mha = torch.nn.MultiheadAttention(d, heads, bias=True, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([proj(d, d), proj(d, d), proj(d, d)], 0))
        mha.in_proj_bias.copy_(randn(3 * d, std=0.1))
        mha.out_proj.weight.copy_(proj(d, d))
        mha.out_proj.bias.copy_(randn(d, std=0.1))
    x = randn(prefill + steps, d)

    def run(dtype):
        m = copy.deepcopy(mha).to(dtype)  # keep the float64 parameters unrounded
        xx = x.to(dtype)[None]
        mask = torch.triu(torch.ones(prefill, prefill, dtype=torch.bool), 1)
        with torch.no_grad():
            y_pre = m(xx[:, :prefill], xx[:, :prefill], xx[:, :prefill], attn_mask=mask,
                      need_weights=False)[0][0]
            y_dec = [m(xx[:, prefill + s: prefill + s + 1], xx[:, :prefill + s + 1],
                       xx[:, :prefill + s + 1], need_weights=False)[0][0] for s in range(steps)]
        return {"y_prefill": y_pre, "y_decode": torch.cat(y_dec, 0)}

    runs = {torch.float64: run(torch.float64), torch.float32: run(torch.float32)}
    W = mha.in_proj_weight.detach()
    B = mha.in_proj_bias.detach()
    for i, n in enumerate("qkv"):
        fx.add(f"w{n}_out_in", W[i * d:(i + 1) * d])
        fx.add(f"b{n}", B[i * d:(i + 1) * d])
    fx.add("wo_out_in", mha.out_proj.weight.detach())
    fx.add("bo", mha.out_proj.bias.detach())
    fx.add("x", x)
    fx.add_run(runs, ["y_prefill", "y_decode"])
    return fx


# Whisper (modeling_whisper.py): WhisperAttention, WhisperDecoderLayer


def whisper_attention(p, pre, x, heads, key_value_states=None, past=None, attention_mask=None):
    bsz, tgt_len, d = x.shape
    head_dim = d // heads
    scaling = head_dim ** -0.5
    shape = lambda t, s: t.view(bsz, s, heads, head_dim).transpose(1, 2).contiguous()
    query_states = linear(x, p[pre + "wq"], p[pre + "bq"]) * scaling
    if key_value_states is not None:  # cross-attention
        key_states = shape(linear(key_value_states, p[pre + "wk"]), -1)  # k_proj has no bias
        value_states = shape(linear(key_value_states, p[pre + "wv"], p[pre + "bv"]), -1)
    else:
        key_states = shape(linear(x, p[pre + "wk"]), -1)
        value_states = shape(linear(x, p[pre + "wv"], p[pre + "bv"]), -1)
        if past is not None and past[0] is not None:
            key_states = torch.cat([past[0], key_states], dim=2)
            value_states = torch.cat([past[1], value_states], dim=2)
        if past is not None:
            past[0], past[1] = key_states, value_states
    proj_shape = (bsz * heads, -1, head_dim)
    query_states = shape(query_states, tgt_len).view(*proj_shape)
    key_states = key_states.reshape(*proj_shape)
    value_states = value_states.reshape(*proj_shape)
    src_len = key_states.size(1)
    attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))
    if attention_mask is not None:
        attn_weights = attn_weights.view(bsz, heads, tgt_len, src_len) + attention_mask
        attn_weights = attn_weights.view(bsz * heads, tgt_len, src_len)
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_output = torch.bmm(attn_weights, value_states)
    attn_output = attn_output.view(bsz, heads, tgt_len, head_dim).transpose(1, 2)
    attn_output = attn_output.reshape(bsz, tgt_len, d)
    return linear(attn_output, p[pre + "wo"], p[pre + "bo"])


def whisper_decoder_layer(p, x, enc, heads, past, eps):
    past_len = 0 if past[0] is None else past[0].shape[2]
    ln = lambda h, n: F.layer_norm(h, (h.shape[-1],), p[n + "_g"], p[n + "_b"], eps)
    residual = x
    h = ln(x, "ln_self")
    h = whisper_attention(p, "self_", h, heads, past=past,
                          attention_mask=causal_mask(x.shape[1], past_len, x.dtype))
    h = residual + h
    residual = h
    h = ln(h, "ln_cross")
    h = whisper_attention(p, "cross_", h, heads, key_value_states=enc)
    h = residual + h
    residual = h
    h = ln(h, "ln_ffn")
    h = F.gelu(linear(h, p["fc1"], p["fc1_b"]))  # ACT2FN["gelu"]: the erf form
    h = linear(h, p["fc2"], p["fc2_b"])
    return residual + h


def fx_whisper():
    d, heads, f, p_enc, prefill, steps, eps = 32, 4, 64, 7, 4, 2, 1e-5
    fx = Fixture("whisper",
                 f"Whisper decoder attention (q/v/o biases, no k bias, query scaled first), "
                 f"h={heads} d_k={d // heads}: self-attention prefill {prefill} + {steps} decode, "
                 f"cross-attention to {p_enc} encoder rows, and a whole WhisperDecoderLayer "
                 f"(LayerNorm eps={eps}, GELU-erf MLP f={f}) over the same steps")
    params = {}
    for pre in ("self_", "cross_"):
        params[pre + "wq"], params[pre + "bq"] = proj(d, d), randn(d, std=0.1)
        params[pre + "wk"] = proj(d, d)
        params[pre + "wv"], params[pre + "bv"] = proj(d, d), randn(d, std=0.1)
        params[pre + "wo"], params[pre + "bo"] = proj(d, d), randn(d, std=0.1)
    for n in ("ln_self", "ln_cross", "ln_ffn"):
        params[n + "_g"], params[n + "_b"] = randn(d, std=0.1, mean=1.0), randn(d, std=0.1)
    params["fc1"], params["fc1_b"] = proj(d, f), randn(f, std=0.1)
    params["fc2"], params["fc2_b"] = proj(f, d), randn(d, std=0.1)
    x = randn(prefill + steps, d)
    enc = randn(p_enc, d)

    def run(p, x, enc):
        out = {}
        past = [None, None]
        ys = [whisper_attention(p, "self_", x[None, :prefill], heads, past=past,
                                attention_mask=causal_mask(prefill, 0, x.dtype))[0]]
        for s in range(steps):
            ys.append(whisper_attention(p, "self_", x[None, prefill + s: prefill + s + 1], heads,
                                        past=past)[0])
        out["self_y"] = torch.cat(ys, 0)
        out["cross_y"] = whisper_attention(p, "cross_", x[None], heads, key_value_states=enc[None])[0]
        past = [None, None]
        ys = [whisper_decoder_layer(p, x[None, :prefill], enc[None], heads, past, eps)[0]]
        for s in range(steps):
            ys.append(whisper_decoder_layer(p, x[None, prefill + s: prefill + s + 1], enc[None],
                                            heads, past, eps)[0])
        out["layer_y"] = torch.cat(ys, 0)
        return out

    runs = both(run, params, x, enc)
    for k, v in params.items():
        if v.dim() == 2:
            fx.add_t(k, v)
        else:
            fx.add(k, v)
    fx.add("x", x)
    fx.add("enc", enc)
    fx.add_run(runs, ["self_y", "cross_y", "layer_y"])
    return fx


def fx_norms():
    d, n = 24, 6
    fx = Fixture("norms",
                 f"nn.LayerNorm({d}, eps=1e-5), LlamaRMSNorm(eps=1e-6) and GemmaRMSNorm(eps=1e-6, "
                 f"applied gain 1+g) on {n} rows with a non-zero mean, upcast as HF does")
    x = randn(n, d, std=1.5) + randn(n, 1, std=2.0)
    params = {"ln_g": randn(d, std=0.1, mean=1.0), "ln_b": randn(d, std=0.1),
              "rms_g": randn(d, std=0.1, mean=1.0), "gemma_g": randn(d, std=0.1)}
    def run(p, x):
        m = torch.nn.LayerNorm(d, eps=1e-5, dtype=x.dtype)
        with torch.no_grad():
            m.weight.copy_(p["ln_g"])
            m.bias.copy_(p["ln_b"])
            y_ln = m(x)
        return {"layer_y": y_ln, "rms_y": llama_rmsnorm(x, p["rms_g"], 1e-6),
                "gemma_y": gemma_rmsnorm(x, p["gemma_g"], 1e-6)}

    runs = both(run, params, x)
    for k, v in params.items():
        fx.add(k, v)
    fx.add("x", x)
    fx.add_run(runs, ["layer_y", "rms_y", "gemma_y"])
    return fx


def fx_ffn():
    d, f, n = 24, 40, 5
    fx = Fixture("ffn",
                 f"LlamaMLP (SwiGLU, no biases), GPT-J MLP (gelu_new = tanh GELU, biases), "
                 f"Whisper/BERT MLP (erf GELU, biases), T5 DenseReluDense (ReLU, no biases); "
                 f"d={d} f={f}, {n} rows")
    params = {"swiglu_w_gate": proj(d, f), "swiglu_w_up": proj(d, f), "swiglu_w_down": proj(f, d),
              "tanh_fc_in": proj(d, f), "tanh_b_in": randn(f, std=0.1), "tanh_fc_out": proj(f, d),
              "tanh_b_out": randn(d, std=0.1),
              "erf_fc1": proj(d, f), "erf_b1": randn(f, std=0.1), "erf_fc2": proj(f, d),
              "erf_b2": randn(d, std=0.1),
              "relu_wi": proj(d, f), "relu_wo": proj(f, d)}
    x = randn(n, d)

    def gelu_new(t):  # transformers.activations.NewGELUActivation
        return 0.5 * t * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * torch.pow(t, 3.0))))

    def run(p, x):
        return {
            "swiglu_y": llama_mlp(p, x, "swiglu_"),
            "tanh_y": linear(gelu_new(linear(x, p["tanh_fc_in"], p["tanh_b_in"])), p["tanh_fc_out"],
                             p["tanh_b_out"]),
            "erf_y": linear(F.gelu(linear(x, p["erf_fc1"], p["erf_b1"])), p["erf_fc2"], p["erf_b2"]),
            "relu_y": linear(F.relu(linear(x, p["relu_wi"])), p["relu_wo"]),
        }

    runs = both(run, params, x)
    for k, v in params.items():
        if v.dim() == 2:
            fx.add_t(k, v)
        else:
            fx.add(k, v)
    fx.add("x", x)
    fx.add_run(runs, ["swiglu_y", "tanh_y", "erf_y", "relu_y"])
    return fx


# T5 (modeling_t5.py): T5Attention with relative_attention_bias, decoder (unidirectional buckets)


def t5_relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def t5_compute_bias(table, query_length, key_length, num_buckets, max_distance):
    context_position = torch.arange(query_length, dtype=torch.long)[:, None]
    memory_position = torch.arange(key_length, dtype=torch.long)[None, :]
    relative_position = memory_position - context_position
    bucket = t5_relative_position_bucket(relative_position, False, num_buckets, max_distance)
    values = F.embedding(bucket, table)  # (q, k, heads)
    return values.permute([2, 0, 1]).unsqueeze(0)  # (1, heads, q, k)


def t5_attention(p, x, past, heads, num_buckets, max_distance):
    bsz, seq_length, d = x.shape
    key_value_proj_dim = d // heads
    shape = lambda s: s.view(bsz, -1, heads, key_value_proj_dim).transpose(1, 2)
    past_len = 0 if past[0] is None else past[0].shape[2]
    real_seq_length = past_len + seq_length
    query_states = shape(linear(x, p["wq"]))
    key_states = shape(linear(x, p["wk"]))
    value_states = shape(linear(x, p["wv"]))
    if past[0] is not None:
        key_states = torch.cat([past[0], key_states], dim=2)
        value_states = torch.cat([past[1], value_states], dim=2)
    past[0], past[1] = key_states, value_states
    scores = torch.matmul(query_states, key_states.transpose(3, 2))  # no 1/sqrt(d_k): scale 1
    position_bias = t5_compute_bias(p["rel_bias"], real_seq_length, real_seq_length, num_buckets,
                                    max_distance).to(x.dtype)
    position_bias = position_bias[:, :, -seq_length:, :]
    position_bias = position_bias + causal_mask(seq_length, past_len, x.dtype)
    scores += position_bias
    attn_weights = F.softmax(scores.to(acc_dtype(x.dtype)), dim=-1).type_as(scores)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous().view(bsz, -1, d)
    return linear(attn_output, p["wo"])


def fx_t5():
    d, heads, prefill, steps, num_buckets, max_distance = 32, 4, 6, 3, 8, 16
    fx = Fixture("t5_attention",
                 f"T5 decoder self-attention, h={heads} d_k={d // heads}, scale 1, additive relative "
                 f"position bias (unidirectional, {num_buckets} buckets, max_distance "
                 f"{max_distance}), prefill {prefill} + {steps} decode; `bias` row h*P+q, column k")
    # T5 does not scale scores; its q projection is initialised N(0, 1/(d * d_k)) to compensate
    params = {"wq": randn(d, d, std=1.0 / math.sqrt(d * (d // heads))), "wk": proj(d, d),
              "wv": proj(d, d), "wo": proj(d, d), "rel_bias": randn(num_buckets, heads, std=1.0)}
    x = randn(prefill + steps, d)

    def run(p, x):
        past = [None, None]
        ys = [t5_attention(p, x[None, :prefill], past, heads, num_buckets, max_distance)[0]]
        for s in range(steps):
            ys.append(t5_attention(p, x[None, prefill + s: prefill + s + 1], past, heads,
                                   num_buckets, max_distance)[0])
        return {"y": torch.cat(ys, 0)}

    runs = both(run, params, x)
    P = prefill + steps
    bias = t5_compute_bias(params["rel_bias"], P, P, num_buckets, max_distance)[0]  # (h, P, P)
    for n in ("wq", "wk", "wv", "wo"):
        fx.add_t(n, params[n])
    fx.add("bias", bias.reshape(heads * P, P))
    fx.add("x", x)
    fx.add_run(runs, ["y"])
    return fx


# A 2-layer Llama-like decoder (LlamaModel + LlamaForCausalLM greedy generate)


def fx_llama_model():
    vocab, d, heads, kv_heads, f, layers, eps = 48, 32, 4, 2, 64, 2, 1e-6
    prompt, steps = [3, 17, 42, 8, 25], 4
    dk = d // heads
    fx = Fixture("llama_model",
                 f"2-layer Llama-like decoder (RMSNorm eps={eps}, GQA h={heads} h_kv={kv_heads}, "
                 f"half-split RoPE base 10000, SwiGLU f={f}, vocab {vocab}, untied lm_head): "
                 f"prompt logits and {steps} greedy steps with a KV cache")
    params = {"embedding": randn(vocab, d)}
    for l in range(layers):
        params[f"l{l}_norm1"] = randn(d, std=0.1, mean=1.0)
        params[f"l{l}_norm2"] = randn(d, std=0.1, mean=1.0)
        params[f"l{l}_wq"] = proj(d, heads * dk)
        params[f"l{l}_wk"] = proj(d, kv_heads * dk)
        params[f"l{l}_wv"] = proj(d, kv_heads * dk)
        params[f"l{l}_wo"] = proj(heads * dk, d)
        params[f"l{l}_w_gate"] = proj(d, f)
        params[f"l{l}_w_up"] = proj(d, f)
        params[f"l{l}_w_down"] = proj(f, d)
    params["final_norm"] = randn(d, std=0.1, mean=1.0)
    params["lm_head"] = proj(d, vocab)

    def run(p):
        dtype = p["embedding"].dtype
        inv_freq = llama_default_inv_freq(dk, 10000.0, dtype)
        caches = [[None, None] for _ in range(layers)]

        def forward(ids):
            h = F.embedding(torch.tensor(ids)[None], p["embedding"])
            for l in range(layers):
                lp = {k[len(f"l{l}_"):]: v for k, v in p.items() if k.startswith(f"l{l}_")}
                r = h
                h = r + llama_attention(lp, llama_rmsnorm(h, lp["norm1"], eps), caches[l], heads,
                                        kv_heads, inv_freq)
                r = h
                h = r + llama_mlp(lp, llama_rmsnorm(h, lp["norm2"], eps))
            h = llama_rmsnorm(h, p["final_norm"], eps)
            return linear(h, p["lm_head"])[0]

        logits = forward(prompt)
        out = {"prompt_logits": logits}
        tokens, step_logits, gaps = [], [], []
        for s in range(steps):  # greedy: argmax of the last row, fed back with the cache
            last = logits[-1]
            top2 = torch.topk(last, 2).values
            gaps.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(last))
            tokens.append(nxt)
            step_logits.append(last[None])
            if s + 1 < steps:
                logits = forward([nxt])
        out["tokens"] = torch.tensor(tokens, dtype=torch.float64)
        out["step_logits"] = torch.cat(step_logits, 0)
        out["min_top2_gap"] = torch.tensor(min(gaps), dtype=torch.float64)
        return out

    runs = both(run, params)
    assert runs[torch.float64]["tokens"].tolist() == runs[torch.float32]["tokens"].tolist()
    for k, v in params.items():
        if k == "embedding":
            fx.add(k, v)  # an embedding table is (vocab x d) in both layouts
        elif v.dim() == 2:
            fx.add_t(k, v)
        else:
            fx.add(k, v)
    fx.add("prompt", torch.tensor(prompt, dtype=torch.float64))
    fx.add_run(runs, ["prompt_logits", "tokens", "step_logits"])
    fx.add("min_top2_gap", runs[torch.float64]["min_top2_gap"])
    return fx


def main():
    os.makedirs(OUT, exist_ok=True)
    fixtures = [fx_linear(), fx_llama_attention(), fx_gptj_attention(), fx_mha(), fx_whisper(),
                fx_norms(), fx_ffn(), fx_t5(), fx_llama_model()]
    lines = ["# ttx golden fixtures, written by tools/gen_golden.py (do not edit by hand)",
             f"seed {SEED}", f"torch {torch.__version__}", f"numpy {np.__version__}",
             f"python {sys.version.split()[0]}",
             "format TTXF1: per tensor '<name> <rows> <cols>\\n' + rows*cols float64 LE, row-major",
             "weights (in x out) unless the name ends in _out_in; *_f32 = PyTorch's float32 run", ""]
    total = 0
    for fx in fixtures:
        path = fx.write()
        size = os.path.getsize(path)
        total += size
        lines.append(f"{fx.name}.ttxf ({size} bytes): {fx.what}")
        for n, a in fx.tensors:
            lines.append(f"  {n} {a.shape[0]}x{a.shape[1]}")
        lines.append("")
    lines.append(f"total {total} bytes")
    with open(os.path.join(OUT, "MANIFEST.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(fixtures)} fixtures ({total} bytes) to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
