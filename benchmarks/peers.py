"""Our TFN, LMF, late fusion and MulT next to MMSA's, on the same machine, shapes and batch.

    pip install -e '.[peers]'          # MMSA 2.2.1 beside our torch
    python benchmarks/peers.py [--batch 32] [--threads 2] [--repeats 7] [--steps 5] [--out DIR]

Each pair (ours, MMSA's) is built at MMSA's MOSEI regression sizes (``get_config_regression(name,
"mosei")``, ``AMIO``) and fed MOSEI's unaligned shapes: 50 text positions, 500 audio frames of 74
COVAREP features. MMSA's loader averages audio and vision over time for LF_DNN, TFN and LMF
(``need_normalized``), so those see one audio frame; MulT sees all 500. Our models read token ids
through an embedding as wide as MMSA's 768-d text features, and the same audio. MMSA's models also
take vision, which ours have no part for: they get the smallest input they accept (one frame of
35 features; MulT three, the width of its vision convolution), so their timing includes a small
vision branch. A training step is forward, L1 loss, backward and an Adam step; inference is one
forward under ``torch.no_grad``. The two sides alternate in one process (ours, theirs, ours, ...),
after warm-up, ``--repeats`` times; the ratio is theirs / ours per repeat (above 1: ours is
faster), reported as its median and range.

The machine must be otherwise idle: one busy foreign thread makes a 2-thread run several times
slower. The CPU time other processes used during the run is measured (``/proc/stat`` minus this
process); above ``--busy-limit`` of one core the run is refused (exit 2), or with ``--allow-busy``
marked as measured on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctal_bench import catalog
from ctal_bench.config import ModelConfig
from ctal_bench.data.batching import Batch
from ctal_bench.files import atomic_write_text
from ctal_bench.registry import MODELS

TEXT_LEN, TEXT_DIM, AUDIO_LEN, AUDIO_DIM, VISION_DIM = 50, 768, 500, 74, 35
VOCAB = 30_000  # RoBERTa-sized vocabulary for our token embedding

# ours -> (MMSA's name, our preset at MMSA's MOSEI sizes, whether MMSA averages audio over time)
PAIRS = {
    "late_fusion": ("lf_dnn", dict(d_model=TEXT_DIM, hidden=128, text_layers=1, audio_layers=1, ffn_dim=128), True),
    "tfn": ("tfn", dict(d_model=TEXT_DIM, hidden=128, text_layers=1, ffn_dim=16, text_out=128, audio_out=16), True),
    "lmf": ("lmf", dict(d_model=TEXT_DIM, hidden=128, text_layers=1, rank=4, text_out=64, audio_out=16,
                        fusion_out=64), True),
    "mult": ("mult", dict(d_model=30, n_heads=6, text_layers=4, audio_layers=4, ffn_dim=120, memory_layers=3,
                          embed_dim=TEXT_DIM, text_kernel=5, audio_kernel=1), False),
}


@dataclass
class Pair:
    name: str
    peer: str
    ours: nn.Module
    theirs: nn.Module
    our_batch: Batch
    their_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    targets: torch.Tensor


def mmsa_model(name: str) -> nn.Module:
    from MMSA.config import get_config_regression
    from MMSA.models import AMIO

    args = get_config_regression(name, "mosei")
    args.train_mode, args.num_classes = "regression", 1
    args.use_finetune = False
    return AMIO(args)


def our_model(name: str, sizes: dict) -> nn.Module:
    """Our registered model with one preset, ``peer``, at MMSA's sizes. Its token embedding is
    frozen: MMSA's models read fixed 768-d text features, and a trained 30,000 x 768 table would
    add its gradient and Adam update (23M parameters) to our side only."""
    registered = MODELS.get(name)
    at_peer_sizes = type(f"{registered.__name__}AtPeerSizes", (registered,), {"presets": {"peer": sizes}})
    model = at_peer_sizes(ModelConfig(name=name, size="peer"), 1, VOCAB, AUDIO_DIM)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.weight.requires_grad_(False)
    return model


def inputs(name: str, averaged: bool, batch: int, generator: torch.Generator):
    """Our Batch and MMSA's (text, audio, vision) at the same shapes, and regression targets."""
    audio_len = 1 if averaged else AUDIO_LEN
    vision_len = 1 if averaged else 3  # MulT's vision convolution has width 3, no padding
    audio = torch.randn(batch, audio_len, AUDIO_DIM, generator=generator)
    ours = Batch(tokens=torch.randint(4, VOCAB, (batch, TEXT_LEN), generator=generator),
                 token_mask=torch.ones(batch, TEXT_LEN, dtype=torch.bool), audio=audio,
                 audio_mask=torch.ones(batch, audio_len, dtype=torch.bool), targets=None,
                 uids=tuple(map(str, range(batch))), speakers=("s",) * batch)
    theirs = (torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=generator), audio.clone(),
              torch.randn(batch, vision_len, VISION_DIM, generator=generator))
    return ours, theirs, torch.empty(batch).uniform_(-3, 3, generator=generator)


def build(names: list[str], batch: int) -> list[Pair]:
    catalog.load()
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for name in names:
        peer, sizes, averaged = PAIRS[name]
        torch.manual_seed(0)
        ours, theirs = our_model(name, sizes), mmsa_model(peer)
        our_batch, their_inputs, targets = inputs(name, averaged, batch, generator)
        pairs.append(Pair(name, peer, ours, theirs, our_batch, their_inputs, targets))
    return pairs


def step_functions(pair: Pair):
    """(ours train, theirs train, ours infer, theirs infer): each one step, no return value."""
    our_opt = torch.optim.Adam([p for p in pair.ours.parameters() if p.requires_grad], lr=1e-3)
    their_opt = torch.optim.Adam(pair.theirs.parameters(), lr=1e-3)
    loss = nn.L1Loss()

    def ours_train():
        pair.ours.train()
        our_opt.zero_grad(set_to_none=True)
        loss(pair.ours(pair.our_batch).logits.squeeze(-1), pair.targets).backward()
        our_opt.step()

    def theirs_train():
        pair.theirs.train()
        their_opt.zero_grad(set_to_none=True)
        loss(pair.theirs(*pair.their_inputs)["M"].squeeze(-1), pair.targets).backward()
        their_opt.step()

    @torch.no_grad()
    def ours_infer():
        pair.ours.eval()
        pair.ours(pair.our_batch)

    @torch.no_grad()
    def theirs_infer():
        pair.theirs.eval()
        pair.theirs(*pair.their_inputs)

    return ours_train, theirs_train, ours_infer, theirs_infer


def seconds_per_step(step, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def machine_cpu_seconds() -> float:
    """CPU seconds every process on this machine has used (user + nice + system), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(x) for x in fields[:3]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(pairs: list[Pair], batch: int, steps: int, repeats: int, warmup: int, target: float = 0.5
            ) -> list[dict]:
    """Per pair and phase, ``repeats`` timings of each side, interleaved. A timing is the mean of
    ``steps`` steps, fewer for a slow model (about ``target`` seconds, at least one step)."""
    rows = []
    for pair in pairs:
        functions = dict(zip(("ours_train", "theirs_train", "ours_infer", "theirs_infer"), step_functions(pair)))
        counts = {}
        for key, step in functions.items():
            for _ in range(warmup):
                seconds = seconds_per_step(step, 1)
            counts[key] = max(1, min(steps, round(target / seconds)))
        for phase in ("train", "infer"):  # both sides of a phase take the same number of steps
            shared = min(counts[f"ours_{phase}"], counts[f"theirs_{phase}"])
            counts[f"ours_{phase}"] = counts[f"theirs_{phase}"] = shared
        times = {key: [] for key in functions}
        for _ in range(repeats):  # interleaved, so a slow moment of the machine hits both sides
            for key, step in functions.items():
                times[key].append(seconds_per_step(step, counts[key]))
        row = {"model": pair.name, "mmsa": pair.peer,
               "ours_params": sum(p.numel() for p in pair.ours.parameters()),
               "mmsa_params": sum(p.numel() for p in pair.theirs.parameters()),
               "our_audio": list(pair.our_batch.audio.shape), "mmsa_audio": list(pair.their_inputs[1].shape),
               "mmsa_vision": list(pair.their_inputs[2].shape), "steps_per_timing": counts, "seconds": times}
        for phase in ("train", "infer"):
            ratios = [t / o for o, t in zip(times[f"ours_{phase}"], times[f"theirs_{phase}"])]
            row[f"ours_{phase}_samples_per_s"] = batch / statistics.median(times[f"ours_{phase}"])
            row[f"mmsa_{phase}_samples_per_s"] = batch / statistics.median(times[f"theirs_{phase}"])
            row[f"{phase}_ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        rows.append(row)
        print(f"{pair.name:12s} train {row['train_ratio']['median']:6.2f}x  infer {row['infer_ratio']['median']:6.2f}x",
              file=sys.stderr)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Ours vs MMSA {result['mmsa_version']}: batch {result['batch']}, {result['threads']} threads, "
             f"{result['device']} ({result['processor']}), torch {result['torch']}; median of {result['repeats']} "
             f"interleaved repeats of up to {result['steps']} steps (range in brackets). Ratio = MMSA's time / "
             "ours; our token embedding frozen (MMSA reads fixed text features).",
             "", "| ours | MMSA | train samples/s, ours | MMSA | ratio | inference samples/s, ours | MMSA | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        cells = []
        for phase in ("train", "infer"):
            q = r[f"{phase}_ratio"]
            cells += [f"{r[f'ours_{phase}_samples_per_s']:,.0f}", f"{r[f'mmsa_{phase}_samples_per_s']:,.1f}",
                      f"{q['median']:.2f}x [{q['min']:.2f}, {q['max']:.2f}]"]
        lines.append(f"| {r['model']} | {r['mmsa'].upper()} | " + " | ".join(cells) + " |")
    busy = result["other_processes_cpu_share"]
    lines += ["", f"Other processes used {busy:.1%} of one core during the run"
              + (" (over the limit: measured on a busy machine)." if result["busy"] else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="most steps per timing (fewer for a slow model)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--busy-limit", type=float, default=0.10,
                        help="largest share of one core other processes may use (default 0.10)")
    parser.add_argument("--allow-busy", action="store_true", help="report a busy machine's ratios, marked")
    parser.add_argument("--out", type=Path, default=Path("results") / "peers")
    args = parser.parse_args(argv)
    try:
        from importlib.metadata import version

        mmsa_version = version("MMSA")
    except Exception:
        print("error: MMSA is not installed: pip install -e '.[peers]'", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    pairs = build(args.models, args.batch)
    machine0, own0, wall0 = machine_cpu_seconds(), own_cpu_seconds(), time.monotonic()
    rows = measure(pairs, args.batch, args.steps, args.repeats, args.warmup)
    other = (machine_cpu_seconds() - machine0) - (own_cpu_seconds() - own0)
    share = max(0.0, other) / (time.monotonic() - wall0)
    busy = share > args.busy_limit
    result = {"rows": rows, "batch": args.batch, "threads": args.threads, "steps": args.steps,
              "repeats": args.repeats, "device": "cpu", "processor": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "torch": torch.__version__, "mmsa_version": mmsa_version,
              "other_processes_cpu_share": share, "busy": busy, "date": time.strftime("%Y-%m-%d")}
    atomic_write_text(args.out / "peers.json", json.dumps(result, indent=1))
    atomic_write_text(args.out / "peers.md", markdown(result))
    print(markdown(result))
    if busy and not args.allow_busy:
        print(f"error: other processes used {share:.0%} of a core during the run (limit {args.busy_limit:.0%}): "
              "the ratios are not trustworthy; rerun on an idle machine, or pass --allow-busy to keep them marked",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
