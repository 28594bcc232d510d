"""Text-only baseline: a small transformer over the transcript's tokens, pooled, MLP head."""
from __future__ import annotations

import torch.nn as nn

from ctal_bench.baselines.common import Baseline, MLPHead, TransformerEncoder
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.models.base import ModelOutput
from ctal_bench.models.layers import mean_max_pool
from ctal_bench.registry import MODELS

# The same widths as one stream of CTAL at each size (ctal_bench/models/ctal.py), so that the
# comparison isolates the audio stream and the cross-modal part; "base" is CTAL-base's text
# stream (Li et al. 2021: d 768, 12 heads, 6 layers, FFN 3072). Parameters at vocab 1,000 /
# 30,000, 4 outputs (``bench.py list models`` recounts them).
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(d_model=64, n_heads=4, text_layers=1, ffn_dim=256),  # 0.13M / 1.98M
    "small": dict(d_model=192, n_heads=4, text_layers=3, ffn_dim=768),  # 1.64M / 7.21M
    "base": dict(d_model=768, n_heads=12, text_layers=6, ffn_dim=3072),  # 45.1M / 67.3M
}


@MODELS.register("text_only")
class TextOnly(Baseline):
    """Transcript only: token transformer, masked mean+max pooling, MLP head."""

    model_name = "text_only"
    presets = PRESETS

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__(cfg, n_outputs, vocab_size)
        d = self.cfg.d_model
        self.token_embedding = nn.Embedding(vocab_size, d)
        # The encoder scales its input by sqrt(d) (as MulT/fairseq do), so unit-variance rows.
        nn.init.normal_(self.token_embedding.weight, std=d ** -0.5)
        self.encoder = TransformerEncoder(self.cfg, self.cfg.text_layers)
        self.head = MLPHead(2 * d, d, n_outputs, self.cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        hidden = self.encoder(self.token_embedding(batch.tokens), batch.token_mask)  # (B, L, D)
        return self.head(mean_max_pool(hidden, batch.token_mask))
