"""The device a config asks for, and the peak memory a run used on it."""
from __future__ import annotations

import resource
import sys

import torch

from ctal_bench.errors import UserError


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"run.device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory(device: torch.device) -> dict:
    """Peak memory since the last CUDA reset (GPU), or this process's peak RSS (CPU)."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "memory": "cuda max allocated"}
    return {"peak_memory_bytes": peak_rss_bytes(), "memory": "process peak RSS"}
