"""What every model returns, so the training loop never special-cases one."""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
