"""Pieces shared by tools/gen_golden.py and tools/gen_checkpoints.py.

write_ttxf: the fixture format read by tests/support/fixture.hpp: b"TTXF1\\n", then per tensor a
text line "<name> <rows> <cols>\\n" and rows*cols float64 little-endian values, row-major.
llama3_scaled_inv_freq: transformers' _compute_llama3_parameters applied to RoPE frequencies.
"""
import math

import numpy as np
import torch


def write_ttxf(path, tensors):
    """tensors: (name, array-like) pairs; 0-d and 1-d become one row, >2-d keep the last axis."""
    with open(path, "wb") as f:
        f.write(b"TTXF1\n")
        for name, a in tensors:
            a = np.asarray(a, dtype="<f8")
            if a.ndim < 2:
                a = a.reshape(1, -1)
            elif a.ndim > 2:
                a = a.reshape(-1, a.shape[-1])
            f.write(f"{name} {a.shape[0]} {a.shape[1]}\n".encode())
            f.write(np.ascontiguousarray(a).tobytes())
    return path


def llama3_scaled_inv_freq(inv_freq, factor, low_freq_factor, high_freq_factor, old_context_len):
    """transformers modeling_rope_utils._compute_llama3_parameters, on the given frequencies."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)
