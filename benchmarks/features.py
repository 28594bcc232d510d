"""Time acoustic feature extraction: a cold pass (empty cache) and a cached pass.

    python benchmarks/features.py --synth default        # build or reuse synth-default, then time it
    python benchmarks/features.py DIR_OR_FILE [...]       # audio files, directories (recursive) or
                                                          # a synth build's root
Reports audio hours, seconds and x real time for both passes on stdout and as JSON
(--out). The cold pass uses a fresh cache directory; "cold" means no cached features, not
an empty OS page cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import soundfile
import torch

from ctal_bench.config import FeatureConfig, config_hash, to_dict
from ctal_bench.data import default_data_dir
from ctal_bench.data.base import Example
from ctal_bench.data.features import extract_features
from ctal_bench.errors import UserError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def synth_examples(root: Path) -> list[Example]:
    from ctal_bench.data.synth import ROLES, SynthDataset

    dataset = SynthDataset(root)
    return [example for role in ROLES for example in dataset.by_role[role]]


def examples_from(paths: list[Path]) -> list[Example]:
    """Examples for every audio file named or found under the given paths."""
    examples: list[Example] = []
    for path in paths:
        if (path / "manifest.json").is_file():
            examples += synth_examples(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise UserError(f"{path}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) found")
            examples += [Example(uid=str(p), audio=p, text="", speaker="") for p in files]
        elif path.is_file():
            examples.append(Example(uid=str(path), audio=path, text="", speaker=""))
        else:
            raise UserError(f"{path}: no such file or directory")
    return examples


def audio_seconds(examples: list[Example]) -> float:
    total = 0.0
    for example in examples:
        try:
            total += soundfile.info(str(example.audio)).duration
        except (soundfile.SoundFileError, RuntimeError) as e:
            raise UserError(f"{example.audio}: expected a readable audio file ({e})") from None
    return total


def timed_pass(examples, cfg, cache_dir, workers, progress) -> tuple[float, int]:
    start = time.perf_counter()
    feats = extract_features(examples, cfg, cache_dir, workers=workers, progress=progress)
    return time.perf_counter() - start, sum(len(f) for f in feats.values())


def run(args: argparse.Namespace) -> dict:
    if args.synth:
        from ctal_bench.data.synth import build

        roots = [build(args.data_dir, args.synth, workers=args.workers, progress=not args.quiet)]
    else:
        roots = args.paths
    if not roots:
        raise UserError("nothing to time; expected audio paths or --synth SIZE")
    examples = examples_from(roots)
    seconds = audio_seconds(examples)
    cfg = FeatureConfig()
    with tempfile.TemporaryDirectory(prefix="ctal-bench-features-") as cache:
        cold, frames = timed_pass(examples, cfg, Path(cache), args.workers, not args.quiet)
        cached, _ = timed_pass(examples, cfg, Path(cache), args.workers, not args.quiet)
    return {
        "inputs": [str(r) for r in roots],
        "files": len(examples),
        "audio_hours": seconds / 3600,
        "frames": frames,
        "workers": args.workers,
        "cold": {"seconds": cold, "x_real_time": seconds / cold},
        "cached": {"seconds": cached, "x_real_time": seconds / cached},
        "cached_speedup": cold / cached,
        "feature_config": to_dict(cfg),
        "feature_config_hash": config_hash(cfg),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="audio files, directories or a synth build root")
    parser.add_argument("--synth", metavar="SIZE", help="build (or reuse) synth-SIZE and time that")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="where --synth builds")
    parser.add_argument("--workers", type=int, default=2, help="extraction processes (1 = in-process)")
    parser.add_argument("--out", type=Path, default=Path("results/profile/features.json"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['files']} files, {report['audio_hours']:.3f} h of audio, {report['workers']} worker(s)")
    for name in ("cold", "cached"):
        r = report[name]
        print(f"{name:>7}: {r['seconds']:8.2f} s  {r['x_real_time']:10.0f}x real time")
    print(f"cached pass {report['cached_speedup']:.0f}x faster than cold; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
