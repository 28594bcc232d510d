"""What every model shares: what it returns (so the training loop never special-cases one), its
named size presets, and the dropout it uses."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctal_bench.config import Config, ModelConfig
from ctal_bench.data import batching
from ctal_bench.data.text import SPECIAL_TOKENS
from ctal_bench.errors import UserError
from ctal_bench.registry import MODELS


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, n_outputs); regression uses n_outputs = 1
    embedding: torch.Tensor  # (B, E) the pre-logit vector (verification embeds with it)
    aux_loss: torch.Tensor  # scalar added to the task loss (CTAL's orthogonality loss; else 0)


def check_outputs(vocab_size: int, n_outputs: int) -> None:
    """What every model's constructor needs of the task and the vocabulary."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(f"vocabulary of {vocab_size} has no room beyond the "
                        f"{len(SPECIAL_TOKENS)} special tokens (data.vocab_size)")
    assert n_outputs >= 1, f"n_outputs must be at least 1, got {n_outputs}"



def build_model(cfg: Config, n_outputs: int, vocab_size: int) -> nn.Module:
    """``cfg``'s model, initialised from ``run.seed``, reading frames as wide as ``cfg.data`` makes them."""
    torch.manual_seed(cfg.run.seed)
    return MODELS.get(cfg.model.name)(cfg.model, n_outputs, vocab_size, batching.audio_dim(cfg.data))


def preset_for(cfg: ModelConfig, presets: dict[str, dict[str, int]], model: str) -> dict[str, int]:
    """The preset ``cfg.size`` names (a UserError with close names for an unknown one)."""
    if cfg.size not in presets:
        close = difflib.get_close_matches(cfg.size, presets, n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(presets)}"
        raise UserError(f"unknown model.size {cfg.size!r} for {model}; {hint}")
    return presets[cfg.size]


def fill_preset(cfg: ModelConfig, preset: dict[str, int], fields) -> ModelConfig:
    """``cfg`` with each size field in ``fields`` left at 0 taking the preset's value."""
    for key in fields:
        if getattr(cfg, key) < 0:
            raise UserError(f"model.{key} must be positive (0 = take it from the preset), got {getattr(cfg, key)}")
    resolved = dataclasses.replace(cfg, **{k: getattr(cfg, k) or preset[k] for k in fields})
    if "n_heads" in fields and resolved.d_model % resolved.n_heads:
        raise UserError(f"model.d_model {resolved.d_model} must be divisible by model.n_heads {resolved.n_heads}")
    return resolved


class Dropout(nn.Module):
    """``nn.Dropout`` with its mask drawn from uniform noise on the CPU.

    torch's CPU dropout draws its mask with ``bernoulli_``, about twice the cost of ``torch.rand``:
    it was 9% of a mini CTAL training step and 15% of a mini MulT step. Each element is kept with
    probability 1 - p and scaled by 1 / (1 - p), as in ``nn.Dropout``; only the random stream
    differs. On CUDA torch's fused kernel is the faster one and is used.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, training=True)
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # 0 or 1 / (1 - p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
