"""A checkpoint converted by ``bench.py import-ctal``: its state, and the released tokenizer saved
beside it (which the data pipeline tokenises with when fine-tuning starts from released weights)."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from ctal_bench.errors import UserError


def read_converted(path: Path) -> dict:
    """The state ``bench.py import-ctal`` wrote (weights and record), loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: converted checkpoint not found (write one with bench.py import-ctal)")
    not_ours = (f"{path}: not a checkpoint written by bench.py import-ctal; convert a released CTAL checkpoint "
                "with it first (its --trust-checkpoint is for a released file from a source you trust)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message advises unpickling the file unsafely: not ours to pass on
        raise UserError(not_ours) from None
    if not isinstance(state, dict) or not isinstance(state.get("record"), dict) \
            or state["record"].get("source") != "released CTAL":
        raise UserError(not_ours)
    return state


def converted_tokenizer(path: Path, record: dict | None = None) -> Tokenizer:
    """The released tokenizer saved beside a converted checkpoint (``record``: its record, if
    already loaded)."""
    record = record or read_converted(path)["record"]
    return Tokenizer.from_str((Path(path).parent / record["tokenizer"]).read_text(encoding="utf-8"))
