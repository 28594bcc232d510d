"""Audio-only baseline: a small transformer over the acoustic frames, pooled, MLP head."""
from __future__ import annotations

import torch.nn as nn

from ctal_bench.baselines.common import Baseline, MLPHead, TransformerEncoder
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.models.base import ModelOutput
from ctal_bench.models.layers import mean_max_pool
from ctal_bench.registry import MODELS

# The same widths as CTAL's audio stream at each size (ctal_bench/models/ctal.py); "base" is
# CTAL-base's (Li et al. 2021: d 768, 12 heads, 6 layers, FFN 3072), without cross-attention.
# Parameters at 4 outputs (no vocabulary).
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(d_model=64, n_heads=4, audio_layers=1, ffn_dim=256),  # 73k
    "small": dict(d_model=192, n_heads=4, audio_layers=3, ffn_dim=768),  # 1.48M
    "base": dict(d_model=768, n_heads=12, audio_layers=6, ffn_dim=3072),  # 44.4M
}


@MODELS.register("audio_only")
class AudioOnly(Baseline):
    """Audio only: frame transformer, masked mean+max pooling, MLP head."""

    model_name = "audio_only"
    presets = PRESETS

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__(cfg, n_outputs, vocab_size)
        d = self.cfg.d_model
        self.input_projection = nn.Linear(audio_dim, d)
        self.encoder = TransformerEncoder(self.cfg, self.cfg.audio_layers)
        self.head = MLPHead(2 * d, d, n_outputs, self.cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        hidden = self.encoder(self.input_projection(batch.audio), batch.audio_mask)  # (B, T, D)
        return self.head(mean_max_pool(hidden, batch.audio_mask))
