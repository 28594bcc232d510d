"""Datasets, features, tokenizer and batching: everything between files on disk and batches."""
from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """Where datasets and feature caches live unless ``--data-dir`` says otherwise."""
    if "CTAL_BENCH_DATA_DIR" in os.environ:
        return Path(os.environ["CTAL_BENCH_DATA_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ctal-bench"
