"""Late fusion: a recurrent encoder per modality, each pooled, concatenated, then an MLP.

The LF-DNN of MMSA and MultiBench's late fusion (per-modality GRU encoders run on packed
sequences, concatenation, MLP head). Each modality is encoded without ever seeing the other;
they meet only in the MLP.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ctal_bench.baselines.common import Baseline, MLPHead, RecurrentEncoder
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.models.base import Dropout, ModelOutput
from ctal_bench.models.layers import mean_max_pool
from ctal_bench.registry import MODELS

# d_model = token embedding width; hidden = GRU width per direction (both modalities);
# text_layers / audio_layers = GRU depth; ffn_dim = width of the post-fusion MLP.
# "base": text embedding 300 (the GloVe width of the MMSA / MultiBench text inputs); GRU 128 and
# post-fusion 128 = MMSA's lf_dnn config (hidden_dims[0] = 128, post_fusion_dim = 128, MOSEI).
# Parameters at vocab 1,000 / 30,000, 4 outputs.
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(d_model=32, hidden=32, text_layers=1, audio_layers=1, ffn_dim=64),  # 0.10M / 1.03M
    "small": dict(d_model=128, hidden=96, text_layers=1, audio_layers=1, ffn_dim=128),  # 0.52M / 4.23M
    "base": dict(d_model=300, hidden=128, text_layers=1, audio_layers=1, ffn_dim=128),  # 1.00M / 9.70M
}


@MODELS.register("late_fusion")
class LateFusion(Baseline):
    """Late fusion (LF-DNN / MultiBench): BiGRU per modality, mean+max pooled, concatenated, MLP."""

    model_name = "late_fusion"
    presets = PRESETS

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__(cfg, n_outputs, vocab_size)
        c = self.cfg
        self.token_embedding = nn.Embedding(vocab_size, c.d_model)
        self.dropout = Dropout(c.dropout)
        self.text_encoder = RecurrentEncoder(c.d_model, c.hidden, c.text_layers, cell="gru",
                                             bidirectional=True, dropout=c.dropout)
        self.audio_encoder = RecurrentEncoder(audio_dim, c.hidden, c.audio_layers, cell="gru",
                                              bidirectional=True, dropout=c.dropout)
        # Each modality: [mean ; max] of (2 directions * hidden) -> 4 * hidden.
        self.head = MLPHead(8 * c.hidden, c.ffn_dim, n_outputs, c.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        text, _ = self.text_encoder(self.dropout(self.token_embedding(batch.tokens)), batch.token_mask)
        audio, _ = self.audio_encoder(batch.audio, batch.audio_mask)  # (B, T, 2H)
        pooled = torch.cat([mean_max_pool(text, batch.token_mask),
                            mean_max_pool(audio, batch.audio_mask)], dim=-1)  # (B, 8H)
        return self.head(pooled)
