"""TFN (Zadeh et al., EMNLP 2017): the outer product of per-modality vectors, each with a 1 appended.

The 1s keep the unimodal terms next to the bimodal ones: the fused tensor holds z_t, z_a and
every product z_t[i] * z_a[j]. A post-fusion MLP reads the flattened tensor.
"""
from __future__ import annotations

import torch

from ctal_bench.baselines.common import AudioSubNet, Baseline, MLPHead, TextSubNet, append_one
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.models.base import ModelOutput
from ctal_bench.registry import MODELS

# d_model = token embedding width and per-frame audio width; hidden = text LSTM width;
# text_layers = LSTM depth; ffn_dim = post-fusion MLP width. Fixed per size: text_out and
# audio_out, the widths of the two vectors whose (text_out + 1) x (audio_out + 1) outer product
# is the fused tensor.
# "base": embedding 300 (TFN's GloVe vectors); the rest is MMSA's TFN config for MOSI
# (hidden_dims text 128 / audio 32, text_out 32, post_fusion_dim 64).
# Parameters at vocab 1,000 / 30,000, 4 outputs.
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(d_model=32, hidden=32, text_layers=1, ffn_dim=32, text_out=16, audio_out=8),  # 53k / 0.98M
    "small": dict(d_model=128, hidden=96, text_layers=1, ffn_dim=64, text_out=32, audio_out=16),  # 0.28M / 4.00M
    "base": dict(d_model=300, hidden=128, text_layers=1, ffn_dim=64, text_out=32, audio_out=32),  # 0.67M / 9.37M
}


@MODELS.register("tfn")
class TFN(Baseline):
    """Tensor Fusion Network: LSTM text and pooled-MLP audio vectors, outer product, MLP."""

    model_name = "tfn"
    presets = PRESETS

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__(cfg, n_outputs, vocab_size)
        fixed = self.fixed
        c = self.cfg
        self.text_subnet = TextSubNet(vocab_size, c.d_model, c.hidden, c.text_layers, fixed["text_out"],
                                      c.dropout)
        self.audio_subnet = AudioSubNet(audio_dim, c.d_model, fixed["audio_out"], c.dropout)
        fused_dim = (fixed["text_out"] + 1) * (fixed["audio_out"] + 1)
        self.head = MLPHead(fused_dim, c.ffn_dim, n_outputs, c.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        text = append_one(self.text_subnet(batch.tokens, batch.token_mask))  # (B, dt + 1)
        audio = append_one(self.audio_subnet(batch.audio, batch.audio_mask))  # (B, da + 1)
        fused = torch.einsum("bi,bj->bij", text, audio)  # (B, dt + 1, da + 1)
        return self.head(fused.flatten(start_dim=1))  # (B, (dt + 1) * (da + 1))
