"""Released CTAL checkpoints: parity with the released architecture, refusals, safe loading, the CLI.

"The released architecture" is built here from transformers' RoBERTa classes as the issue
describes the release (no code of it is used): text = RobertaForMaskedLM; audio = Linear(160 -> d)
+ position + token type 0 + LayerNorm, then a RobertaEncoder with is_decoder=True and
add_cross_attention=True, then dense -> GELU -> LayerNorm -> decoder (+ bias). Audio positions
start at 2 as RoBERTa's do (an assumption, see ctal_bench/released.py).
"""
import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_cli import assert_user_error, bench

from ctal_bench.data.batching import AUDIO_DIM
from ctal_bench.data.text import SPECIAL_TOKENS
from ctal_bench.errors import UserError
from ctal_bench.models import released
from ctal_bench.models.ctal import CTAL

transformers = pytest.importorskip("transformers", reason="the parity tests build the released "
                                   "architecture from transformers' RoBERTa classes")

torch.set_num_threads(2)
VOCAB = 100
MAX_TOKENS, MAX_FRAMES = 16, 40
TOKEN_LENGTHS, FRAME_LENGTHS = (9, 5, 3), (40, 23, 7)
RELEASED_PAD = 1  # RoBERTa: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last
FIRST_POSITION = RELEASED_PAD + 1  # RoBERTa's first real position; assumed for audio too


def roberta_vocab() -> dict[str, int]:
    """A RoBERTa-ordered byte-level vocabulary of VOCAB tokens (specials where RoBERTa has them)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "\u0120", *letters]  # \u0120 is the byte-level space
    tokens += [a + b for a in "\u0120" + letters for b in letters][:VOCAB - 1 - len(tokens)]
    return {t: i for i, t in enumerate(tokens + ["<mask>"])}


def write_tokenizer(directory: Path, vocab: dict[str, int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    merges = [f"{t[0]} {t[1:]}" for t in vocab if len(t) == 2 and not t.startswith("<")]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def roberta_config(d: int, layers: int, heads: int, positions: int, **extra):
    return transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d if d >= 768 else 2 * d, max_position_embeddings=positions + 2,
        type_vocab_size=1, layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="eager", **extra)


class AcousticEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(AUDIO_DIM, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, audio):
        positions = torch.arange(audio.shape[1]) + FIRST_POSITION
        types = torch.zeros(audio.shape[:2], dtype=torch.long)
        return self.LayerNorm(self.dense(audio) + self.position_embeddings(positions)
                              + self.token_type_embeddings(types))


class AMHead(nn.Module):
    """Like RobertaLMHead, onto the 160-d frames: the decoder's bias is the head's ``bias``."""

    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, AUDIO_DIM)
        self.bias = nn.Parameter(torch.zeros(AUDIO_DIM))
        self.decoder.bias = self.bias

    def forward(self, x):
        return self.decoder(self.layer_norm(F.gelu(self.dense(x))))


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask as transformers' additive one (0 or the dtype's minimum)."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


class ReleasedAcoustic(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.acoustic = nn.Module()
        self.acoustic.embeddings = AcousticEmbeddings(cfg)
        self.acoustic.encoder = transformers.models.roberta.modeling_roberta.RobertaEncoder(cfg)
        self.am_head = AMHead(cfg)

    def forward(self, audio, audio_mask, text, token_mask):
        T = audio.shape[1]
        allowed = audio_mask[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril()  # causal
        hidden = self.acoustic.encoder(self.acoustic.embeddings(audio), attention_mask=additive(allowed),
                                       encoder_hidden_states=text,
                                       encoder_attention_mask=additive(token_mask[:, None, None, :]),
                                       use_cache=False).last_hidden_state
        return hidden, self.am_head(hidden)


def randomise(module: nn.Module, seed: int) -> None:
    """BERT-scale random weights, LayerNorm gains and every bias included, so each tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(0.02 * noise)
            else:
                p.copy_(0.1 * noise + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0))


@dataclasses.dataclass
class Release:
    text: nn.Module
    audio: nn.Module
    path: Path
    tokenizer_dir: Path


def make_release(directory: Path, d: int, layers: int, heads: int, settings, seed: int = 0) -> Release:
    text = transformers.RobertaForMaskedLM(roberta_config(d, layers, heads, MAX_TOKENS)).eval()
    audio = ReleasedAcoustic(roberta_config(d, layers, heads, MAX_FRAMES, is_decoder=True,
                                            add_cross_attention=True)).eval()
    randomise(text, seed)
    randomise(audio, seed + 1)
    path = directory / "ctal_released.pt"
    torch.save({"semantic_model": text.state_dict(), "acoustic_model": audio.state_dict(),
                "Optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "Global_step": 1234,
                "Settings": settings}, path)
    return Release(text, audio, path, write_tokenizer(directory / "tokenizer", roberta_vocab()))


def released_batch(seed: int = 0):
    """Their token ids (RoBERTa specials), masks and frames, padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(TOKEN_LENGTHS)
    token_mask = torch.arange(max(TOKEN_LENGTHS)) < lengths[:, None]
    audio_mask = torch.arange(max(FRAME_LENGTHS)) < torch.tensor(FRAME_LENGTHS)[:, None]
    ids = torch.randint(5, VOCAB - 1, token_mask.shape, generator=g)
    ids[:, 0] = 0
    ids[torch.arange(len(lengths)), lengths - 1] = 2
    ids[~token_mask] = RELEASED_PAD
    audio = torch.randn(*audio_mask.shape, AUDIO_DIM, generator=g) * audio_mask[..., None]
    return ids, token_mask, audio, audio_mask


@torch.no_grad()
def released_outputs(release: Release, ids, token_mask, audio, audio_mask):
    text = release.text.roberta(input_ids=ids, attention_mask=token_mask.long()).last_hidden_state
    hidden, mam = release.audio(audio, audio_mask, text, token_mask)
    return release.text.lm_head(text), hidden, mam


@torch.no_grad()
def our_outputs(model: CTAL, tokens, token_mask, audio, audio_mask):
    text = model.text_stream(tokens, token_mask)
    hidden = model.audio_stream(audio, audio_mask, text, token_mask)
    return model.mlm_head(text), hidden, model.mam_head(hidden)


def to_released(imported: released.Imported) -> torch.Tensor:
    """Our token id -> the released id of the same token."""
    ours = imported.tokenizer.get_vocab()
    return torch.tensor([roberta_vocab()[token] for token in sorted(ours, key=ours.get)])


def our_ids(imported: released.Imported, ids: torch.Tensor) -> torch.Tensor:
    """Released token ids -> ours."""
    return torch.argsort(to_released(imported))[ids]


def assert_parity(release: Release, imported: released.Imported, model: CTAL) -> None:
    ids, token_mask, audio, audio_mask = released_batch()
    theirs = released_outputs(release, ids, token_mask, audio, audio_mask)
    ours = our_outputs(model.eval(), our_ids(imported, ids), token_mask, audio, audio_mask)
    their_logits = theirs[0][..., to_released(imported)]  # columns in our vocabulary order
    torch.testing.assert_close(ours[0][token_mask], their_logits[token_mask], atol=1e-5, rtol=1e-5)
    for our, their in zip(ours[1:], theirs[1:]):  # audio hidden states, MAM predictions: real frames
        torch.testing.assert_close(our[audio_mask], their[audio_mask], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """d 64, 2 + 2 layers, 4 heads (from Settings: no preset has FFN 128), Settings an argparse object."""
    release = make_release(tmp_path_factory.mktemp("reduced"), 64, 2, 4,
                           argparse.Namespace(num_attention_heads=4, hidden_act="gelu", layer_norm_eps=1e-5))
    return release, released.import_released(release.path, release.tokenizer_dir)


# ---- parity ----------------------------------------------------------------------------------------

def test_tiny_preset_matches_the_released_architecture(tmp_path):
    release = make_release(tmp_path, 768, 3, 12, {"note": "plain settings"})
    imported = released.import_released(release.path, release.tokenizer_dir)
    assert imported.model == {"size": "tiny", "max_text_len": MAX_TOKENS, "max_audio_frames": MAX_FRAMES,
                              "audio_causal": True}
    assert imported.global_step == 1234 and not imported.notes  # plain Settings load under weights_only
    assert_parity(release, imported, released.build(imported))


def test_reduced_size_matches_with_heads_read_from_unread_settings(reduced):
    release, imported = reduced
    assert imported.model == {"size": "tiny", "d_model": 64, "n_heads": 4, "text_layers": 2,
                              "audio_layers": 2, "ffn_dim": 128, "max_text_len": MAX_TOKENS,
                              "max_audio_frames": MAX_FRAMES, "audio_causal": True}
    assert any("inert records" in note for note in imported.notes)
    assert_parity(release, imported, released.build(imported))


def test_bidirectional_audio_changes_only_the_audio_stream(reduced):
    """With our default (audio_causal=False): the text and MLM logits are unchanged; after the first
    audio layer only the last real frame of each utterance (which already saw every frame) agrees;
    after both layers every real frame differs (the last ones least, through the earlier frames)."""
    _, imported = reduced
    causal = released.build(imported)
    bidirectional = released.build(dataclasses.replace(imported,
                                                       model={**imported.model, "audio_causal": False}))
    ids, token_mask, audio, audio_mask = released_batch()
    tokens = our_ids(imported, ids)
    mlm_c, hidden_c, _ = our_outputs(causal.eval(), tokens, token_mask, audio, audio_mask)
    mlm_b, hidden_b, _ = our_outputs(bidirectional.eval(), tokens, token_mask, audio, audio_mask)
    torch.testing.assert_close(mlm_b, mlm_c)
    first = []
    with torch.no_grad():
        for model in (causal, bidirectional):
            text = model.text_stream(tokens, token_mask)
            x = model.audio_stream.norm(model.audio_stream.input_projection(audio)
                                        + model.audio_stream.position_embedding.weight[:audio.shape[1]])
            first.append(model.audio_stream.layers[0](x, audio_mask, text, token_mask, True))
    last = torch.zeros_like(audio_mask)
    last[torch.arange(len(FRAME_LENGTHS)), torch.tensor(FRAME_LENGTHS) - 1] = True
    torch.testing.assert_close(first[0][last], first[1][last])
    assert ((first[0] - first[1]).abs().amax(-1)[audio_mask & ~last] > 1e-3).all()
    assert ((hidden_c - hidden_b).abs().amax(-1)[audio_mask] > 1e-5).all()  # fp32 noise is ~1e-7


def test_converted_tokenizer_gives_our_special_ids_and_the_released_segmentation(reduced):
    release, imported = reduced
    from tokenizers import ByteLevelBPETokenizer

    theirs = ByteLevelBPETokenizer(str(release.tokenizer_dir / "vocab.json"),
                                   str(release.tokenizer_dir / "merges.txt"))
    for i, token in enumerate(SPECIAL_TOKENS):
        assert imported.tokenizer.token_to_id(token) == i
    text = "the cat sat on a mat"
    ours = imported.tokenizer.encode(text, add_special_tokens=False)
    expected = theirs.encode(text)
    assert ours.tokens == expected.tokens and len(ours.ids) > 1
    assert our_ids(imported, torch.tensor(expected.ids)).tolist() == ours.ids


# ---- refusals ----------------------------------------------------------------------------------------

def resave(release: Release, path: Path, edit) -> Path:
    state = torch.load(release.path, weights_only=False)
    edit(state)
    torch.save(state, path)
    return path


def test_wrong_shape_is_refused_naming_key_and_shapes(reduced, tmp_path):
    release, _ = reduced
    key = "acoustic.encoder.layer.1.crossattention.self.key.weight"
    path = resave(release, tmp_path / "bad.pt",
                  lambda s: s["acoustic_model"].update({key: torch.zeros(64, 65)}))
    with pytest.raises(UserError) as e:
        released.import_released(path, release.tokenizer_dir)
    message = str(e.value)
    assert key in message and "(64, 65)" in message and "(64, 64)" in message and "\n" not in message


@pytest.mark.parametrize("entry, key", [
    ("semantic_model", "lm_head.bias"),
    ("acoustic_model", "am_head.layer_norm.weight"),
    ("acoustic_model", "acoustic.embeddings.token_type_embeddings.weight"),
])
def test_missing_key_is_refused_by_name(reduced, tmp_path, entry, key):
    release, _ = reduced
    path = resave(release, tmp_path / "bad.pt", lambda s: s[entry].pop(key))
    with pytest.raises(UserError, match=rf"{entry}: missing '{key}'"):
        released.import_released(path, release.tokenizer_dir)


def test_unexpected_key_and_missing_entry_are_refused(reduced, tmp_path):
    release, _ = reduced
    path = resave(release, tmp_path / "extra.pt", lambda s: s["acoustic_model"].update(
        {"acoustic.encoder.layer.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(UserError, match="unexpected key 'acoustic.encoder.layer.0.extra.weight'"):
        released.import_released(path, release.tokenizer_dir)
    path = resave(release, tmp_path / "no_audio.pt", lambda s: s.pop("acoustic_model"))
    with pytest.raises(UserError, match="missing entry 'acoustic_model'"):
        released.import_released(path, release.tokenizer_dir)


def test_tokenizer_without_a_special_or_of_another_size_is_refused(reduced, tmp_path):
    release, _ = reduced
    vocab = roberta_vocab()
    vocab["<maskX>"] = vocab.pop("<mask>")
    with pytest.raises(UserError, match="special token '<mask>' is missing"):
        released.import_released(release.path, write_tokenizer(tmp_path / "no_mask", vocab))
    vocab = {t: i for t, i in roberta_vocab().items() if i < VOCAB - 2} | {"<mask>": VOCAB - 2}
    with pytest.raises(UserError, match=f"{VOCAB - 1} tokens, but .* has {VOCAB} rows"):
        released.import_released(release.path, write_tokenizer(tmp_path / "small", vocab))


# ---- safe loading -------------------------------------------------------------------------------------

def _touch(path: str) -> None:
    Path(path).write_text("unpickled")


class Planted:
    """Unpickling this runs ``_touch``: a stand-in for a malicious Settings object."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (_touch, (str(self.path),))


def test_without_trust_nothing_but_tensors_and_containers_is_unpickled(reduced, tmp_path):
    release, _ = reduced
    marker = tmp_path / "side-effect"
    path = resave(release, tmp_path / "planted.pt",
                  lambda s: s.update(Settings={"hook": Planted(marker), "num_attention_heads": 4}))
    state, how = released.load_checkpoint(path)
    assert how == "unread" and not marker.exists()
    assert isinstance(state["Settings"]["hook"], released.Unread)
    assert state["Settings"]["hook"].name == f"{__name__}._touch"
    imported = released.import_released(path, release.tokenizer_dir)
    assert not marker.exists() and imported.model["n_heads"] == 4

    released.import_released(path, release.tokenizer_dir, trust=True)  # the flag does unpickle in full
    assert marker.read_text() == "unpickled"


def test_a_file_that_is_no_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        released.load_checkpoint(path)


# ---- our checkpoint format and the CLI -----------------------------------------------------------------

def test_import_ctal_writes_a_checkpoint_that_loads_as_the_same_network(reduced, tmp_path):
    release, imported = reduced
    out = tmp_path / "checkpoints" / "ctal-released.pt"
    proc = bench("import-ctal", str(release.path), "--tokenizer", str(release.tokenizer_dir),
                 "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "model.audio_causal=true" in proc.stdout and "load_converted" in proc.stdout
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("head.") for k in state["model"])
    assert state["record"]["model_config"] == imported.model and state["record"]["global_step"] == 1234
    model, tokenizer = released.load_converted(out, n_outputs=4)
    assert tokenizer.get_vocab() == imported.tokenizer.get_vocab()
    assert_parity(release, imported, model)


def test_import_ctal_refusals_are_one_line(reduced, tmp_path):
    release, _ = reduced
    tokenizer = str(release.tokenizer_dir)
    assert_user_error(bench("import-ctal", str(tmp_path / "none.pt"), "--tokenizer", tokenizer),
                      "none.pt", "not found")
    assert_user_error(bench("import-ctal", str(release.path), "--tokenizer", str(tmp_path)),
                      "vocab.json", "not found")



@pytest.mark.integration
def test_a_suite_fine_tunes_from_imported_weights_with_their_tokenizer(reduced, tmp_path):
    release, imported = reduced
    out = tmp_path / "converted" / "ctal-released.pt"
    assert bench("import-ctal", str(release.path), "--tokenizer", str(release.tokenizer_dir),
                 "--out", str(out)).returncode == 0
    run = ["run", "--suite", "smoke", "--tasks", "emotion", "--results", str(tmp_path / "results"),
           "--data-dir", str(tmp_path / "data"), "--set", f"pretrain.init={out}", "--set", "data.size=tiny",
           "--set", "finetune.epochs=1", "--set", f"data.max_audio_frames={MAX_FRAMES}", "--set", "run.threads=1"]
    # the smoke scale's mini CTAL on stacked frames is not the released network: refused, naming
    # every flag it needs
    refused = bench(*run)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    flags = re.findall(r"--set (\S+=\S+)", refused.stderr)
    assert {"model.d_model=64", "model.audio_causal=true", "data.frame_stack=1"} <= set(flags)
    proc = bench(*run, *[arg for flag in flags for arg in ("--set", flag)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "runs" / "smoke" /
                         "ctal__emotion__synth__fold-0__seed-0.json").read_text())
    assert record["status"] == "done" and record["pretrain"]["source"] == "released CTAL"
    assert record["pretrain"]["global_step"] == 1234 and record["curves"]["pretrain"] is None
    assert not list((tmp_path / "results" / "checkpoints").glob("pretrain-*.pt"))  # nothing pre-trained here
