"""Pieces shared by the late-fusion baselines: size presets, masked pooling, encoders, heads.

Every baseline takes the same ``Batch`` as CTAL (token ids with <s> first, acoustic frames of
160 x ``data.frame_stack`` dimensions, True-is-real masks) and returns a ``ModelOutput``; like
CTAL, it is built with that frame width (``audio_dim``). Padding never reaches a result:
recurrent encoders never read padding, attention uses key-padding masks, and pooling
looks at real positions only. So an utterance gets the same output alone or inside any batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctal_bench.config import ModelConfig
from ctal_bench.errors import UserError
from ctal_bench.models.base import Dropout, ModelOutput, check_outputs, fill_preset, preset_for
from ctal_bench.models.layers import MultiHeadAttention, mean_max_pool

# ModelConfig fields that size a model; 0 means "take the preset's value".
SIZE_FIELDS = ("d_model", "n_heads", "text_layers", "audio_layers", "ffn_dim", "hidden", "rank")
# CTAL's switches: a baseline has none of these parts, so a changed value would be ignored.
CTAL_ONLY = ("head", "audio_causal", "orthogonality_weight", "released_cosine")


# ---- sizes ---------------------------------------------------------------------------------------

def resolve_size(cfg: ModelConfig, presets: dict[str, dict[str, int]],
                 model: str) -> tuple[ModelConfig, dict[str, int]]:
    """``cfg`` with its preset applied, and the preset's fixed widths that are not config fields.

    A size field left at 0 takes the preset's value. A size field the model does not use must
    stay 0, and CTAL's switches at their defaults: silently ignoring ``model.rank=8`` on a model
    without a rank would mislabel a run.
    """
    preset = preset_for(cfg, presets, model)
    used = [k for k in SIZE_FIELDS if k in preset]
    for key in SIZE_FIELDS:
        value = getattr(cfg, key)
        if value < 0:
            raise UserError(f"model.{key} must be positive (0 = take it from the preset), got {value}")
        if value and key not in preset:
            raise UserError(f"model.{key}={value} is not used by {model}; "
                            f"its size fields are {', '.join(f'model.{k}' for k in used)}")
    default = ModelConfig()
    for key in CTAL_ONLY:
        if getattr(cfg, key) != getattr(default, key):
            raise UserError(f"model.{key}={getattr(cfg, key)!r} is a CTAL switch; {model} has no such "
                            f"part (leave it at {getattr(default, key)!r})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {cfg.dropout}")
    resolved = fill_preset(cfg, preset, used)
    fixed = {k: v for k, v in preset.items() if k not in SIZE_FIELDS}
    return resolved, fixed


class Baseline(nn.Module):
    """What every baseline shares: named sizes (``presets``, resolved and checked here, the
    preset's fixed widths in ``self.fixed``) and none of CTAL's switches (``unused_fields``: a
    scale's values for them do not reach a baseline; set any other way they are an error)."""

    model_name: str  # as registered, for messages
    presets: dict[str, dict[str, int]]
    unused_fields = CTAL_ONLY
    version = 1  # bump when a change alters what a config trains: cells of the old version rerun

    @classmethod
    def resolve(cls, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` with the preset's sizes filled in (what a cell's hash covers)."""
        return resolve_size(cfg, cls.presets, cls.model_name)[0]

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int):
        super().__init__()
        check_outputs(vocab_size, n_outputs)
        self.cfg, self.fixed = resolve_size(cfg, self.presets, self.model_name)


def baseline_output(logits: torch.Tensor, embedding: torch.Tensor) -> ModelOutput:
    """Baselines have no auxiliary loss: a zero scalar keeps the training loop uniform."""
    return ModelOutput(logits=logits, embedding=embedding, aux_loss=logits.new_zeros(()))


def append_one(z: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, D + 1) with a leading constant 1 (TFN's and LMF's [1 ; z])."""
    return F.pad(z, (1, 0), value=1.0)


# ---- recurrent encoder ---------------------------------------------------------------------------

def reorder(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) reordered along time by a (B, T) index: out[b, t] = x[b, index[b, t]]."""
    B, T = index.shape
    rows = (torch.arange(B, device=x.device)[:, None] * T + index).flatten()
    return x.flatten(0, 1).index_select(0, rows).view_as(x)


class RecurrentEncoder(nn.Module):
    """LSTM or GRU, optionally bidirectional, whose recurrence never reads padding.

    Each direction runs over the padded batch rather than a packed one, which is 2-3x faster on
    a CPU (measured): padding only follows a sequence's real steps, so the forward direction's
    outputs at real steps never see it, and the backward direction runs forwards over each
    sequence reversed within its own length. The result equals a packed bidirectional RNN's.

    Returns the per-step outputs (B, T, directions * hidden), zero at padded steps, and the last
    layer's final state (B, directions * hidden): the state after each sequence's own last real
    step (and, backwards, after its first), never a padded "last timestep".
    """

    def __init__(self, input_dim: int, hidden: int, layers: int, cell: str = "lstm",
                 bidirectional: bool = False, dropout: float = 0.0):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.directions = 2 if bidirectional else 1
        # layers[i][d]: layer i, direction d (0 forwards, 1 backwards).
        self.layers = nn.ModuleList(
            nn.ModuleList(rnn(input_dim if i == 0 else self.directions * hidden, hidden, batch_first=True)
                          for _ in range(self.directions))
            for i in range(layers))
        self.dropout = Dropout(dropout)  # between stacked layers, as nn.LSTM / nn.GRU place it

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = mask.sum(dim=1)  # (B,)
        assert bool((lengths >= 1).all()), "every sequence needs at least one real step"
        steps = torch.arange(x.shape[1], device=x.device)
        # Reverses each sequence within its length and leaves its padding where it is.
        reverse = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, T)
        last = lengths - 1
        batch = torch.arange(x.shape[0], device=x.device)
        # The recurrence runs in float32 even under bf16 autocast: RNN kernels do not all take
        # bf16, and a long recurrence in bf16 drifts.
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.float()
            for i, directions in enumerate(self.layers):
                if i:
                    h = self.dropout(h)
                outputs, finals = [], []
                for d, rnn in enumerate(directions):
                    out, _ = rnn(reorder(h, reverse) if d else h)
                    finals.append(out[batch, last])  # the output after the last real step is the state
                    outputs.append(reorder(out, reverse) if d else out)
                h = torch.cat(outputs, dim=-1)
        return h.masked_fill(~mask[..., None], 0.0), torch.cat(finals, dim=-1)


# ---- transformer encoder (MulT's pre-LN layer) ---------------------------------------------------

def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """(length, dim) fixed sine/cosine positions (Vaswani et al. 2017); no maximum length."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=device) / max(half - 1, 1))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * frequencies  # (L, half)
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (L, 2 * half)
    return F.pad(table, (0, dim - 2 * half))  # an odd dim gets one zero column


class TransformerLayer(nn.Module):
    """Pre-LN layer as in MulT (Tsai et al. 2019): x + attn(LN(x), LN(source)), x + FFN(LN(x)).

    Self-attention when called without ``source``; cross-modal attention (queries from ``x``,
    keys and values from the other modality) with it. MulT normalises both inputs with one shared
    LayerNorm; the two modalities have different statistics, so the source gets its own.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 cross: bool):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.source_norm = nn.LayerNorm(d_model) if cross else None
        self.attn = MultiHeadAttention(d_model, n_heads, attention_dropout)  # key padding, no causal mask
        self.ffn_norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, ffn_dim)
        self.down = nn.Linear(ffn_dim, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor | None = None,
                source_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attn_norm(x)
        if self.source_norm is None:
            attended = self.attn(h, mask)
        else:
            attended = self.attn(h, source_mask, memory=self.source_norm(source))
        x = x + self.dropout(attended)
        h = self.dropout(F.relu(self.up(self.ffn_norm(x))))
        return x + self.dropout(self.down(h))


class TransformerEncoder(nn.Module):
    """MulT's encoder: scale by sqrt(d), add sinusoidal positions, dropout, layers, final LN.

    With ``cross=True`` each layer attends from ``x`` to ``source`` (which gets the same scaling
    and positions); otherwise it is a plain self-attention encoder. ``cfg`` gives the dropout
    and the attention dropout (as CTAL's: at 0 the CPU uses the fused attention kernel).
    """

    def __init__(self, cfg: ModelConfig, layers: int, cross: bool = False):
        super().__init__()
        d_model = cfg.d_model
        self.scale = math.sqrt(d_model)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout,
                                                     cfg.attention_dropout, cross)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        positions = sinusoidal_positions(x.shape[1], x.shape[2], x.device)  # (T, D)
        return self.dropout(self.scale * x + positions.to(x.dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor | None = None,
                source_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self._embed(x)
        source = None if source is None else self._embed(source)
        for layer in self.layers:
            x = layer(x, mask, source, source_mask)
        return self.norm(x)


# ---- heads ---------------------------------------------------------------------------------------

class MLPHead(nn.Module):
    """Dropout -> Linear -> ReLU -> dropout -> Linear -> ReLU = the embedding; Linear -> logits.

    The post-fusion network of TFN and LF-DNN (two ReLU layers, then the output layer).
    """

    def __init__(self, input_dim: int, width: int, n_outputs: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.layer_1 = nn.Linear(input_dim, width)
        self.layer_2 = nn.Linear(width, width)
        self.classifier = nn.Linear(width, n_outputs)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        h = F.relu(self.layer_1(self.dropout(z)))
        embedding = F.relu(self.layer_2(self.dropout(h)))
        return baseline_output(self.classifier(embedding), embedding)


class SubNet(nn.Module):
    """TFN/LMF's pre-fusion subnetwork: norm -> dropout -> three Linear + ReLU layers.

    The reference code computes the dropout and then feeds the *un-dropped* tensor to the first
    layer; here the dropped tensor goes on. LayerNorm replaces their BatchNorm so that no output
    depends on the other examples in a batch.
    """

    def __init__(self, input_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.dropout = Dropout(dropout)
        self.layers = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.dropout(self.norm(x)))


class TextSubNet(nn.Module):
    """TFN/LMF's text subnetwork: token embedding -> LSTM -> final state -> dropout -> Linear."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, out_dim: int,
                 dropout: float):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = RecurrentEncoder(embed_dim, hidden, layers, cell="lstm", dropout=dropout)
        self.dropout = Dropout(dropout)
        self.projection = nn.Linear(hidden, out_dim)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        _, final = self.lstm(self.token_embedding(tokens), token_mask)  # (B, hidden)
        return self.projection(self.dropout(final))


class AudioSubNet(nn.Module):
    """Audio subnetwork for TFN/LMF: per-frame Linear + ReLU, masked mean and max, then SubNet.

    TFN and LMF average the acoustic features over time and feed the mean to SubNet. Our
    features are mean/variance normalised per utterance, so their time average is zero for every
    utterance: the frames are lifted through a non-linearity before pooling instead.
    """

    def __init__(self, input_dim: int, frame_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.frame_projection = nn.Linear(input_dim, frame_dim)
        self.subnet = SubNet(2 * frame_dim, out_dim, dropout)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
        frames = F.relu(self.frame_projection(audio))  # (B, T, frame_dim)
        return self.subnet(mean_max_pool(frames, audio_mask))  # (B, out_dim)
