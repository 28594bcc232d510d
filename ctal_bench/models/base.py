"""What every model returns, so the training loop never special-cases one, and the dropout every
model uses."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctal_bench.data.text import SPECIAL_TOKENS
from ctal_bench.errors import UserError


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
