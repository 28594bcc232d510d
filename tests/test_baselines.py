"""Late-fusion baselines: every registered one overfits each task, trains every parameter, ignores
padding and batch composition; LMF's fusion is TFN's at low rank and trains all its parameters;
MulT's attention runs both ways with no causal mask."""
import dataclasses
import importlib

import pytest
import torch
from batches import random_batch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ctal_bench.baselines.common import RecurrentEncoder, SubNet, TextSubNet, resolve_size
from ctal_bench.cli.listing import parameter_count
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM, Batch
from ctal_bench.data.text import SPECIAL_TOKENS
from ctal_bench.errors import UserError
from ctal_bench.models.layers import masked_max, masked_mean
from ctal_bench.registry import MODELS, TASKS
from ctal_bench.train.optim import adamw

torch.set_num_threads(1)
BASELINES = ("text_only", "audio_only", "late_fusion", "tfn", "lmf", "mult")
for _name in BASELINES:
    importlib.import_module(f"ctal_bench.baselines.{_name}")
importlib.import_module("ctal_bench.train.tasks")  # registers the tasks whose losses we train with

VOCAB = 40
TOKEN_LENGTHS = (9, 6, 3, 7)
FRAME_LENGTHS = (20, 13, 7, 16)


def make_model(name: str, n_outputs: int = 4, seed: int = 0, audio_dim: int = AUDIO_DIM,
               **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, size="mini", dropout=0.0, **changes)
    return MODELS.get(name)(cfg, n_outputs, VOCAB, audio_dim).eval()


def make_batch(seed: int = 0, token_lengths=TOKEN_LENGTHS, frame_lengths=FRAME_LENGTHS) -> Batch:
    return random_batch(VOCAB, token_lengths, frame_lengths, seed)


def select(batch: Batch, rows: list[int]) -> Batch:
    """The given examples, re-padded to their own longest token and frame counts."""
    L = int(batch.token_mask[rows].sum(1).max())
    T = int(batch.audio_mask[rows].sum(1).max())
    return Batch(batch.tokens[rows, :L], batch.token_mask[rows, :L], batch.audio[rows, :T],
                 batch.audio_mask[rows, :T], None, tuple(batch.uids[i] for i in rows),
                 tuple(batch.speakers[i] for i in rows))


# ---- registry and presets ------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_registered_with_presets_and_not_pretrainable(name):
    cls = MODELS.get(name)
    assert {"mini", "small", "base"} <= set(cls.presets)
    assert not getattr(cls, "pretrainable", False), "only CTAL pre-trains"
    assert cls.__doc__.strip().splitlines()[0]
    counts = [parameter_count(cls, size) for size in ("mini", "small")]
    assert 0 < counts[0] < counts[1], f"{name}: mini {counts[0]} should be smaller than small {counts[1]}"


# Parameters at vocab 1,000 and 4 outputs, as the presets' comments state them.
DOCUMENTED_COUNTS = {
    "text_only": (126_788, 1_638_724, 45_070_852), "audio_only": (73_092, 1_477_636, 44_426_500),
    "late_fusion": (102_788, 522_244, 1_001_188), "tfn": (53_036, 284_052, 669_312),
    "lmf": (48_672, 253_832, 609_396), "mult": (110_212, 641_668, 546_004),
}


@pytest.mark.parametrize("name", BASELINES)
def test_preset_parameter_counts_are_the_documented_ones(name):
    counts = tuple(parameter_count(MODELS.get(name), size) for size in ("mini", "small", "base"))
    assert counts == DOCUMENTED_COUNTS[name]


def test_lmf_fusion_parameters_by_hand():
    fusion = make_model("lmf").fusion  # mini: text_out 16, audio_out 8, rank 4, fusion_out 16
    assert [tuple(f.shape) for f in fusion.factors] == [(17, 4, 16), (9, 4, 16)]
    assert sum(p.numel() for p in fusion.parameters()) == (17 + 9) * 4 * 16 + 4 + 16


def test_size_fields_take_the_preset_unless_set_and_unused_ones_are_refused():
    cfg, fixed = resolve_size(ModelConfig(name="tfn", size="mini", hidden=48), MODELS.get("tfn").presets, "tfn")
    assert cfg.hidden == 48 and cfg.d_model == MODELS.get("tfn").presets["mini"]["d_model"]
    assert fixed == {"text_out": 16, "audio_out": 8}
    model = MODELS.get("late_fusion")(ModelConfig(name="late_fusion", size="mini", hidden=20), 3, VOCAB)
    assert model.text_encoder.layers[0][0].hidden_size == 20
    with pytest.raises(UserError, match="model.rank=8 is not used by tfn"):
        MODELS.get("tfn")(ModelConfig(size="mini", rank=8), 4, VOCAB)
    with pytest.raises(UserError, match="model.head='concat' is a CTAL switch"):
        MODELS.get("late_fusion")(ModelConfig(size="mini", head="concat"), 4, VOCAB)
    with pytest.raises(UserError, match="did you mean small"):
        MODELS.get("lmf")(ModelConfig(size="smal"), 4, VOCAB)
    with pytest.raises(UserError, match="divisible"):
        MODELS.get("mult")(ModelConfig(size="mini", d_model=30), 4, VOCAB)
    with pytest.raises(UserError, match="special tokens"):
        MODELS.get("text_only")(ModelConfig(size="mini"), 4, len(SPECIAL_TOKENS))


# ---- training ------------------------------------------------------------------------------------

TASK_SETUPS = {  # task -> (n_outputs, targets for the 4-example batch)
    "emotion": (4, torch.tensor([0, 1, 2, 3])),
    "sentiment": (1, torch.tensor([-2.4, 0.3, 1.7, -0.8])),
    "verification": (6, torch.tensor([5, 0, 3, 1])),  # speaker classification over 6 speakers
}


@pytest.mark.parametrize("task_name", list(TASK_SETUPS))
@pytest.mark.parametrize("name", BASELINES)
def test_overfits_a_tiny_batch(name, task_name):
    task = TASKS.get(task_name)
    n_outputs, targets = TASK_SETUPS[task_name]
    model = make_model(name, n_outputs).train()
    batch = dataclasses.replace(make_batch(seed=1), targets=targets)
    steps = 150
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Linear decay: L1's gradient does not shrink near the optimum, so a fixed lr keeps bouncing.
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    first = None
    for _ in range(steps):
        out = model(batch)
        loss = task.loss(out.logits, batch.targets) + out.aux_loss
        first = loss.item() if first is None else first
        if loss.item() < 0.02:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    assert loss.item() < 0.05, f"{name} on {task_name}: loss {first:.3f} -> {loss.item():.3f}"
    assert out.logits.shape == (4, n_outputs) and out.aux_loss.item() == 0.0


@pytest.mark.parametrize("frame_stack", [1, 2])
@pytest.mark.parametrize("name", BASELINES)
def test_gradients_reach_every_parameter(name, frame_stack):
    """Also with stacked frames (data.frame_stack): every model reads frames of the given width."""
    model = make_model(name, audio_dim=frame_stack * AUDIO_DIM).train()
    batch = random_batch(VOCAB, TOKEN_LENGTHS, FRAME_LENGTHS, audio_dim=frame_stack * AUDIO_DIM)
    batch = dataclasses.replace(batch, targets=torch.tensor([0, 1, 2, 3]))
    out = model(batch)
    assert out.embedding.shape[0] == 4 and out.embedding.ndim == 2
    TASKS.get("emotion").loss(out.logits, batch.targets).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} gets an all-zero gradient"


# ---- masks and batch composition -----------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_padding_content_and_amount_do_not_change_outputs(name):
    model = make_model(name)
    batch = make_batch()
    g = torch.Generator().manual_seed(7)
    B, L, T = len(batch), batch.tokens.shape[1] + 3, batch.audio.shape[1] + 5
    token_mask = torch.zeros(B, L, dtype=torch.bool)
    token_mask[:, :batch.tokens.shape[1]] = batch.token_mask
    audio_mask = torch.zeros(B, T, dtype=torch.bool)
    audio_mask[:, :batch.audio.shape[1]] = batch.audio_mask
    tokens = torch.randint(len(SPECIAL_TOKENS), VOCAB, (B, L), generator=g)  # junk in the padding
    tokens[token_mask] = batch.tokens[batch.token_mask]
    audio = 5 * torch.randn(B, T, AUDIO_DIM, generator=g)
    audio[audio_mask] = batch.audio[batch.audio_mask]
    noisy = Batch(tokens, token_mask, audio, audio_mask, None, batch.uids, batch.speakers)
    with torch.no_grad():
        clean, junk = model(batch), model(noisy)
    torch.testing.assert_close(junk.logits, clean.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(junk.embedding, clean.embedding, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", BASELINES)
def test_an_example_alone_equals_it_inside_a_batch(name):
    model = make_model(name)
    batch = make_batch()
    shortest = 2  # the fewest tokens and frames: the most padding inside the batch
    with torch.no_grad():
        together = model(batch)
        alone = model(select(batch, [shortest]))
        pair = model(select(batch, [1, shortest]))
    torch.testing.assert_close(alone.logits[0], together.logits[shortest], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.embedding[0], together.embedding[shortest], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair.logits[1], together.logits[shortest], atol=1e-5, rtol=1e-5)


def test_masked_pooling_by_hand():
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2); the last row is padding
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(masked_max(x, mask), torch.tensor([[3.0, 4.0]]))


@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 2)])
def test_recurrent_encoder_equals_a_packed_bidirectional_rnn(cell, layers):
    """It runs on the padded batch for speed; outputs and final states must be the packed RNN's."""
    torch.manual_seed(0)
    encoder = RecurrentEncoder(5, 6, layers, cell=cell, bidirectional=True)
    packed_rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](
        5, 6, num_layers=layers, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for i in range(layers):
            for direction, suffix in enumerate(("", "_reverse")):
                for weight in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(packed_rnn, f"{weight}_l{i}{suffix}").copy_(
                        getattr(encoder.layers[i][direction], f"{weight}_l0"))
    lengths = torch.tensor([9, 3, 1, 6])
    mask = torch.arange(9) < lengths[:, None]
    x = torch.randn(4, 9, 5).masked_fill(~mask[..., None], 50.0)  # loud padding
    outputs, final = encoder(x, mask)
    expected, state = packed_rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    expected, _ = pad_packed_sequence(expected, batch_first=True, total_length=9)
    h_n = state[0] if cell == "lstm" else state
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close(final, torch.cat([h_n[-2], h_n[-1]], dim=-1))


# ---- dropout acts on the tensor that goes on -----------------------------------------------------

def test_subnet_dropout_reaches_the_layers():
    """The reference SubNet/TextSubNet computed dropout and fed the un-dropped tensor on."""
    torch.manual_seed(0)
    subnet = SubNet(12, 8, dropout=0.5)
    x = torch.randn(64, 12)
    eval_out = subnet.eval()(x)
    train_out = subnet.train()(x)
    assert not torch.allclose(train_out, eval_out)
    text = TextSubNet(VOCAB, 8, 8, 1, 4, dropout=0.5)
    batch = make_batch()
    assert not torch.allclose(text.train()(batch.tokens, batch.token_mask),
                              text.eval()(batch.tokens, batch.token_mask))


@pytest.mark.parametrize("name", ("text_only", "audio_only", "mult"))
def test_transformer_baselines_take_attention_dropout_from_the_config(name):
    """model.attention_dropout, not model.dropout, drops attention weights (CPU scales set it to 0
    so that attention runs in the fused kernel)."""
    batch = make_batch()
    still = make_model(name, attention_dropout=0.0).train()
    assert torch.equal(still(batch).logits, still(batch).logits)  # dropout 0 everywhere
    dropped = make_model(name, attention_dropout=0.5).train()
    assert not torch.allclose(dropped(batch).logits, dropped(batch).logits)


# ---- LMF -----------------------------------------------------------------------------------------

def test_lmf_every_factor_weight_and_bias_is_trained():
    model = make_model("lmf").train()
    fusion = model.fusion
    fusion_params = {"factor_text": fusion.factors[0], "factor_audio": fusion.factors[1],
                     "fusion_weights": fusion.fusion_weights, "fusion_bias": fusion.fusion_bias}
    in_model = {id(p) for p in model.parameters()}
    assert all(id(p) in in_model for p in fusion_params.values()), "a fusion parameter is not registered"
    batch = dataclasses.replace(make_batch(), targets=torch.tensor([0, 1, 2, 3]))
    before = {k: p.detach().clone() for k, p in fusion_params.items()}
    optimizer = adamw(model, lr=1e-2, weight_decay=0.0)  # the loop's optimiser builder
    TASKS.get("emotion").loss(model(batch).logits, batch.targets).backward()
    for k, p in fusion_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"LMF {k} gets no gradient"
    optimizer.step()
    for k, p in fusion_params.items():
        assert not torch.equal(p.detach(), before[k]), f"LMF {k} is not updated by the optimiser"


def test_lmf_equals_tensor_fusion_with_a_rank_r_weight_tensor():
    """sum_i w_i prod_m (h_m W_m^(i)) + b == ([1;z_t] outer [1;z_a]) . W + b, W = sum_i w_i W_t^(i) x W_a^(i)."""
    fusion = make_model("lmf").fusion
    g = torch.Generator().manual_seed(3)
    z_t, z_a = torch.randn(5, 16, generator=g), torch.randn(5, 8, generator=g)
    h_t = torch.cat([torch.ones(5, 1), z_t], dim=1)
    h_a = torch.cat([torch.ones(5, 1), z_a], dim=1)
    f_t, f_a = fusion.factors[0].detach(), fusion.factors[1].detach()  # (dt+1, r, out), (da+1, r, out)
    weight = torch.einsum("r,iro,jro->ijo", fusion.fusion_weights.detach(), f_t, f_a)  # (dt+1, da+1, out)
    tensor = torch.einsum("bi,bj->bij", h_t, h_a)  # TFN's fused tensor
    expected = torch.einsum("bij,ijo->bo", tensor, weight) + fusion.fusion_bias.detach()
    with torch.no_grad():
        torch.testing.assert_close(fusion(z_t, z_a), expected, atol=1e-5, rtol=1e-4)


# ---- MulT ----------------------------------------------------------------------------------------

def test_mult_attends_both_ways_without_a_causal_mask():
    model = make_model("mult")
    batch = make_batch()
    i = 0  # the longest example: its last real token and frame are the last positions
    last_token, last_frame = TOKEN_LENGTHS[i] - 2, FRAME_LENGTHS[i] - 1  # keep </s>; change a word
    tokens = batch.tokens.clone()
    tokens[i, last_token] = (tokens[i, last_token] + 1 - len(SPECIAL_TOKENS)) % (
        VOCAB - len(SPECIAL_TOKENS)) + len(SPECIAL_TOKENS)
    audio = batch.audio.clone()
    audio[i, last_frame] += 3.0
    with torch.no_grad():
        text, audio_states = model.encode(batch)
        text_after_frame, audio_after_frame = model.encode(dataclasses.replace(batch, audio=audio))
        text_after_token, audio_after_token = model.encode(dataclasses.replace(batch, tokens=tokens))
    # text -> audio: the first text position sees the last audio frame
    assert (text_after_frame[i, 0] - text[i, 0]).abs().max() > 1e-4
    # audio -> text: the first audio frame sees a late token
    assert (audio_after_token[i, 0] - audio_states[i, 0]).abs().max() > 1e-4
    # and self-attention over each memory is bidirectional too
    assert (audio_after_frame[i, 0] - audio_states[i, 0]).abs().max() > 1e-4
    assert (text_after_token[i, 0] - text[i, 0]).abs().max() > 1e-4
    # the other examples are untouched
    torch.testing.assert_close(text_after_frame[1:], text[1:])
