"""What every model returns, so the training loop never special-cases one."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, n_outputs); regression uses n_outputs = 1
    embedding: torch.Tensor  # (B, E) the pre-logit vector (verification embeds with it)
    aux_loss: torch.Tensor  # scalar added to the task loss (CTAL's orthogonality loss; else 0)
