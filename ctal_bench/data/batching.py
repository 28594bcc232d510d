"""Length-bucketed batches with padding masks: the one input type every model takes."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

AUDIO_DIM = 160  # 80 log-mel + 80 deltas


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (B, L) long: <s> ... </s>, padded with PAD_ID
    token_mask: torch.Tensor  # (B, L) bool, True = real token
    audio: torch.Tensor  # (B, T, 160) float32, zero where padded
    audio_mask: torch.Tensor  # (B, T) bool, True = real frame
    targets: torch.Tensor | None  # (B,) long class / speaker index, or float sentiment
    uids: tuple[str, ...]
    speakers: tuple[str, ...]

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, tokens=move(self.tokens), token_mask=move(self.token_mask),
                       audio=move(self.audio), audio_mask=move(self.audio_mask),
                       targets=move(self.targets))

    def __len__(self) -> int:
        return self.tokens.shape[0]
