"""Layers every model builds on: multi-head attention (self or cross, on
``scaled_dot_product_attention``), the position-wise feed-forward block, and pooling over the
real (unpadded) positions of a sequence."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctal_bench.models.base import Dropout


class MultiHeadAttention(nn.Module):
    """Self-attention (``memory=None``) or cross-attention to ``memory``, with key padding.

    ``key_mask`` is (B, S) bool, True = a real key; ``causal`` additionally hides later keys.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        assert d_model % n_heads == 0, f"d_model {d_model} is not divisible by n_heads {n_heads}"
        self.n_heads = n_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        x = x.view(B, T, self.n_heads, D // self.n_heads)  # (B, T, heads, head_dim)
        return x.transpose(1, 2)  # (B, heads, T, head_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, memory: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        source = x if memory is None else memory
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(source))
        v = self._split_heads(self.value(source))
        mask = key_mask[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries
        if causal:
            T, S = x.shape[1], source.shape[1]
            later = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            mask = mask & later  # (B, 1, T, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, D)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(d_model, ffn_dim)
        self.down = nn.Linear(ffn_dim, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) bool -> (B, D): mean over the real positions only."""
    weights = mask.to(x.dtype)[..., None]  # (B, T, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) bool -> (B, D): max over the real positions only."""
    return x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)


def mean_max_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, 2D): [masked mean ; masked max]."""
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)
