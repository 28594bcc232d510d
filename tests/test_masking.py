"""MLM and MAM corruption: ratios, spans, 80/10/10 splits, padding, determinism, losses."""
import pytest
import torch
import torch.nn.functional as F

from ctal_bench.data.text import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS
from ctal_bench.errors import UserError
from ctal_bench.train.masking import IGNORE_INDEX, mam_loss, mask_audio_spans, mask_tokens, mlm_loss

torch.set_num_threads(1)
VOCAB = 1000
PAD_VALUE = -7.0  # padded frames hold a sentinel so that any write to them shows


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def audio_batch(lengths: list[int], seed: int = 0):
    """Frames that encode (utterance, frame): value b * 10_000 + t + 1 on every feature."""
    T = max(lengths)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(T) < lengths_t[:, None]
    code = torch.arange(len(lengths))[:, None] * 10_000 + torch.arange(T) + 1  # (B, T)
    audio = code[..., None].float().expand(-1, -1, 160).clone()
    audio[~mask] = PAD_VALUE
    return audio, mask


def realistic_lengths(n: int, seed: int) -> list[int]:
    """Utterances of 1.5 to 8 s at 100 frames/s, like the embedded and IEMOCAP data."""
    return torch.randint(150, 800, (n,), generator=gen(seed)).tolist()


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    out, start = [], None
    for t, on in enumerate(row.tolist() + [False]):
        if on and start is None:
            start = t
        elif not on and start is not None:
            out.append((start, t - start))
            start = None
    return out


def token_batch(seed: int, B: int = 64, L: int = 40):
    """<s> w ... w </s> <pad>...; some rows also contain <unk> inside the text."""
    g = gen(seed)
    lengths = torch.randint(5, L + 1, (B,), generator=g)
    tokens = torch.randint(len(SPECIAL_TOKENS), VOCAB, (B, L), generator=g)
    positions = torch.arange(L)
    mask = positions < lengths[:, None]
    tokens[:, 0] = CLS_ID
    tokens[positions == (lengths - 1)[:, None]] = SEP_ID
    tokens[~mask] = PAD_ID
    return tokens, mask


# ---- masked acoustic modelling ---------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.15, 0.5])
def test_mam_chosen_fraction_matches_ratio(ratio):
    audio, mask = audio_batch(realistic_lengths(64, seed=1))
    fractions = []
    for seed in range(5):
        _, chosen = mask_audio_spans(audio, mask, ratio, 20, 50, gen(seed))
        fractions.append(chosen.sum().item() / mask.sum().item())
    # per-utterance rounding of the span count is the only source of error; it averages out
    assert all(abs(f - ratio) < 0.015 for f in fractions), fractions
    assert abs(sum(fractions) / len(fractions) - ratio) < 0.006, fractions


@pytest.mark.parametrize("ratio", [0.15, 0.5])
def test_mam_spans_are_contiguous_of_one_length_and_inside_real_frames(ratio):
    lengths = realistic_lengths(32, seed=2) + [10, 35, 60]  # short ones clip the span
    audio, mask = audio_batch(lengths)
    inputs, chosen = mask_audio_spans(audio, mask, ratio, 20, 50, gen(3))
    assert not (chosen & ~mask).any(), "a padded frame was chosen"
    assert torch.equal(inputs[~mask], audio[~mask]), "a padded frame was modified"
    for b, n in enumerate(lengths):
        spans = runs(chosen[b])
        if not spans:
            continue
        span_lengths = {length for _, length in spans}
        assert len(span_lengths) == 1, f"utterance {b}: runs of several lengths {spans}"
        span = span_lengths.pop()
        assert 20 <= span <= 50 or span == n, f"utterance {b}: span {span}"
        assert len(spans) == min(round(ratio * n / span), (n + 1) // (span + 1))
        assert spans[-1][0] + span <= n


def test_mam_utterance_shorter_than_a_span():
    audio, mask = audio_batch([12, 300])
    _, chosen = mask_audio_spans(audio, mask, 0.6, 20, 50, gen(0))
    # round(0.6 * 12 / 12) = 1 span clipped to the whole 12-frame utterance
    assert chosen[0].tolist() == [True] * 12 + [False] * 288
    _, chosen = mask_audio_spans(audio, mask, 0.15, 20, 50, gen(0))
    assert not chosen[0].any()  # round(0.15) = 0 spans


def test_mam_spans_reach_both_ends_of_the_utterance():
    audio, mask = audio_batch([200] * 64)
    chosen = torch.stack([mask_audio_spans(audio, mask, 0.5, 20, 50, gen(s))[1] for s in range(10)])
    hits = chosen.flatten(0, 1).float().mean(0)  # (T,) how often each frame is chosen
    assert hits[0] > 0 and hits[199] > 0, "placement never reaches an end"
    # edge frames are rarer (only a span starting or ending there covers them), but placement
    # is symmetric and the interior is covered at about the ratio
    assert abs(hits[:100].mean() - hits[100:].mean()) < 0.03
    assert hits[50:150].min() > 0.35 and hits[50:150].max() < 0.65, hits[50:150]


def test_mam_80_10_10_and_random_frames_come_from_the_same_utterance():
    lengths = realistic_lengths(64, seed=4)
    audio, mask = audio_batch(lengths)
    zeroed = replaced = kept = 0
    for seed in range(4):
        inputs, chosen = mask_audio_spans(audio, mask, 0.5, 20, 50, gen(seed))
        untouched = (inputs == audio).all(-1)
        assert untouched[~chosen].all(), "a frame that was not chosen changed"
        is_zero = (inputs == 0).all(-1) & chosen
        is_replaced = chosen & ~untouched & ~is_zero
        zeroed += is_zero.sum().item()
        kept += (chosen & untouched).sum().item()
        replaced += is_replaced.sum().item()
        # a replacement frame decodes to the same utterance and one of its real frames
        code = inputs[..., 0][is_replaced].long() - 1
        utterance, frame = code // 10_000, code % 10_000
        b_index = is_replaced.nonzero()[:, 0]
        assert torch.equal(utterance, b_index)
        assert (frame < torch.tensor(lengths)[b_index]).all()
    total = zeroed + replaced + kept
    assert total > 50_000
    assert abs(zeroed / total - 0.8) < 0.01
    assert abs(replaced / total - 0.1) < 0.01
    assert abs(kept / total - 0.1) < 0.01


def test_mam_is_deterministic_given_the_seed():
    audio, mask = audio_batch(realistic_lengths(16, seed=5))
    a = mask_audio_spans(audio, mask, 0.15, 20, 50, gen(7))
    b = mask_audio_spans(audio, mask, 0.15, 20, 50, gen(7))
    c = mask_audio_spans(audio, mask, 0.15, 20, 50, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mam_rejects_bad_arguments():
    audio, mask = audio_batch([100, 80])
    with pytest.raises(UserError, match="mask_ratio"):
        mask_audio_spans(audio, mask, 1.5, 20, 50, gen(0))
    with pytest.raises(UserError, match="span_min"):
        mask_audio_spans(audio, mask, 0.15, 50, 20, gen(0))
    holes = mask.clone()
    holes[0, 10] = False
    with pytest.raises(ValueError, match="prefix"):
        mask_audio_spans(audio, holes, 0.15, 20, 50, gen(0))


@pytest.mark.cuda
def test_masks_from_a_cpu_generator_are_the_same_on_cuda():
    audio, mask = audio_batch(realistic_lengths(8, seed=6))
    cpu = mask_audio_spans(audio, mask, 0.15, 20, 50, gen(1))
    gpu = mask_audio_spans(audio.cuda(), mask.cuda(), 0.15, 20, 50, gen(1))
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.equal(cpu[0], gpu[0].cpu())
    tokens, tmask = token_batch(0)
    cpu = mask_tokens(tokens, tmask, 0.15, VOCAB, gen(2))
    gpu = mask_tokens(tokens.cuda(), tmask.cuda(), 0.15, VOCAB, gen(2))
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


def test_mam_loss_counts_only_chosen_frames():
    target = torch.randn(2, 6, 160, generator=gen(0))
    chosen = torch.zeros(2, 6, dtype=torch.bool)
    chosen[0, 1:3] = True
    chosen[1, 4] = True
    pred = target.clone()
    pred[~chosen] += 100.0  # wrong everywhere that does not count
    assert mam_loss(pred, target, chosen).item() == 0.0
    pred[chosen] += 0.5  # every chosen feature off by 0.5
    assert mam_loss(pred, target, chosen).item() == pytest.approx(0.5)
    pred[0, 1, :80] += 1.0  # half the features of one of 3 chosen frames off by 1.5
    expected = (3 * 160 * 0.5 + 80 * 1.0) / (3 * 160)
    assert mam_loss(pred, target, chosen).item() == pytest.approx(expected)
    nothing = torch.zeros_like(chosen)
    assert mam_loss(pred, target, nothing).item() == 0.0


# ---- masked language modelling ---------------------------------------------------------------

def test_mlm_chooses_15_percent_of_eligible_tokens_and_never_specials_or_padding():
    chosen_count = eligible_count = 0
    for seed in range(10):
        tokens, mask = token_batch(seed)
        inputs, labels = mask_tokens(tokens, mask, 0.15, VOCAB, gen(100 + seed))
        chosen = labels != IGNORE_INDEX
        special = (tokens == PAD_ID) | (tokens == CLS_ID) | (tokens == SEP_ID)
        assert not (chosen & (special | ~mask)).any(), "a special token or padding was chosen"
        assert torch.equal(inputs[~chosen], tokens[~chosen]), "an unchosen token changed"
        assert torch.equal(labels[chosen], tokens[chosen])
        eligible = mask & ~special
        chosen_count += chosen.sum().item()
        eligible_count += eligible.sum().item()
    assert eligible_count > 10_000
    assert abs(chosen_count / eligible_count - 0.15) < 0.01


def test_mlm_80_10_10():
    masked = randomised = kept = 0
    for seed in range(20):
        tokens, mask = token_batch(seed, B=128)
        inputs, labels = mask_tokens(tokens, mask, 0.15, VOCAB, gen(seed))
        chosen = labels != IGNORE_INDEX
        new = inputs[chosen]
        masked += (new == MASK_ID).sum().item()
        kept += (new == labels[chosen]).sum().item()
        swapped = new[(new != MASK_ID) & (new != labels[chosen])]
        randomised += swapped.numel()
        in_range = (swapped >= len(SPECIAL_TOKENS)) & (swapped < VOCAB)
        assert in_range.all(), "a random replacement is a special token or outside the vocabulary"
    total = masked + randomised + kept
    assert total > 7_000
    assert abs(masked / total - 0.8) < 0.02
    assert abs(randomised / total - 0.1) < 0.015  # a random id equal to the original counts as kept
    assert abs(kept / total - 0.1) < 0.015


def test_mlm_is_deterministic_given_the_seed():
    tokens, mask = token_batch(0)
    a = mask_tokens(tokens, mask, 0.15, VOCAB, gen(3))
    b = mask_tokens(tokens, mask, 0.15, VOCAB, gen(3))
    c = mask_tokens(tokens, mask, 0.15, VOCAB, gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mlm_rejects_bad_arguments():
    tokens, mask = token_batch(0)
    with pytest.raises(UserError, match="mlm_prob"):
        mask_tokens(tokens, mask, -0.1, VOCAB, gen(0))
    with pytest.raises(UserError, match="special"):
        mask_tokens(tokens, mask, 0.15, len(SPECIAL_TOKENS), gen(0))


def test_mlm_loss():
    labels = torch.tensor([[IGNORE_INDEX, 7, IGNORE_INDEX], [3, IGNORE_INDEX, IGNORE_INDEX]])
    perfect = torch.full((2, 3, 10), -1e4)
    perfect[0, 1, 7] = perfect[1, 0, 3] = 1e4
    assert mlm_loss(perfect, labels).item() == 0.0
    logits = torch.randn(2, 3, 10, generator=gen(0))
    expected = F.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    nothing = torch.full_like(labels, IGNORE_INDEX)
    assert mlm_loss(logits, nothing).item() == 0.0
