"""The one place that imports every module that registers a model, dataset or task."""
from __future__ import annotations

import importlib

REGISTERING_MODULES = (
    "ctal_bench.train.tasks",
    "ctal_bench.models.ctal",
    "ctal_bench.data.synth",
    "ctal_bench.data.iemocap",
    "ctal_bench.data.mmsa",
    "ctal_bench.data.librispeech",
    "ctal_bench.baselines.text_only",
    "ctal_bench.baselines.audio_only",
    "ctal_bench.baselines.late_fusion",
    "ctal_bench.baselines.tfn",
    "ctal_bench.baselines.lmf",
    "ctal_bench.baselines.mult",
)


def load() -> None:
    """Import every registering module (idempotent: Python imports each module once)."""
    for name in REGISTERING_MODULES:
        importlib.import_module(name)
