"""The one place that imports every module that registers a model, dataset or task."""
from __future__ import annotations

import importlib

REGISTERING_MODULES = (
    "ctal_bench.tasks",
    "ctal_bench.models.ctal",
    "ctal_bench.data.synth",
    "ctal_bench.data.iemocap",
    "ctal_bench.data.mmsa",
    "ctal_bench.data.librispeech",
    "baselines.text_only",
    "baselines.audio_only",
    "baselines.late_fusion",
    "baselines.tfn",
    "baselines.lmf",
    "baselines.mult",
)


def load() -> None:
    """Import every registering module (idempotent: Python imports each module once)."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)
