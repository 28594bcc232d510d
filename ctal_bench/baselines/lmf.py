"""LMF (Liu et al., ACL 2018): TFN's tensor fusion computed through rank-r modality factors.

With h_m = [1 ; z_m], TFN's fused tensor times a weight tensor W equals, when W has rank r,
sum_i w_i * prod_m (h_m W_m^(i)) + b: one (d_m + 1) x out factor per modality and rank
component, so the outer product is never formed. Every factor, the fusion weights and the bias
are parameters of this module and all are trained (the reference training script leaves
``fusion_weights`` and ``fusion_bias`` out of its optimiser).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ctal_bench.baselines.common import AudioSubNet, Baseline, TextSubNet, append_one, baseline_output
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.models.base import Dropout, ModelOutput
from ctal_bench.registry import MODELS

# d_model = token embedding width and per-frame audio width; hidden = text LSTM width;
# text_layers = LSTM depth; rank = fusion rank. Fixed per size: text_out / audio_out (subnet
# output widths) and fusion_out (the fused vector's width; LMF fuses straight to the task
# output, we fuse to a vector and add a linear classifier, which is again a rank-r multilinear
# map, so that verification gets an embedding).
# "base": rank 4 (Liu et al. 2018; MMSA's lmf config for MOSEI); embedding 300 (GloVe); text
# LSTM 128 and audio 16 (MMSA hidden_dims); text_out 64 = text hidden / 2 (the LMF repository's
# training scripts). Parameters at vocab 1,000 / 30,000, 4 outputs.
PRESETS: dict[str, dict[str, int]] = {
    "mini": dict(d_model=32, hidden=32, text_layers=1, rank=4, text_out=16, audio_out=8,
                 fusion_out=16),  # 49k / 0.98M
    "small": dict(d_model=128, hidden=96, text_layers=1, rank=4, text_out=48, audio_out=16,
                  fusion_out=32),  # 0.25M / 3.97M
    "base": dict(d_model=300, hidden=128, text_layers=1, rank=4, text_out=64, audio_out=16,
                 fusion_out=64),  # 0.61M / 9.31M
}


class LowRankFusion(nn.Module):
    """sum_i w_i * prod_m ([1 ; z_m] @ factor_m[:, i, :]) + bias, for any number of modalities."""

    def __init__(self, input_dims: tuple[int, ...], rank: int, out_dim: int):
        super().__init__()
        # factor_m: (d_m + 1, rank, out); xavier-normal as in the reference (its (rank, d_m + 1,
        # out) layout has the same fan-in + fan-out, hence the same scale).
        self.factors = nn.ParameterList(nn.Parameter(torch.empty(d + 1, rank, out_dim)) for d in input_dims)
        self.fusion_weights = nn.Parameter(torch.empty(rank))
        self.fusion_bias = nn.Parameter(torch.zeros(out_dim))
        for factor in self.factors:
            nn.init.xavier_normal_(factor)
        # The reference's xavier-normal on a (1, rank) matrix: std = sqrt(2 / (1 + rank)).
        nn.init.normal_(self.fusion_weights, std=math.sqrt(2.0 / (1 + rank)))

    def forward(self, *modalities: torch.Tensor) -> torch.Tensor:
        assert len(modalities) == len(self.factors), \
            f"{len(self.factors)} factors but {len(modalities)} modalities"
        product = None
        for z, factor in zip(modalities, self.factors):
            projected = torch.einsum("bi,iro->bro", append_one(z), factor)  # (B, rank, out)
            product = projected if product is None else product * projected
        return torch.einsum("r,bro->bo", self.fusion_weights, product) + self.fusion_bias  # (B, out)


@MODELS.register("lmf")
class LMF(Baseline):
    """Low-rank Multimodal Fusion: TFN's subnetworks, rank-r modality factors instead of the tensor."""

    model_name = "lmf"
    presets = PRESETS

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__(cfg, n_outputs, vocab_size)
        fixed = self.fixed
        c = self.cfg
        self.text_subnet = TextSubNet(vocab_size, c.d_model, c.hidden, c.text_layers, fixed["text_out"],
                                      c.dropout)
        self.audio_subnet = AudioSubNet(audio_dim, c.d_model, fixed["audio_out"], c.dropout)
        self.fusion = LowRankFusion((fixed["text_out"], fixed["audio_out"]), c.rank, fixed["fusion_out"])
        self.dropout = Dropout(c.dropout)
        self.classifier = nn.Linear(fixed["fusion_out"], n_outputs)

    def forward(self, batch: Batch) -> ModelOutput:
        text = self.text_subnet(batch.tokens, batch.token_mask)  # (B, text_out)
        audio = self.audio_subnet(batch.audio, batch.audio_mask)  # (B, audio_out)
        embedding = self.fusion(text, audio)  # (B, fusion_out)
        return baseline_output(self.classifier(self.dropout(embedding)), embedding)
