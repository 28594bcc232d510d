"""Pre-training corruption and losses: masked language modelling and masked acoustic modelling.

Everything is vectorised over the batch and drawn from one ``torch.Generator``. Draws happen on
the generator's device and are moved to the data's device, so a CPU generator gives the same
masks for CPU and CUDA batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ctal_bench.data.text import MASK_ID, SPECIAL_TOKENS
from ctal_bench.errors import UserError

IGNORE_INDEX = -100  # label of a token that is not predicted (F.cross_entropy's default)
N_SPECIAL = len(SPECIAL_TOKENS)  # ids below this are special tokens
# BERT's split of the chosen positions: 80% masked, 10% replaced by something random, 10% kept.
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1


def _uniform(shape: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def mask_tokens(tokens: torch.Tensor, token_mask: torch.Tensor, prob: float, vocab_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each real non-special token is chosen with probability ``prob``.

    Of the chosen: 80% -> <mask>, 10% -> a random non-special id, 10% kept. Special tokens
    (<pad>, <s>, </s>, <unk>, <mask>) and padding are never chosen.
    Returns (inputs, labels): labels hold the original id where chosen, IGNORE_INDEX elsewhere.
    """
    if not 0.0 <= prob <= 1.0:
        raise UserError(f"pretrain.mlm_prob must be in [0, 1], got {prob}")
    if vocab_size <= N_SPECIAL:
        raise UserError(f"vocabulary of {vocab_size} has no room beyond the "
                        f"{N_SPECIAL} special tokens (data.vocab_size)")
    choose, action = _uniform((2, *tokens.shape), generator, tokens.device)  # each (B, L)
    random_ids = _randint(N_SPECIAL, vocab_size, tuple(tokens.shape), generator, tokens.device)

    chosen = token_mask & (tokens >= N_SPECIAL) & (choose < prob)
    to_mask = chosen & (action < MASK_FRACTION)
    to_random = chosen & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    inputs = torch.where(to_mask, MASK_ID, tokens)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(chosen, tokens, IGNORE_INDEX)
    return inputs, labels


def mask_audio_spans(audio: torch.Tensor, audio_mask: torch.Tensor, ratio: float,
                     span_min: int, span_max: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CTAL's masked acoustic modelling corruption, one span length per utterance.

    For an utterance of n real frames: span ~ U[span_min, span_max] (clipped to n), and
    round(ratio * n / span) spans (round half to even) are placed uniformly at random inside the
    real frames, without overlap and at least one frame apart, so every masked run is exactly one
    span and about ``ratio`` of the frames are chosen. (The released code lets spans overlap,
    which masks noticeably less than ``ratio``: about 1 - exp(-ratio).) Chosen frames are 80%
    zeroed, 10% replaced by a random real frame of the same utterance, 10% kept.

    ``audio_mask`` must mark a prefix of each row (padding at the end), as batching produces.
    Returns (inputs, chosen): corrupted (B, T, F) features and the (B, T) bool chosen frames.
    """
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"pretrain.mask_ratio must be in [0, 1], got {ratio}")
    if not 1 <= span_min <= span_max:
        raise UserError(f"MAM spans need 1 <= pretrain.span_min <= pretrain.span_max, "
                        f"got {span_min} and {span_max}")
    B, T, n_features = audio.shape
    device = audio.device
    positions = torch.arange(T, device=device)
    lengths = audio_mask.sum(dim=1)  # (B,)
    if not torch.equal(audio_mask, positions < lengths[:, None]):
        raise ValueError("audio_mask must mark a prefix of real frames in every row")

    # One span length per utterance, and how many such spans fit with a gap between them.
    span = _randint(span_min, span_max + 1, (B,), generator, device)
    span = torch.minimum(span, lengths).clamp_min(1)
    n_spans = torch.round(ratio * lengths / span).long()
    n_spans = torch.minimum(n_spans, (lengths + 1) // (span + 1))
    # A span shorter than span_min only happens when it covers the whole utterance (one span),
    # so this static bound needs no device sync.
    max_spans = max(1, (T + 1) // (span_min + 1))

    # Stars and bars: the slack frames beyond spans and one-frame separators fall into n + 1 gaps.
    # Choosing n distinct sorted slots v_0 < ... < v_{n-1} in [0, slack + n) gives the starts
    # v_k + k * span; every placement is equally likely.
    slack = lengths - n_spans * span - (n_spans - 1).clamp_min(0)
    n_slots = slack + n_spans  # (B,), <= lengths
    keys = _uniform((B, T), generator, device).masked_fill(positions >= n_slots[:, None], 2.0)
    slots = keys.argsort(dim=1)[:, :max_spans]  # (B, max_spans): random distinct slots first
    rank = torch.arange(max_spans, device=device)
    is_span = rank < n_spans[:, None]  # (B, max_spans)
    slots = slots.masked_fill(~is_span, T).sort(dim=1).values  # unused ranks sort last
    starts = torch.where(is_span, slots + rank * span[:, None], T)  # (B, max_spans)
    ends = torch.where(is_span, starts + span[:, None], T)

    # Paint the spans with a difference array: +1 at each start, -1 at each end, cumulative sum.
    boundary = torch.zeros(B, T + 1, dtype=torch.long, device=device)
    boundary.scatter_add_(1, starts, is_span.long())
    boundary.scatter_add_(1, ends, -is_span.long())
    chosen = boundary.cumsum(dim=1)[:, :T] > 0  # (B, T)

    # 80 / 10 / 10 per chosen frame, as the released code decides it frame by frame.
    action = _uniform((B, T), generator, device)
    source = (_uniform((B, T), generator, device) * lengths.clamp_min(1)[:, None]).long()
    source = torch.minimum(source, (lengths - 1).clamp_min(0)[:, None])  # (B, T) real frame index
    random_frames = audio.gather(1, source[..., None].expand(B, T, n_features))  # (B, T, F)
    to_zero = chosen & (action < MASK_FRACTION)
    to_random = chosen & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    inputs = audio.masked_fill(to_zero[..., None], 0.0)
    inputs = torch.where(to_random[..., None], random_frames, inputs)
    return inputs, chosen


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor,
             denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (B, L, V) vs (B, L) averaged over labelled tokens; 0 when none is labelled.

    ``denominator`` replaces the number of labelled tokens: a rank of a data-parallel run that
    holds a share of the batch divides by the whole batch's count (see pretrain.pretrain_losses).
    """
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    if denominator is None:
        denominator = (labels != IGNORE_INDEX).sum().clamp_min(1)
    return total / denominator


def mam_loss(pred: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor,
             denominator: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between (B, T, F) prediction and target, averaged over chosen frames and features.

    ``denominator`` replaces the number of chosen frames times features, as in ``mlm_loss``.
    """
    weight = chosen[..., None].float()
    total = ((pred.float() - target.float()).abs() * weight).sum()
    if denominator is None:
        denominator = (chosen.sum() * pred.shape[-1]).clamp_min(1)
    return total / denominator
