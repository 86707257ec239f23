"""Rotary position embeddings, computed the way Hugging Face does so fp32 results match bitwise."""

from __future__ import annotations

import math

import torch


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    # Llama 3.1 "llama3" scaling: long wavelengths slowed by `factor`, short ones kept,
    # a smooth blend between the two thresholds.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables for every position up to max_positions. The model looks up one step's
    rows once (`tables`) and every layer rotates its q and k together (`rotate`)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        inv_freq = inverse_frequencies(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_positions).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        # sin with rotate_half's sign folded in: [-sin, sin] over the two halves. Then
        # rotate_half(x) * sin == roll(x, half) * signed_sin exactly (only signs move), so
        # the result matches Hugging Face's q * cos + rotate_half(q) * sin bit for bit.
        sin = emb.sin()
        half = head_dim // 2
        self.register_buffer("signed_sin", torch.cat((-sin[:, :half], sin[:, half:]), -1),
                             persistent=False)

    def tables(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) of `positions` [T], shaped [T, 1, D] in `dtype`."""
        return (self.cos[positions].unsqueeze(1).to(dtype),
                self.signed_sin[positions].unsqueeze(1).to(dtype))

    @staticmethod
    def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: [T, heads, D] (q and k heads side by side) -> x rotated by its positions."""
        cos, signed_sin = tables
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
