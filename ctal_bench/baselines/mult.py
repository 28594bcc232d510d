"""MulT (Tsai et al., ACL 2019): cross-modal transformers in both directions, then self-attention.

Text attends to audio and audio attends to text (each a stack of cross-modal layers whose keys
and values come from the other modality), then a self-attention transformer runs over each
cross-modal output (MulT's "memory"); both are pooled, concatenated and read by a residual MLP.

Two defects of the reference code are not copied: its ``attn_mask`` (on by default) hides
"future" positions across modalities, whose time axes do not even correspond, and it has no
key-padding mask, so padding is attended to. Here attention is bidirectional with key-padding
masks, and pooling is a masked mean (the reference takes the last timestep, padding included).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctal_bench.baselines.common import Baseline, TransformerEncoder, baseline_output
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.models.base import Dropout, ModelOutput
from ctal_bench.models.layers import masked_mean
from ctal_bench.registry import MODELS

# d_model = the shared width d of every transformer; text_layers / audio_layers = cross-modal
# layers into text / into audio; ffn_dim = feed-forward width (4d in MulT). Fixed per size:
# memory_layers (self-attention layers over each cross-modal output), embed_dim (token embedding
# width before the text Conv1d) and the Conv1d kernel sizes.
# "base" = the official repository's defaults (main.py / src/models.py): d 30, 5 heads,
# nlevels 5 cross-modal layers, memory max(nlevels, 3) = 5 layers, FFN 4d = 120, Conv1d kernel 1,
# 300-d GloVe text input. Parameters at vocab 1,000 / 30,000, 4 outputs.
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(d_model=32, n_heads=4, text_layers=1, audio_layers=1, ffn_dim=128, memory_layers=1,
                 embed_dim=32, text_kernel=3, audio_kernel=3),  # 0.11M / 1.04M
    "small": dict(d_model=64, n_heads=4, text_layers=3, audio_layers=3, ffn_dim=256, memory_layers=2,
                  embed_dim=64, text_kernel=3, audio_kernel=3),  # 0.64M / 2.50M
    "base": dict(d_model=30, n_heads=5, text_layers=5, audio_layers=5, ffn_dim=120, memory_layers=5,
                 embed_dim=300, text_kernel=1, audio_kernel=1),  # 0.55M / 9.25M
}


class MaskedConv1d(nn.Conv1d):
    """Conv1d along time with "same" padding that sees zeros, never padding, beyond each sequence.

    Padded positions are zeroed first, so a real position near the end of a short sequence gets
    the same value whatever (and however much) padding follows it.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int):
        assert kernel_size % 2 == 1, f"kernel size {kernel_size} must be odd to keep the length"
        # No bias, as in MulT's projections.
        super().__init__(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~mask[..., None], 0.0)  # (B, T, C_in)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, C_in, T) -> (B, T, C_out)


@MODELS.register("mult")
class MulT(Baseline):
    """Multimodal Transformer: cross-modal attention both ways, self-attention memories, residual MLP."""

    model_name = "mult"
    presets = PRESETS

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__(cfg, n_outputs, vocab_size)
        fixed = self.fixed
        c = self.cfg
        d = c.d_model
        self.token_embedding = nn.Embedding(vocab_size, fixed["embed_dim"])
        self.embed_dropout = Dropout(c.dropout)
        self.text_projection = MaskedConv1d(fixed["embed_dim"], d, fixed["text_kernel"])
        self.audio_projection = MaskedConv1d(audio_dim, d, fixed["audio_kernel"])
        self.text_with_audio = TransformerEncoder(c, c.text_layers, cross=True)
        self.audio_with_text = TransformerEncoder(c, c.audio_layers, cross=True)
        self.text_memory = TransformerEncoder(c, fixed["memory_layers"])
        self.audio_memory = TransformerEncoder(c, fixed["memory_layers"])
        self.proj1 = nn.Linear(2 * d, 2 * d)
        self.proj2 = nn.Linear(2 * d, 2 * d)
        self.out_dropout = Dropout(c.dropout)
        self.classifier = nn.Linear(2 * d, n_outputs)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position states: text after attending to audio (B, L, d), audio after text (B, T, d)."""
        tokens = self.embed_dropout(self.token_embedding(batch.tokens))  # (B, L, embed_dim)
        text = self.text_projection(tokens, batch.token_mask)  # (B, L, d)
        audio = self.audio_projection(batch.audio, batch.audio_mask)  # (B, T, d)
        text_states = self.text_with_audio(text, batch.token_mask, audio, batch.audio_mask)
        audio_states = self.audio_with_text(audio, batch.audio_mask, text, batch.token_mask)
        return (self.text_memory(text_states, batch.token_mask),
                self.audio_memory(audio_states, batch.audio_mask))

    def forward(self, batch: Batch) -> ModelOutput:
        text, audio = self.encode(batch)
        pooled = torch.cat([masked_mean(text, batch.token_mask),
                            masked_mean(audio, batch.audio_mask)], dim=-1)  # (B, 2d)
        # MulT's residual block: proj2(dropout(relu(proj1(h)))) + h.
        embedding = self.proj2(self.out_dropout(F.relu(self.proj1(pooled)))) + pooled
        return baseline_output(self.classifier(embedding), embedding)
