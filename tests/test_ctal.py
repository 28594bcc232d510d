"""CTAL: shapes, gradients, parameter counts, fusion head by hand, masks, stream independence;
the dropout every model uses."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from batches import random_batch

from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.data.text import SPECIAL_TOKENS
from ctal_bench.errors import UserError
from ctal_bench.models.base import Dropout
from ctal_bench.models.ctal import CTAL, PRESETS, resolve_size
from ctal_bench.registry import MODELS
from ctal_bench.train.optim import adamw

torch.set_num_threads(1)
VOCAB = 50
N_OUT = 4
SMALL = ModelConfig(size="mini", d_model=32, n_heads=4, text_layers=1, audio_layers=2, ffn_dim=64,
                    max_text_len=16, max_audio_frames=64)
TOKEN_LENGTHS = (8, 5, 3)
FRAME_LENGTHS = (40, 25, 12)


def make_model(seed: int = 0, n_outputs: int = N_OUT, audio_dim: int = AUDIO_DIM, **changes) -> CTAL:
    torch.manual_seed(seed)
    return CTAL(dataclasses.replace(SMALL, **changes), n_outputs, VOCAB, audio_dim).eval()


def make_batch(seed: int = 0, token_lengths=TOKEN_LENGTHS, frame_lengths=FRAME_LENGTHS) -> Batch:
    return random_batch(VOCAB, token_lengths, frame_lengths, seed, n_classes=N_OUT)


def streams(model: CTAL, batch: Batch, cross_attention: bool = True):
    text = model.text_stream(batch.tokens, batch.token_mask)
    audio = model.audio_stream(batch.audio, batch.audio_mask, text, batch.token_mask,
                               cross_attention=cross_attention)
    return text, audio


# ---- shapes, gradients, registry ---------------------------------------------------------------

def test_registered_under_its_name():
    assert MODELS.get("ctal") is CTAL


@pytest.mark.parametrize("head", ["fusion", "concat", "text", "audio"])
def test_forward_backward_every_head(head):
    model = make_model(head=head).train()
    batch = make_batch()
    out = model(batch)
    d = model.cfg.d_model
    assert out.logits.shape == (3, N_OUT) and out.embedding.shape == (3, 2 * d)
    assert out.aux_loss.shape == ()
    if head != "fusion":
        assert out.aux_loss.item() == 0.0
    loss = F.cross_entropy(out.logits, batch.targets) + out.aux_loss
    loss.backward()
    trained = [model.text_stream, model.head] if head == "text" else [
        model.text_stream, model.audio_stream, model.head]
    for module in trained:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    if head == "text":  # the audio stream is not run at all
        assert all(p.grad is None for p in model.audio_stream.parameters())


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_regression_output_and_pretrain_shapes(frame_stack):
    """MAM predicts whole model frames: 160-d, or the width of stacked frames (data.frame_stack)."""
    width = frame_stack * AUDIO_DIM
    model = make_model(n_outputs=1, audio_dim=width)
    batch = random_batch(VOCAB, TOKEN_LENGTHS, FRAME_LENGTHS, n_classes=N_OUT, audio_dim=width)
    assert model(batch).logits.shape == (3, 1)
    for cross_modal in (True, False):
        mlm, mam = model.pretraining()(batch.tokens, batch.token_mask, batch.audio,
                                       batch.audio_mask, cross_modal=cross_modal)
        assert mlm.shape == (3, 8, VOCAB) and mam.shape == (3, 40, width)


def test_pretraining_shares_every_parameter_but_the_fine_tuning_head():
    model = make_model()
    own = dict(model.named_parameters())
    shared = dict(model.pretraining().named_parameters())
    assert set(shared) == {name for name in own if not name.startswith("head.")}
    assert all(p is own[name] for name, p in shared.items())


def test_a_few_steps_fit_a_fixed_batch():
    """Gradients reach everything that matters: the fused head can memorise 3 examples."""
    model = make_model(dropout=0.0).train()
    batch = make_batch()
    optimiser = adamw(model, lr=1e-2, weight_decay=0.01)
    losses = []
    for _ in range(30):
        out = model(batch)
        loss = F.cross_entropy(out.logits, batch.targets)
        (loss + out.aux_loss).backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0], losses


# ---- sizes and parameter counts ----------------------------------------------------------------

def expected_parameters(cfg: ModelConfig, vocab: int, n_outputs: int) -> int:
    """Count implied by the architecture, written out from DESIGN.md."""
    d, f = cfg.d_model, cfg.ffn_dim
    linear = lambda n_in, n_out, bias=True: n_in * n_out + (n_out if bias else 0)  # noqa: E731
    norm = 2 * d
    attention = 4 * linear(d, d)
    ffn = linear(d, f) + linear(f, d)
    text_layer = attention + norm + ffn + norm
    audio_layer = (attention + norm) * 2 + ffn + norm  # self-attention, cross-attention, FFN
    text = vocab * d + cfg.max_text_len * d + norm + cfg.text_layers * text_layer
    audio = linear(AUDIO_DIM, d) + cfg.max_audio_frames * d + norm + cfg.audio_layers * audio_layer
    mlm = linear(d, d) + norm + vocab  # decoder weight tied to the token embedding; own bias
    mam = linear(d, d) + norm + linear(d, AUDIO_DIM)
    pooling = {"fusion": 2 * linear(d, d) + d, "concat": 2 * linear(d, d) + d,
               "text": linear(d, d), "audio": linear(d, d) + d}[cfg.head]
    head = pooling + linear(2 * d, 2 * d) + linear(2 * d, n_outputs, bias=False)
    return text + audio + mlm + mam + head


@pytest.mark.parametrize("size", ["tiny", "base", "large", "mini", "small"])
@pytest.mark.parametrize("vocab", [1000, 30000])
def test_preset_parameter_counts(size, vocab):
    with torch.device("meta"):  # no memory for the 200M-parameter large preset
        model = CTAL(ModelConfig(size=size), N_OUT, vocab)
    cfg = model.cfg
    if size in ("tiny", "base", "large"):
        assert (cfg.d_model, cfg.n_heads, cfg.ffn_dim) == (768, 12, 3072)
        assert cfg.text_layers == cfg.audio_layers == {"tiny": 3, "base": 6, "large": 12}[size]
    assert model.parameter_count() == expected_parameters(cfg, vocab, N_OUT)


@pytest.mark.parametrize("head", ["concat", "text", "audio"])
def test_head_parameter_counts(head):
    model = make_model(head=head, n_outputs=7)
    assert model.parameter_count() == expected_parameters(model.cfg, VOCAB, 7)


def test_mlm_decoder_is_tied_to_the_token_embedding():
    model = make_model()
    assert model.mlm_head.decoder.weight is model.text_stream.token_embedding.weight
    assert model.vocab_size == VOCAB


def test_resolve_size_applies_preset_and_overrides():
    cfg = resolve_size(ModelConfig(size="base", audio_layers=2))
    assert (cfg.d_model, cfg.text_layers, cfg.audio_layers) == (768, 6, 2)
    assert resolve_size(ModelConfig(size="mini")).d_model == PRESETS["mini"]["d_model"]
    assert CTAL.presets is PRESETS
    with pytest.raises(UserError, match="did you mean base"):
        resolve_size(ModelConfig(size="bsae"))
    with pytest.raises(UserError, match="divisible"):
        resolve_size(ModelConfig(size="mini", d_model=30))
    with pytest.raises(UserError, match="model.head"):
        resolve_size(ModelConfig(size="mini", head="late"))
    with pytest.raises(UserError, match="positive"):
        resolve_size(ModelConfig(size="mini", text_layers=-1))


def test_inputs_longer_than_the_positions_are_user_errors():
    model = make_model()
    with pytest.raises(UserError, match="max_audio_frames"):
        model(make_batch(frame_lengths=(65, 3, 3)))
    with pytest.raises(UserError, match="max_text_len"):
        model(make_batch(token_lengths=(17, 3, 3)))


def test_decay_groups_exclude_biases_and_layernorm():
    model = make_model()
    decay, no_decay = adamw(model, lr=1e-3, weight_decay=0.01).param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]).isdisjoint(ids(no_decay["params"]))
    assert ids(decay["params"]) | ids(no_decay["params"]) == ids(model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    norm = model.text_stream.layers[0].attn_norm
    assert ids([norm.weight, norm.bias, model.mlm_head.decoder.bias]) <= ids(no_decay["params"])
    assert ids([model.text_stream.token_embedding.weight, model.head.fuse.weight,
                model.audio_stream.layers[0].cross_attn.query.weight]) <= ids(decay["params"])


# ---- the fusion head against a by-hand computation ----------------------------------------------

def by_hand(model: CTAL, batch: Batch):
    """Pooled vectors one utterance at a time, slicing off the padding instead of masking."""
    text, audio = streams(model, batch)
    head = model.head
    pools = {"t_pool": [], "t_max": [], "a_pool": [], "a_max": []}
    for b in range(len(batch)):
        n_tokens, n_frames = int(batch.token_mask[b].sum()), int(batch.audio_mask[b].sum())
        if head.uses_text:
            t = torch.tanh(head.text_projection(text[b, :n_tokens]))
            pools["t_pool"].append(t[0])
            pools["t_max"].append(t[1:].max(dim=0).values)  # the release leaves <s> out of the max
        if head.uses_audio:
            a = torch.tanh(head.audio_projection(audio[b, :n_frames]))
            weights = torch.softmax(a @ head.audio_scorer.weight[0], dim=0)
            pools["a_pool"].append(weights @ a)
            pools["a_max"].append(a.max(dim=0).values)
    return {k: torch.stack(v) for k, v in pools.items() if v}


@pytest.mark.parametrize("head", ["fusion", "concat", "text", "audio"])
def test_head_logits_match_by_hand(head):
    model = make_model(head=head, seed=1)
    batch = make_batch(seed=1)
    with torch.no_grad():
        out = model(batch)
        p = by_hand(model, batch)
        if head == "fusion":
            z = torch.cat([p["t_pool"] + p["a_pool"], p["t_max"] + p["a_max"]], -1)
        elif head == "concat":
            z = torch.cat([p["t_pool"], p["a_pool"]], -1)
        else:
            assert set(p) == {f"{head[0]}_pool", f"{head[0]}_max"}  # the other stream is unused
            z = torch.cat([p[f"{head[0]}_pool"], p[f"{head[0]}_max"]], -1)
        embedding = torch.tanh(model.head.fuse(z))
    torch.testing.assert_close(out.embedding, embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, model.head.classifier(embedding), atol=1e-5, rtol=1e-5)


def test_orthogonality_loss_is_mean_absolute_cosine():
    model = make_model(seed=2)
    batch = make_batch(seed=2)
    with torch.no_grad():
        p = by_hand(model, batch)
        expected = (F.cosine_similarity(p["a_pool"], p["t_pool"]).abs().mean()
                    + F.cosine_similarity(p["a_max"], p["t_max"]).abs().mean())
        assert model(batch).aux_loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert make_model(seed=2, orthogonality_weight=0.0)(batch).aux_loss.item() == 0.0
        weighted = make_model(seed=2, orthogonality_weight=0.25)(batch).aux_loss.item()
        assert weighted == pytest.approx(0.25 * expected.item(), rel=1e-5)


def test_released_cosine_divides_by_the_audio_norm_twice():
    model = make_model(seed=3, released_cosine=True)
    batch = make_batch(seed=3)
    with torch.no_grad():
        p = by_hand(model, batch)

        def released(a, t):
            return ((a * t).sum(-1) / (a.norm(dim=-1) * a.norm(dim=-1))).abs().mean()

        expected = released(p["a_pool"], p["t_pool"]) + released(p["a_max"], p["t_max"])
        got = model(batch).aux_loss.item()
        correct = make_model(seed=3)(batch).aux_loss.item()
    assert got == pytest.approx(expected.item(), rel=1e-5)
    assert abs(got - correct) > 1e-4, "the released variant should differ from the true cosine"


# ---- attention masks ---------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
def test_audio_causal_flag_controls_attention_to_later_frames(causal):
    model = make_model(seed=4, audio_causal=causal)
    batch = make_batch(seed=4)
    changed = batch.audio.clone()
    changed[0, 20] += 5.0
    with torch.no_grad():
        _, before = streams(model, batch)
        _, after = streams(model, dataclasses.replace(batch, audio=changed))
    earlier = (after[0, :20] - before[0, :20]).abs().max().item()
    assert (after[0, 20:40] - before[0, 20:40]).abs().max() > 1e-3
    if causal:
        assert earlier < 1e-6, "a causal stream let earlier frames see a later one"
    else:
        assert earlier > 1e-3, "a bidirectional stream should let earlier frames see later ones"


def test_padding_changes_nothing_at_real_positions():
    model = make_model(seed=5)
    batch = make_batch(seed=5)
    g = torch.Generator().manual_seed(99)
    tokens = torch.where(batch.token_mask, batch.tokens,
                         torch.randint(len(SPECIAL_TOKENS), VOCAB, batch.tokens.shape, generator=g))
    audio = torch.where(batch.audio_mask[..., None], batch.audio,
                        100 * torch.randn(batch.audio.shape, generator=g))
    noisy = dataclasses.replace(batch, tokens=tokens, audio=audio)
    with torch.no_grad():
        text, audio_hidden = streams(model, batch)
        noisy_text, noisy_audio = streams(model, noisy)
        out, noisy_out = model(batch), model(noisy)
    torch.testing.assert_close(noisy_text[batch.token_mask], text[batch.token_mask])
    torch.testing.assert_close(noisy_audio[batch.audio_mask], audio_hidden[batch.audio_mask])
    for name in ("logits", "embedding", "aux_loss"):
        torch.testing.assert_close(getattr(noisy_out, name), getattr(out, name))


def test_padded_batch_equals_each_utterance_alone():
    model = make_model(seed=6)
    batch = make_batch(seed=6)
    with torch.no_grad():
        together = model(batch).logits
        for b, (n_tokens, n_frames) in enumerate(zip(TOKEN_LENGTHS, FRAME_LENGTHS)):
            alone = Batch(batch.tokens[b:b + 1, :n_tokens], batch.token_mask[b:b + 1, :n_tokens],
                          batch.audio[b:b + 1, :n_frames], batch.audio_mask[b:b + 1, :n_frames],
                          None, uids=("x",), speakers=("x",))
            torch.testing.assert_close(model(alone).logits[0], together[b], atol=1e-5, rtol=1e-5)


# ---- which stream sees what --------------------------------------------------------------------

def test_text_stream_never_sees_audio():
    model = make_model(seed=7)
    batch = make_batch(seed=7)
    other_audio = torch.randn(batch.audio.shape) * batch.audio_mask[..., None]
    with torch.no_grad():
        mlm, mam = model.pretraining()(batch.tokens, batch.token_mask, batch.audio,
                                       batch.audio_mask, cross_modal=True)
        mlm2, mam2 = model.pretraining()(batch.tokens, batch.token_mask, other_audio,
                                         batch.audio_mask, cross_modal=True)
    torch.testing.assert_close(mlm2, mlm, atol=0, rtol=0)
    assert (mam2 - mam).abs().max() > 1e-3


@pytest.mark.parametrize("cross_modal", [True, False])
def test_audio_depends_on_text_only_with_cross_attention(cross_modal):
    model = make_model(seed=8)
    batch = make_batch(seed=8)
    other_tokens = batch.tokens.clone()
    first_word, n_words = len(SPECIAL_TOKENS), VOCAB - len(SPECIAL_TOKENS)
    # another ordinary word at position 1 of every transcript
    other_tokens[:, 1] = (other_tokens[:, 1] - first_word + 1) % n_words + first_word
    with torch.no_grad():
        _, mam = model.pretraining()(batch.tokens, batch.token_mask, batch.audio,
                                     batch.audio_mask, cross_modal=cross_modal)
        _, mam2 = model.pretraining()(other_tokens, batch.token_mask, batch.audio,
                                      batch.audio_mask, cross_modal=cross_modal)
    difference = (mam2 - mam).abs().max().item()
    if cross_modal:
        assert difference > 1e-4
    else:
        assert difference == 0.0


# ---- dropout (every model's) ----------------------------------------------------------------------

def test_dropout_keeps_one_minus_p_scaled_and_passes_the_same_mask_to_the_gradient():
    torch.manual_seed(0)
    dropout = Dropout(0.1).train()
    x = torch.randn(1000, 1000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    # 1e6 draws: the kept share's standard deviation is 3e-4.
    assert abs(kept.float().mean().item() - 0.9) < 3e-3
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)


def test_dropout_is_the_identity_in_eval_and_at_zero_and_rejects_p_outside_0_1():
    x = torch.randn(8, 16)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    for p in (-0.1, 1.0):
        with pytest.raises(UserError, match=r"dropout must be in \[0, 1\)"):
            Dropout(p)


def test_dropout_mask_follows_the_seed():
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    first = Dropout(0.3).train()(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.3).train()(x), first)


def test_fusion_head_keeps_pytorchs_default_init_and_encoders_robertas():
    """The release never re-initialises its new head: PyTorch's fan-in uniform, std 1/sqrt(3 fan_in),
    bounded by 1/sqrt(fan_in). Encoders and pre-training heads keep RoBERTa's N(0, 0.02)."""
    model = CTAL(resolve_size(ModelConfig(size="mini")), N_OUT, VOCAB)
    for layer in (model.head.text_projection, model.head.audio_projection, model.head.fuse, model.head.classifier):
        fan_in = layer.weight.shape[1]
        bound = fan_in ** -0.5
        assert layer.weight.abs().max() <= bound
        assert abs(layer.weight.std().item() - bound / 3 ** 0.5) < 0.1 * bound / 3 ** 0.5, layer
        if layer.bias is not None:
            assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0
    for weight in (model.text_stream.layers[0].attn.query.weight, model.audio_stream.input_projection.weight,
                   model.text_stream.token_embedding.weight, model.mam_head.dense.weight):
        assert abs(weight.std().item() - 0.02) < 0.002
    assert not model.audio_stream.layers[0].ffn.up.bias.any()
