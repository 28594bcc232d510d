"""The authors' released CTAL checkpoints (tal-ai/CTAL_EMNLP2021) mapped onto our CTAL.

Written from the checkpoint format described in issue 10; no code of the release is used. A
checkpoint is a ``torch.save`` dict: ``semantic_model`` (a transformers ``RobertaForMaskedLM``
state dict), ``acoustic_model`` (``acoustic.embeddings.*``, ``acoustic.encoder.layer.N.*`` with
self- and cross-attention, ``am_head.*``), ``Optimizer``, ``Global_step`` and ``Settings``.
The result is exactly the released network (tests/test_released.py checks it against
transformers' RoBERTa classes to 1e-5):

- positions: RoBERTa numbers real tokens from padding_idx + 1 = 2, so our position ``i`` is
  their row ``i + 2``. The audio positions are assumed to follow the same convention (we could
  not establish how the release indexes them); ``AUDIO_POSITION_OFFSET`` is that assumption.
- token types: every token and frame has type 0, so ``token_type_embeddings[0]`` is folded into
  our position tables (same sum before the LayerNorm).
- the MLM decoder stays tied to the token embeddings and takes ``lm_head.bias``; the vocabulary
  is reordered so that the specials get our ids (``SPECIAL_TOKENS``), in the tokenizer and in
  every vocabulary-sized tensor alike.
- sizes come from the tensor shapes; the head count is not in any shape, so it is read from
  ``Settings`` (``num_attention_heads``) when present, else taken from the preset of that shape.
- ``audio_causal = True``: the release's audio self-attention is causal (``is_decoder=True``).

Safe loading: ``torch.load(weights_only=True)`` first. ``Settings`` usually holds config or
command-line namespace objects, which that refuses; we then unpickle again with an unpickler that rebuilds
tensors and plain containers only and turns every other named class or function into an inert
``Unread`` record (its name and plain state): nothing from the file is imported or called, and
``Settings`` can still be searched for plain values. ``trust=True`` unpickles everything
(arbitrary code can run) and is for checkpoints from a source you trust.
"""
from __future__ import annotations

import collections
import pickle
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import AUDIO_DIM
from ctal_bench.data.converted import converted_tokenizer, read_converted
from ctal_bench.data.text import SPECIAL_TOKENS
from ctal_bench.errors import UserError
from ctal_bench.files import save_atomic
from ctal_bench.models.ctal import CTAL, PRESETS

POSITION_OFFSET = 2  # RoBERTa: position ids of real tokens start at padding_idx (1) + 1
AUDIO_POSITION_OFFSET = POSITION_OFFSET  # assumed: the release's acoustic embeddings follow RoBERTa
LAYER_NORM_EPS = 1e-5  # ours (nn.LayerNorm's default) and roberta-base's
HEAD_DIM = 64  # BERT/RoBERTa's head width, used when neither Settings nor a preset gives a head count
# Keys that carry nothing for the forward pass: index buffers, and RoBERTa's pooler (unused by MLM).
IGNORED = re.compile(r"^(roberta\.embeddings\.(position_ids|token_type_ids)|acoustic\.embeddings\."
                     r"(position_ids|token_type_ids)|roberta\.pooler\..*)$")


# ---- safe loading --------------------------------------------------------------------------------

class Unread:
    """An object named in the checkpoint but not imported: its qualified name and plain state."""

    name = "?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<unread {self.name}>"


def _tensor_globals() -> dict[tuple[str, str], Any]:
    allowed = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
               ("torch", "Size"): torch.Size, ("torch", "device"): torch.device}
    allowed.update({("torch", name): value for name, value in vars(torch).items()
                    if isinstance(value, torch.dtype)})
    return allowed


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals that tensors need; any other global becomes an ``Unread``."""

    ALLOWED = _tensor_globals()

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        return type(name, (Unread,), {"name": f"{module}.{name}"})


def _restricted_load(file, **kwargs):
    return _TensorsOnlyUnpickler(file, **kwargs).load()


# torch.load's ``pickle_module``: it subclasses ``Unpickler`` and, for old files, calls ``load``.
TENSORS_ONLY = types.SimpleNamespace(__name__="tensors_only", Unpickler=_TensorsOnlyUnpickler,
                                     load=_restricted_load)


def load_checkpoint(path: Path, trust: bool = False) -> tuple[dict, str]:
    """The checkpoint's top-level dict, and how ``Settings`` was read ("plain", "unread", "trusted")."""
    if not Path(path).is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        if trust:
            print(f"warning: unpickling {path} in full (--trust-checkpoint): it can run arbitrary code",
                  file=sys.stderr)
            return _checked(path, torch.load(path, map_location="cpu", weights_only=False)), "trusted"
        try:
            return _checked(path, torch.load(path, map_location="cpu", weights_only=True)), "plain"
        except pickle.UnpicklingError:  # Settings holds objects: read tensors only
            state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=TENSORS_ONLY)
            return _checked(path, state), "unread"
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, ImportError, AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable torch checkpoint ({reason})") from None


def _checked(path: Path, state: Any) -> dict:
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a dict with semantic_model and acoustic_model, "
                        f"got {type(state).__name__}")
    for entry in ("semantic_model", "acoustic_model"):
        if entry not in state:
            raise UserError(f"{path}: missing entry {entry!r} (keys: {', '.join(map(str, state))})")
        if not isinstance(state[entry], dict):
            raise UserError(f"{path}: {entry!r} is a {type(state[entry]).__name__}, expected a state dict")
    return state


def settings_values(settings: Any, key: str, depth: int = 0) -> list:
    """Every value stored under ``key`` anywhere in ``settings`` (dicts, lists, objects' attributes)."""
    if depth > 5:
        return []
    if isinstance(settings, Unread):
        settings = getattr(settings, "state", None)
    elif not isinstance(settings, (dict, list, tuple)) and hasattr(settings, "__dict__"):
        settings = vars(settings)
    found = []
    if isinstance(settings, dict):
        for k, v in settings.items():
            found += [v] if k == key else settings_values(v, key, depth + 1)
    elif isinstance(settings, (list, tuple)):
        for v in settings:
            found += settings_values(v, key, depth + 1)
    return found


# ---- weights -------------------------------------------------------------------------------------

class _StateDict:
    """One released state dict: typed, shape-checked access, and a record of what was read."""

    def __init__(self, entry: str, tensors: dict):
        self.entry, self.tensors, self.read = entry, tensors, set()

    def get(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in self.tensors:
            raise UserError(f"{self.entry}: missing {key!r} (expected shape {shape})")
        value = self.tensors[key]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{self.entry}: {key!r} is a {type(value).__name__}, "
                            f"expected a tensor of shape {shape}")
        if tuple(value.shape) != shape:
            raise UserError(f"{self.entry}: {key!r} has shape {tuple(value.shape)}, expected {shape}")
        self.read.add(key)
        return value.detach().float()

    def rows(self, key: str) -> tuple[int, int]:
        """(rows, columns) of a 2-D tensor, for the sizes that shapes decide."""
        value = self.tensors.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise UserError(f"{self.entry}: missing {key!r} or it is not a 2-D tensor "
                            "(expected (n, d_model))")
        return tuple(value.shape)

    def layers(self, prefix: str) -> int:
        pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.")
        numbers = {int(m.group(1)) for k in self.tensors if (m := pattern.match(k))}
        if not numbers:
            raise UserError(f"{self.entry}: no layers found under {prefix}N")
        missing = sorted(set(range(max(numbers) + 1)) - numbers)
        if missing:
            raise UserError(f"{self.entry}: layer {prefix}{missing[0]} is missing "
                            f"(found up to {max(numbers)})")
        return max(numbers) + 1

    def tied(self, key: str, value: torch.Tensor) -> None:
        """A tensor the release ties to ``value``: if stored, it must equal it."""
        if key in self.tensors:
            if not torch.equal(self.get(key, tuple(value.shape)), value):
                raise UserError(f"{self.entry}: {key!r} differs from the tensor it should be tied to; "
                                "our CTAL cannot represent an untied copy")

    def check_all_read(self) -> None:
        stray = sorted(k for k in self.tensors if k not in self.read and not IGNORED.match(k))
        if stray:
            raise UserError(f"{self.entry}: unexpected key {stray[0]!r} ({len(stray)} unexpected in all); "
                            "is this a released CTAL checkpoint?")


def _linear(sd: _StateDict, src: str, dst: str, n_out: int, n_in: int) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": sd.get(f"{src}.weight", (n_out, n_in)),
            f"{dst}.bias": sd.get(f"{src}.bias", (n_out,))}


def _norm(sd: _StateDict, src: str, dst: str, d: int) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": sd.get(f"{src}.weight", (d,)), f"{dst}.bias": sd.get(f"{src}.bias", (d,))}


def _attention(sd: _StateDict, src: str, dst: str, d: int) -> dict[str, torch.Tensor]:
    """transformers' RobertaAttention (self.query/key/value, output.dense, output.LayerNorm) ->
    our MultiHeadAttention and the LayerNorm after it."""
    out = {}
    for ours, theirs in (("query", "self.query"), ("key", "self.key"), ("value", "self.value"),
                         ("out", "output.dense")):
        out.update(_linear(sd, f"{src}.{theirs}", f"{dst}.{ours}", d, d))
    return out


def _feed_forward(sd: _StateDict, src: str, dst: str, d: int, ffn: int) -> dict[str, torch.Tensor]:
    return {**_linear(sd, f"{src}.intermediate.dense", f"{dst}.ffn.up", ffn, d),
            **_linear(sd, f"{src}.output.dense", f"{dst}.ffn.down", d, ffn),
            **_norm(sd, f"{src}.output.LayerNorm", f"{dst}.ffn_norm", d)}


def _positions(sd: _StateDict, prefix: str, offset: int, d: int) -> torch.Tensor:
    """Our position table: their rows from ``offset`` on, plus token type 0 (added to every input)."""
    n_positions, _ = sd.rows(f"{prefix}.position_embeddings.weight")
    if n_positions <= offset:
        raise UserError(f"{sd.entry}: {prefix}.position_embeddings.weight has {n_positions} rows; "
                        f"positions start at {offset}")
    n_types, _ = sd.rows(f"{prefix}.token_type_embeddings.weight")
    table = sd.get(f"{prefix}.position_embeddings.weight", (n_positions, d))
    token_type = sd.get(f"{prefix}.token_type_embeddings.weight", (n_types, d))[0]
    return table[offset:] + token_type


def _text(sd: _StateDict, order: torch.Tensor, d: int, ffn: int) -> dict[str, torch.Tensor]:
    vocab, _ = sd.rows("roberta.embeddings.word_embeddings.weight")
    embedding = sd.get("roberta.embeddings.word_embeddings.weight", (vocab, d))
    out = {"text_stream.token_embedding.weight": embedding[order],
           "text_stream.position_embedding.weight": _positions(sd, "roberta.embeddings", POSITION_OFFSET, d),
           **_norm(sd, "roberta.embeddings.LayerNorm", "text_stream.norm", d)}
    for n in range(sd.layers("roberta.encoder.layer.")):
        src, dst = f"roberta.encoder.layer.{n}", f"text_stream.layers.{n}"
        out.update(_attention(sd, f"{src}.attention", f"{dst}.attn", d))
        out.update(_norm(sd, f"{src}.attention.output.LayerNorm", f"{dst}.attn_norm", d))
        out.update(_feed_forward(sd, src, dst, d, ffn))
    sd.tied("lm_head.decoder.weight", embedding)
    bias = sd.get("lm_head.bias", (vocab,))
    sd.tied("lm_head.decoder.bias", bias)
    out.update({**_linear(sd, "lm_head.dense", "mlm_head.dense", d, d),
                **_norm(sd, "lm_head.layer_norm", "mlm_head.norm", d),
                "mlm_head.decoder.weight": out["text_stream.token_embedding.weight"],
                "mlm_head.decoder.bias": bias[order]})
    return out


def _audio(sd: _StateDict, d: int, ffn: int) -> dict[str, torch.Tensor]:
    out = {**_linear(sd, "acoustic.embeddings.dense", "audio_stream.input_projection", d, AUDIO_DIM),
           "audio_stream.position_embedding.weight": _positions(sd, "acoustic.embeddings",
                                                                 AUDIO_POSITION_OFFSET, d),
           **_norm(sd, "acoustic.embeddings.LayerNorm", "audio_stream.norm", d)}
    for n in range(sd.layers("acoustic.encoder.layer.")):
        src, dst = f"acoustic.encoder.layer.{n}", f"audio_stream.layers.{n}"
        out.update(_attention(sd, f"{src}.attention", f"{dst}.self_attn", d))
        out.update(_norm(sd, f"{src}.attention.output.LayerNorm", f"{dst}.self_norm", d))
        out.update(_attention(sd, f"{src}.crossattention", f"{dst}.cross_attn", d))
        out.update(_norm(sd, f"{src}.crossattention.output.LayerNorm", f"{dst}.cross_norm", d))
        out.update(_feed_forward(sd, src, dst, d, ffn))
    bias = sd.get("am_head.bias", (AUDIO_DIM,))
    sd.tied("am_head.decoder.bias", bias)
    out.update({**_linear(sd, "am_head.dense", "mam_head.dense", d, d),
                **_norm(sd, "am_head.layer_norm", "mam_head.norm", d),
                "mam_head.decoder.weight": sd.get("am_head.decoder.weight", (AUDIO_DIM, d)),
                "mam_head.decoder.bias": bias})
    return out


# ---- tokenizer -----------------------------------------------------------------------------------

def load_tokenizer(directory: Path, vocab_size: int) -> tuple[Tokenizer, torch.Tensor]:
    """The released byte-level BPE with our special-token ids, and ``order``: our id -> released id.

    The specials move to ids 0..4 (our ``SPECIAL_TOKENS`` order); every other token keeps its
    released order after them. Like RoBERTa's tokenizer (and unlike ours) it neither lower-cases
    nor strips punctuation, and adds no space before the first word.
    """
    vocab_path, merges_path = Path(directory) / "vocab.json", Path(directory) / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise UserError(f"{path}: not found (a released tokenizer is vocab.json + merges.txt)")
    try:
        vocab, merges = models.BPE.read_file(str(vocab_path), str(merges_path))
    except Exception as e:  # the library raises a bare Exception for a malformed file
        raise UserError(f"{directory}: vocab.json / merges.txt do not parse ({e})") from None
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise UserError(f"{vocab_path}: token ids are not 0..{len(vocab) - 1}, each once")
    if len(vocab) != vocab_size:
        raise UserError(f"{vocab_path}: {len(vocab)} tokens, but the checkpoint's "
                        f"roberta.embeddings.word_embeddings.weight has {vocab_size} rows")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise UserError(f"{vocab_path}: special token {missing[0]!r} is missing "
                        f"(expected all of {', '.join(SPECIAL_TOKENS)})")
    ours = list(SPECIAL_TOKENS) + [t for t in sorted(vocab, key=vocab.get) if t not in SPECIAL_TOKENS]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(ours)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer, torch.tensor([vocab[t] for t in ours])


# ---- sizes and the whole import -----------------------------------------------------------------

def _size_fields(d: int, text_layers: int, audio_layers: int, ffn: int, heads: int | None,
                 notes: list[str]) -> dict[str, Any]:
    """``{"size": preset}`` when a preset has these shapes, else every size field explicitly."""
    for name, preset in PRESETS.items():
        if (preset["d_model"], preset["text_layers"], preset["audio_layers"], preset["ffn_dim"]) == (
                d, text_layers, audio_layers, ffn):
            if heads is None or heads == preset["n_heads"]:
                return {"size": name}
            return {"size": name, "n_heads": heads}
    if heads is None:
        heads = max(d // HEAD_DIM, 1)
        notes.append(f"no preset has these shapes and Settings give no num_attention_heads: "
                     f"assumed {heads} heads (head width {HEAD_DIM})")
    return {"size": "tiny", "d_model": d, "n_heads": heads, "text_layers": text_layers,
            "audio_layers": audio_layers, "ffn_dim": ffn}


def _one_setting(settings: Any, key: str) -> Any:
    values = {v for v in settings_values(settings, key) if isinstance(v, (int, float, str))}
    if len(values) > 1:
        raise UserError(f"Settings give several values of {key} ({sorted(map(str, values))}); "
                        "our CTAL uses one for both streams")
    return values.pop() if values else None


@dataclass(frozen=True)
class Imported:
    weights: dict[str, torch.Tensor]  # our CTAL state dict, without the fine-tuning head (head.*)
    model: dict[str, Any]  # ModelConfig fields that reproduce the released network
    tokenizer: Tokenizer
    global_step: int | None
    notes: tuple[str, ...]  # what the user should know (assumptions, unread Settings)


def import_released(checkpoint: Path, tokenizer_dir: Path, trust: bool = False) -> Imported:
    """Read a released checkpoint and tokenizer and map them onto our CTAL (checked by loading)."""
    state, settings_read = load_checkpoint(checkpoint, trust)
    notes = []
    if settings_read == "unread":
        notes.append("Settings hold objects, read as inert records (plain values only); "
                     "--trust-checkpoint would unpickle them in full")
    settings = state.get("Settings")
    heads = _one_setting(settings, "num_attention_heads")
    activation = _one_setting(settings, "hidden_act")
    if activation not in (None, "gelu"):
        raise UserError(f"Settings give hidden_act {activation!r}; our CTAL uses exact GELU ('gelu')")
    eps = _one_setting(settings, "layer_norm_eps")
    if eps is not None and eps != LAYER_NORM_EPS:
        notes.append(f"Settings give layer_norm_eps {eps}; ours is {LAYER_NORM_EPS}, so outputs "
                     "differ slightly (relative to the variance of each LayerNorm input)")

    text = _StateDict("semantic_model", state["semantic_model"])
    audio = _StateDict("acoustic_model", state["acoustic_model"])
    vocab, d = text.rows("roberta.embeddings.word_embeddings.weight")
    ffn, _ = text.rows("roberta.encoder.layer.0.intermediate.dense.weight")
    tokenizer, order = load_tokenizer(tokenizer_dir, vocab)
    weights = {**_text(text, order, d, ffn), **_audio(audio, d, ffn)}
    text.check_all_read()
    audio.check_all_read()

    layers = text.layers("roberta.encoder.layer."), audio.layers("acoustic.encoder.layer.")
    model = {**_size_fields(d, *layers, ffn, heads, notes),
             "max_text_len": weights["text_stream.position_embedding.weight"].shape[0],
             "max_audio_frames": weights["audio_stream.position_embedding.weight"].shape[0],
             "audio_causal": True}
    step = state.get("Global_step")
    imported = Imported(weights, model, tokenizer, step if isinstance(step, int) else None, tuple(notes))
    build(imported)  # every tensor has a place and the right shape
    return imported


def build(imported: Imported, n_outputs: int = 1) -> CTAL:
    """Our CTAL with the imported weights (a freshly initialised fine-tuning head)."""
    model = CTAL(ModelConfig(**imported.model), n_outputs, imported.tokenizer.get_vocab_size())
    missing, unexpected = model.load_state_dict(imported.weights, strict=False)
    stray = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    assert not stray, f"mapping does not fit our CTAL: {stray[:5]}"
    return model


# ---- our checkpoint format ----------------------------------------------------------------------

def convert(checkpoint: Path, tokenizer_dir: Path, out: Path, trust: bool = False) -> list[str]:
    """Write ``out`` ({"model", "record"}, as pretrain.py's checkpoints) and its tokenizer beside it;
    returns the lines to show the user."""
    imported = import_released(checkpoint, tokenizer_dir, trust)
    tokenizer_path = out.with_suffix(".tokenizer.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_path.write_text(imported.tokenizer.to_str(), encoding="utf-8")
    record = {"key": f"released-{Path(checkpoint).stem}", "source": "released CTAL",
              "checkpoint": Path(checkpoint).name, "global_step": imported.global_step,
              "model_config": imported.model, "tokenizer": tokenizer_path.name}
    save_atomic(out, {"model": imported.weights, "record": record})
    overrides = " ".join(f"--set model.{k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in imported.model.items())
    return [*(f"note: {n}" for n in imported.notes),
            f"wrote {out} and {tokenizer_path.name} (vocabulary {imported.tokenizer.get_vocab_size()})",
            f"model config: {overrides}",
            f"fine-tune a suite from it: python bench.py run --suite S --set pretrain.init={out} {overrides}",
            "or in Python: from ctal_bench.models.released import load_converted; "
            f"model, tokenizer = load_converted({str(out)!r}, n_outputs=...)"]


def init_weights(path: Path, model_cfg: ModelConfig, frame_stack: int) -> tuple[dict[str, torch.Tensor], dict]:
    """A converted checkpoint's weights and record, for fine-tuning a model configured as
    ``model_cfg`` on frames stacked ``frame_stack`` at a time; every model field the network
    fixes must agree, and it reads single 160-d frames (the error lists the flags)."""
    state = read_converted(path)
    record = state["record"]
    needed = record["model_config"]
    wrong = {k: v for k, v in needed.items() if getattr(model_cfg, k) != v}
    if "size" in wrong:  # another preset fills every size field anew: ask for all the network fixes
        wrong = dict(needed)
    wrong = {f"model.{k}": v for k, v in wrong.items()}
    if frame_stack != 1:
        wrong["data.frame_stack"] = 1
    if wrong:
        flags = " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in wrong.items())
        raise UserError(f"{path}: the released network needs {flags}")
    return state["model"], {**record, "reused": True}


def load_converted(path: Path, n_outputs: int = 1) -> tuple[CTAL, Tokenizer]:
    """A converted checkpoint (see ``convert``) as our CTAL and its tokenizer."""
    state = read_converted(path)
    record = state["record"]
    tokenizer = converted_tokenizer(path, record)
    imported = Imported(state["model"], record["model_config"], tokenizer, record["global_step"], ())
    return build(imported, n_outputs), tokenizer

