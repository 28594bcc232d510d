"""CTAL: a text stream, a cross-modal audio stream, pre-training heads and the fusion head.

Read top to bottom: attention, feed-forward and layers, the two streams, the heads, the size
presets, then the model and its pre-training view. Facts follow the authors' release (Li et
al., EMNLP 2021), with two switches that reproduce its quirks: ``audio_causal`` (their audio
self-attention is causal as a side effect of ``is_decoder=True``) and ``released_cosine`` (their
orthogonality loss divides by the audio norm twice).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.errors import UserError
from ctal_bench.models.base import Dropout, ModelOutput, check_outputs, fill_preset, preset_for
from ctal_bench.models.layers import FeedForward, MultiHeadAttention, masked_max
from ctal_bench.registry import MODELS

HEADS = ("fusion", "concat", "text", "audio")
COSINE_EPS = 1e-8  # guards the orthogonality loss against an all-zero pooled vector


class TextLayer(nn.Module):
    """RoBERTa's post-LN layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, token_mask)))
        return self.ffn_norm(x + self.ffn(x))


class AudioLayer(nn.Module):
    """Post-LN layer: self-attention over audio, cross-attention to the text, FFN.

    With ``cross_attention=False`` the cross-attention sub-layer is skipped entirely, so the
    output does not depend on the text (pre-training the streams apart).
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 causal: bool):
        super().__init__()
        self.causal = causal
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.self_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.cross_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, audio_mask: torch.Tensor, text: torch.Tensor | None,
                token_mask: torch.Tensor | None, cross_attention: bool) -> torch.Tensor:
        x = self.self_norm(x + self.dropout(self.self_attn(x, audio_mask, causal=self.causal)))
        if cross_attention:
            attended = self.cross_attn(x, token_mask, memory=text)
            x = self.cross_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.ffn(x))


class TextStream(nn.Module):
    """Token + learned position embeddings, LayerNorm, dropout, then post-LN layers."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.max_len = cfg.max_text_len
        self.token_embedding = nn.Embedding(vocab_size, cfg.d_model)
        self.position_embedding = nn.Embedding(cfg.max_text_len, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TextLayer(cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout)
                                    for _ in range(cfg.text_layers))

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        if L > self.max_len:
            raise UserError(f"batch has {L} tokens per transcript; "
                            f"model.max_text_len is {self.max_len}")
        positions = torch.arange(L, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (B, L, D)
        x = self.dropout(self.norm(x))
        for layer in self.layers:
            x = layer(x, token_mask)
        return x


class AudioStream(nn.Module):
    """Linear(160 -> d) + learned positions, LayerNorm, dropout, then cross-modal layers.

    ``audio_dim`` is 160 times ``data.frame_stack``: stacked frames are projected as one.
    """

    def __init__(self, cfg: ModelConfig, audio_dim: int = AUDIO_DIM):
        super().__init__()
        self.max_frames = cfg.max_audio_frames
        self.input_projection = nn.Linear(audio_dim, cfg.d_model)
        self.position_embedding = nn.Embedding(cfg.max_audio_frames, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            AudioLayer(cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout,
                       causal=cfg.audio_causal)
            for _ in range(cfg.audio_layers))

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor,
                text: torch.Tensor | None = None, token_mask: torch.Tensor | None = None,
                cross_attention: bool = True) -> torch.Tensor:
        T = audio.shape[1]
        if T > self.max_frames:
            raise UserError(f"batch has {T} audio frames per utterance; "
                            f"model.max_audio_frames is {self.max_frames}")
        if cross_attention and (text is None or token_mask is None):
            raise ValueError("cross_attention=True needs the text stream's output and token_mask")
        positions = torch.arange(T, device=audio.device)
        x = self.input_projection(audio) + self.position_embedding(positions)  # (B, T, D)
        x = self.dropout(self.norm(x))
        for layer in self.layers:
            x = layer(x, audio_mask, text, token_mask, cross_attention)
        return x


class MLMHead(nn.Module):
    """RoBERTa's LM head: dense -> GELU -> LayerNorm -> decoder (tied to the embeddings) + bias."""

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, vocab_size)  # weight tied by CTAL.__init__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))


class MAMHead(nn.Module):
    """Masked acoustic modelling head: Linear -> GELU -> LayerNorm -> Linear(d -> 160), or to the
    width of a stacked frame."""

    def __init__(self, d_model: int, audio_dim: int = AUDIO_DIM):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, audio_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))


def abs_cosine(audio: torch.Tensor, text: torch.Tensor, released: bool) -> torch.Tensor:
    """Batch mean of |cos(audio, text)|.

    ``released=True`` reproduces the authors' bug: (a . t) / (|a| |a|) instead of / (|a| |t|).
    """
    audio_norm = audio.norm(dim=-1)
    text_norm = audio_norm if released else text.norm(dim=-1)
    dot = (audio * text).sum(dim=-1)
    return (dot / (audio_norm * text_norm).clamp_min(COSINE_EPS)).abs().mean()


class FusionHead(nn.Module):
    """Pools each stream, combines them as ``mode`` says, then Linear(2d, 2d) -> tanh -> Linear.

    T = tanh(W_t H_t), A = tanh(W_a H_a); text pool = T[:, 0] (<s>), audio pool = attention
    pooling (a learned scoring vector, softmax over real frames); max = masked max (over the text
    tokens after <s>, as the release does). Its layers keep PyTorch's default (fan-in) init, as
    the release's new head does: at small widths N(0, 0.02) would start it 2.5-3.6x smaller and
    let the orthogonality loss's gradient dominate the task's.
    fusion: z = [t_pool + a_pool ; t_max + a_max]; concat: z = [t_pool ; a_pool];
    text: z = [t_pool ; t_max]; audio: z = [a_pool ; a_max].
    """

    def __init__(self, cfg: ModelConfig, n_outputs: int):
        super().__init__()
        d = cfg.d_model
        self.mode = cfg.head
        self.orthogonality_weight = cfg.orthogonality_weight if cfg.head == "fusion" else 0.0
        self.released_cosine = cfg.released_cosine
        self.uses_text = cfg.head != "audio"
        self.uses_audio = cfg.head != "text"
        if self.uses_text:
            self.text_projection = nn.Linear(d, d)
        if self.uses_audio:
            self.audio_projection = nn.Linear(d, d)
            self.audio_scorer = nn.Linear(d, 1, bias=False)  # a bias would cancel in the softmax
        self.fuse = nn.Linear(2 * d, 2 * d)
        self.classifier = nn.Linear(2 * d, n_outputs, bias=False)

    def forward(self, text: torch.Tensor | None, token_mask: torch.Tensor,
                audio: torch.Tensor | None, audio_mask: torch.Tensor) -> ModelOutput:
        if self.uses_text:
            projected = torch.tanh(self.text_projection(text))  # (B, L, D)
            # The release max-pools the tokens after <s>: <s> is already the pooled vector.
            t_pool, t_max = projected[:, 0], masked_max(projected[:, 1:], token_mask[:, 1:])
        if self.uses_audio:
            projected = torch.tanh(self.audio_projection(audio))  # (B, T, D)
            scores = self.audio_scorer(projected).squeeze(-1)  # (B, T)
            weights = scores.masked_fill(~audio_mask, float("-inf")).softmax(dim=1)
            a_pool = torch.einsum("bt,btd->bd", weights, projected)
            a_max = masked_max(projected, audio_mask)

        if self.mode == "fusion":
            z = torch.cat([t_pool + a_pool, t_max + a_max], dim=-1)  # (B, 2D)
        elif self.mode == "concat":
            z = torch.cat([t_pool, a_pool], dim=-1)
        elif self.mode == "text":
            z = torch.cat([t_pool, t_max], dim=-1)
        else:
            z = torch.cat([a_pool, a_max], dim=-1)

        embedding = torch.tanh(self.fuse(z))
        logits = self.classifier(embedding)
        if self.orthogonality_weight:
            aux = self.orthogonality_weight * (abs_cosine(a_pool, t_pool, self.released_cosine)
                                               + abs_cosine(a_max, t_max, self.released_cosine))
        else:
            aux = logits.new_zeros(())
        return ModelOutput(logits=logits, embedding=embedding, aux_loss=aux)


# Presets: tiny/base/large are the paper's sizes; mini and small are our own CPU sizes.
# Parameter counts with the default positions (128 text, 3,000 audio), fusion head, 4 outputs,
# at vocab 1,000 (the embedded default) / 30,000 (paper scale); tests check them analytically.
PRESETS: dict[str, dict[str, int]] = {
    # 0.44M / 2.32M. One layer per stream: on the embedded default it matched two layers
    # (5 seeds, docs/scales.md) at 60% of the cost of a CPU step.
    "mini": dict(d_model=64, n_heads=4, text_layers=1, audio_layers=1, ffn_dim=256),
    # 4.27M / 9.87M
    "small": dict(d_model=192, n_heads=4, text_layers=3, audio_layers=3, ffn_dim=768),
    # 57.8M / 80.1M
    "tiny": dict(d_model=768, n_heads=12, text_layers=3, audio_layers=3, ffn_dim=3072),
    # 107.4M / 129.7M
    "base": dict(d_model=768, n_heads=12, text_layers=6, audio_layers=6, ffn_dim=3072),
    # 206.6M / 228.9M
    "large": dict(d_model=768, n_heads=12, text_layers=12, audio_layers=12, ffn_dim=3072),
}


def resolve_size(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with its preset applied: each size field left at 0 takes the preset's value."""
    preset = preset_for(cfg, PRESETS, "ctal")
    resolved = fill_preset(cfg, preset, list(preset))
    if resolved.orthogonality_weight < 0:
        raise UserError(f"model.orthogonality_weight must be >= 0, got {resolved.orthogonality_weight}")
    if resolved.head not in HEADS:
        raise UserError(f"unknown model.head {resolved.head!r}; expected one of {', '.join(HEADS)}")
    return resolved


@MODELS.register("ctal")
class CTAL(nn.Module):
    """Text stream -> cross-modal audio stream -> one task head (``cfg.head``).

    ``forward`` fine-tunes and predicts; ``pretraining()`` feeds MLM + MAM. Every utterance
    needs a real token after <s> (``text.encode`` always ends with </s>) and one real frame:
    attention and max-pooling over nothing are undefined.
    """

    presets = PRESETS
    version = 2  # bump when a change alters what a config trains: cells of the old version rerun
    pretrainable = True  # has MLM and MAM heads (see ctal_bench/pretrain.py)
    resolve = staticmethod(resolve_size)  # the preset's sizes filled in (what a cell's hash covers)

    def __init__(self, cfg: ModelConfig, n_outputs: int, vocab_size: int, audio_dim: int = AUDIO_DIM):
        super().__init__()
        check_outputs(vocab_size, n_outputs)
        self.cfg = resolve_size(cfg)
        self.vocab_size = vocab_size
        self.text_stream = TextStream(self.cfg, vocab_size)
        self.audio_stream = AudioStream(self.cfg, audio_dim)
        self.mlm_head = MLMHead(self.cfg.d_model, vocab_size)
        self.mam_head = MAMHead(self.cfg.d_model, audio_dim)
        for part in (self.text_stream, self.audio_stream, self.mlm_head, self.mam_head):
            part.apply(self._init_weights)
        self.head = FusionHead(self.cfg, n_outputs)  # PyTorch's default init (see FusionHead)
        self.mlm_head.decoder.weight = self.text_stream.token_embedding.weight  # tied, as RoBERTa

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT/RoBERTa initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def parameter_count(self) -> int:
        """Distinct parameters (the tied MLM decoder is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, batch: Batch) -> ModelOutput:
        text = self.text_stream(batch.tokens, batch.token_mask)
        audio = None
        if self.head.uses_audio:
            audio = self.audio_stream(batch.audio, batch.audio_mask, text, batch.token_mask)
        return self.head(text, batch.token_mask, audio, batch.audio_mask)

    def pretraining(self) -> "Pretraining":
        """The parts that pre-training trains, as one module sharing these parameters."""
        return Pretraining(self)


class Pretraining(nn.Module):
    """CTAL's two streams and its MLM and MAM heads (shared, not copied), with the pre-training
    pass as ``forward``.

    A module of its own so that DistributedDataParallel can wrap it: DDP syncs gradients only for
    calls through ``forward``, and expects a gradient for every parameter it wraps, which CTAL's
    fine-tuning head never gets in pre-training. Its state dict is CTAL's without the head.
    """

    def __init__(self, model: CTAL):
        super().__init__()
        self.vocab_size = model.vocab_size
        self.text_stream = model.text_stream
        self.audio_stream = model.audio_stream
        self.mlm_head = model.mlm_head
        self.mam_head = model.mam_head

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, audio: torch.Tensor,
                audio_mask: torch.Tensor, cross_modal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM logits (B, L, V) and MAM predictions (B, T, audio_dim) for masked inputs.

        ``cross_modal=False`` runs the audio stream without cross-attention to the text.
        """
        text = self.text_stream(tokens, token_mask)
        hidden = self.audio_stream(audio, audio_mask, text, token_mask, cross_attention=cross_modal)
        return self.mlm_head(text), self.mam_head(hidden)
