"""`bench.py profile`: step time, throughput, memory, FLOPs and MFU per model and phase.

Timing: on CUDA, a pair of ``torch.cuda.Event``s around every step and one synchronise at the
end (no host sync inside the timed loop); on CPU, ``time.perf_counter`` with the thread count
fixed and recorded. Warm-up steps are excluded. Shapes are fixed and come from the data: the
dev split's median and 95th-percentile audio frames and tokens (inputs are random tensors of
those shapes; values do not change the cost).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one step (forward + backward for
training). It does not count every op, so two counts are added by hand and tested:
- CPU fused attention (``_scaled_dot_product_flash_attention_for_cpu`` and its backward), with
  the counter's own SDPA formulas;
- recurrent layers (LSTM/GRU), which it counts only on some paths (CPU autograd decomposition,
  not cuDNN or the fused CPU kernel): their counted FLOPs are replaced by an analytic count,
  2 x steps x (every input and hidden weight matrix), times 3 for forward + backward.
Elementwise ops (activations, norms, softmax outside fused attention) are not counted, as is
conventional. MFU = achieved FLOP/s / peak, against the device's spec-sheet peak (where the
device is in SPEC_PEAKS) and against a matmul peak measured in the same run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils import flop_counter

from ctal_bench.train.device import peak_memory

# Dense peak FLOP/s from the vendors' spec sheets (bf16 = tensor cores without sparsity).
SPEC_PEAKS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 51e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def spec_peak(device_name: str, dtype: str) -> tuple[str, float] | None:
    """(table entry, peak FLOP/s) for a device name as CUDA reports it, or None if unknown."""
    name = device_name.upper()
    if "H100" in name:
        entry = "H100 PCIe" if "PCIE" in name else "H100 SXM"  # "H100 80GB HBM3" is the SXM part
    elif "A100" in name:
        entry = "A100"
    else:
        return None
    return entry, SPEC_PEAKS[entry][dtype]


# ---- timing -------------------------------------------------------------------------------------

def time_steps(step: Callable[[], object], steps: int, warmup: int, device: torch.device) -> np.ndarray:
    """Seconds per step for ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return np.array([start.elapsed_time(end) / 1000 for start, end in events])
    seconds = np.empty(steps)
    for i in range(steps):
        started = time.perf_counter()
        step()
        seconds[i] = time.perf_counter() - started
    return seconds


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Achieved FLOP/s of an n x n matmul, the practical peak to measure MFU against."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_steps(lambda: a @ b, repeats, warmup=2, device=device)
    return 2 * n ** 3 / float(np.median(seconds))


# ---- FLOPs --------------------------------------------------------------------------------------

def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


CUSTOM_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def rnn_forward_flops(rnn: nn.RNNBase, steps: int) -> int:
    """Matmul FLOPs of one forward pass over ``steps`` time steps (summed over the batch):
    2 x steps x rows x cols for every input and hidden weight of every layer and direction."""
    return sum(2 * steps * weight.shape[0] * weight.shape[1]
               for name, weight in rnn.named_parameters() if name.startswith(("weight_ih", "weight_hh")))


def count_flops(model: nn.Module, step: Callable[[], object], backward: bool) -> int:
    """FLOPs of one call of ``step`` (which runs ``model``), with the hand counts above."""
    rnns = [m for m in model.modules() if isinstance(m, (nn.LSTM, nn.GRU))]
    steps: dict[nn.Module, int] = {}  # batch x time steps each RNN ran (padded steps run too)

    def record_steps(module, inputs, _output):
        x = inputs[0]  # (B, T, D): our RNNs are batch-first and unpacked
        steps[module] = steps.get(module, 0) + x.shape[0] * x.shape[1]

    hooks = [m.register_forward_hook(record_steps) for m in rnns]
    counter = flop_counter.FlopCounterMode(mods=None, display=False, custom_mapping=CUSTOM_FLOPS)
    try:
        with counter:
            step()
    finally:
        for hook in hooks:
            hook.remove()
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    root = type(model).__name__
    for name, module in model.named_modules():
        if module in steps:
            counted = sum(counts.get(f"{root}.{name}", {}).values())
            total += (3 if backward else 1) * rnn_forward_flops(module, steps[module]) - counted
    return int(total)


# ---- measurement --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    audio_frames: int
    tokens: int


def random_batch(batch: int, shape: Shape, vocab_size: int, n_outputs: int, device: torch.device,
                 audio_dim: int):
    from ctal_bench.data.batching import Batch
    from ctal_bench.data.text import SPECIAL_TOKENS

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(len(SPECIAL_TOKENS), vocab_size, (batch, shape.tokens), generator=generator)
    return Batch(tokens=tokens, token_mask=torch.ones(batch, shape.tokens, dtype=torch.bool),
                 audio=torch.randn(batch, shape.audio_frames, audio_dim, generator=generator),
                 audio_mask=torch.ones(batch, shape.audio_frames, dtype=torch.bool),
                 targets=torch.randint(0, n_outputs, (batch,), generator=generator),
                 uids=("",) * batch, speakers=("",) * batch).to(device)


def summarise_times(seconds: np.ndarray, samples: int, shape: Shape, frame_ms: float) -> dict:
    median = float(np.median(seconds))
    q1, q3, p90 = np.percentile(seconds, [25, 75, 90])
    return {"median_s": median, "iqr_s": float(q3 - q1), "p90_s": float(p90), "steps": len(seconds),
            "samples_per_s": samples / median,
            "audio_seconds_per_s": samples * shape.audio_frames * frame_ms / 1000 / median,
            "tokens_per_s": samples * shape.tokens / median}


def mfu(flops_per_step: float, median_step_s: float, peak_flops: float | None) -> float:
    """Model FLOP utilisation: achieved FLOP/s over a peak (NaN without one)."""
    if not peak_flops or not median_step_s:
        return math.nan
    return flops_per_step / median_step_s / peak_flops


def batch_sizes(device: torch.device) -> Sequence[int]:
    return (1, 8, 32, 128, 512) if device.type == "cuda" else (1, 8, 32)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def profile_model(cfg, vocab_size: int, n_outputs: int, shapes: dict[str, Shape], device: torch.device,
                  dtype: str, compile: bool, steps: int, warmup: int) -> dict:
    """Every phase of one model: pre-training step (pre-trainable models), fine-tuning step,
    inference over a batch-size sweep, and batch-1 latency at each shape."""
    from ctal_bench.data import batching
    from ctal_bench.registry import MODELS, TASKS
    from ctal_bench.train import finetune, pretrain
    from ctal_bench.train.optim import adamw

    torch.manual_seed(0)
    width = batching.audio_dim(cfg.data)
    model = MODELS.get(cfg.model.name)(cfg.model, n_outputs, vocab_size, width).to(device)
    runnable = torch.compile(model) if compile else model
    task = TASKS.get("emotion")
    optimizer = adamw(model, 1e-4, 0.01)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    generator = torch.Generator(device=device).manual_seed(0)
    frame_ms = batching.frame_ms(cfg.data)
    median = shapes["median"]
    record = {"model": cfg.model.name, "size": cfg.model.size, "parameters": sum(p.numel() for p in model.parameters()),
              "phases": {}}

    def training(losses) -> Callable[[], None]:
        def step():
            with autocast:
                loss = sum(losses().values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    batch = random_batch(cfg.finetune.batch_size, median, vocab_size, n_outputs, device, width)
    phases = {"finetune": (cfg.finetune.batch_size, lambda: finetune._losses(task, runnable, batch))}
    if getattr(type(model), "pretrainable", False):
        pre_batch = random_batch(cfg.pretrain.batch_size, median, vocab_size, n_outputs, device, width)
        pretraining = model.pretraining()
        pretraining = torch.compile(pretraining) if compile else pretraining
        phases["pretrain"] = (cfg.pretrain.batch_size,
                              lambda: pretrain.pretrain_losses(pretraining, pre_batch, cfg, vocab_size, generator))
    for phase, (size, losses) in phases.items():
        model.train()
        flops = count_flops(model, training(losses), backward=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_steps(training(losses), steps, warmup, device)
        record["phases"][phase] = {"batch": size, "shape": median.__dict__, "flops_per_step": flops,
                                   "flops_per_sample": flops / size, **summarise_times(seconds, size, median, frame_ms),
                                   **peak_memory(device)}

    model.eval()
    sweep = []
    for size in batch_sizes(device):
        batch = random_batch(size, median, vocab_size, n_outputs, device, width)

        def forward():
            with torch.inference_mode(), autocast:
                runnable(batch)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                flops = count_flops(model, forward, backward=False)
            seconds = time_steps(forward, steps, warmup, device)
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            sweep.append({"batch": size, "error": "out of memory"})
            torch.cuda.empty_cache()
            break
        sweep.append({"batch": size, "flops_per_step": flops, **summarise_times(seconds, size, median, frame_ms),
                      **peak_memory(device)})
    record["phases"]["inference"] = {"shape": median.__dict__, "sweep": sweep}
    latency = {}
    for name, shape in shapes.items():
        batch = random_batch(1, shape, vocab_size, n_outputs, device, width)

        def forward():
            with torch.inference_mode(), autocast:
                runnable(batch)
        seconds = time_steps(forward, steps, warmup, device)
        latency[name] = {"shape": shape.__dict__, "p50_s": float(np.median(seconds)),
                         "p90_s": float(np.percentile(seconds, 90))}
    record["phases"]["latency_batch1"] = latency
    return record


# ---- the command --------------------------------------------------------------------------------

def data_shapes(cfg, data) -> tuple[dict[str, Shape], int, int]:
    """Median and 95th-percentile (audio frames, tokens) of the emotion task's dev split, the
    vocabulary size and the number of emotion classes."""
    dataset = data.dataset(cfg.data.dataset, cfg.data.size)
    task_data = data.task_data(cfg, "emotion", dataset.folds("emotion")[0])
    frames = np.array([len(item.audio) for item in task_data.dev])
    tokens = np.array([len(item.tokens) for item in task_data.dev])
    shapes = {name: Shape(int(np.percentile(frames, q)), int(np.percentile(tokens, q)))
              for name, q in (("median", 50), ("p95", 95))}
    return shapes, task_data.vocab_size, task_data.n_outputs


def _profile_in_child(cfg, vocab_size, n_outputs, shapes, device, dtype, compile, steps, warmup, threads):
    from ctal_bench import catalog

    catalog.load()  # a spawned process starts with empty registries
    torch.set_num_threads(threads)
    return profile_model(cfg, vocab_size, n_outputs, shapes, torch.device(device), dtype, compile, steps, warmup)


def run(decl, models: Sequence[str], scale: str, overrides: Sequence[str], device: torch.device, dtype: str,
        compile: bool, results, data, steps: int = 50, warmup: int | None = None, console=None) -> list[dict]:
    """Profile ``models`` at ``scale``, each in a fresh process (so CPU peak RSS is its own);
    write results/profile/<model>.json and the efficiency table; return the records."""
    import json
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from rich.console import Console
    from rich.progress import Progress

    from ctal_bench.analysis import tables
    from ctal_bench.config import apply_overrides, to_dict
    from ctal_bench.experiment.plan import base_config
    from ctal_bench.files import atomic_write_text
    from ctal_bench.results import ResultsStore, environment

    console = console or Console()
    warmup = warmup if warmup is not None else (20 if compile else 5)
    threads = torch.get_num_threads()
    matmul = matmul_peak(device, DTYPES[dtype])
    spec = spec_peak(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
    out_dir = ResultsStore(results).profiles
    records = []
    with Progress(console=console) as progress, ProcessPoolExecutor(
            max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        task = progress.add_task("profile", total=len(models))
        for name in models:
            progress.update(task, description=f"profile {name}")
            cfg = apply_overrides(base_config(decl, scale, name), list(overrides))
            cfg = apply_overrides(cfg, {"model.name": name})
            shapes, vocab_size, n_outputs = data_shapes(cfg, data)
            record = pool.submit(_profile_in_child, cfg, vocab_size, n_outputs, shapes, str(device), dtype,
                                 compile, steps, warmup, threads).result()
            for phase in ("finetune", "pretrain"):
                if phase in record["phases"]:
                    p = record["phases"][phase]
                    p["mfu_measured_peak"] = mfu(p["flops_per_step"], p["median_s"], matmul)
                    p["mfu_spec_peak"] = mfu(p["flops_per_step"], p["median_s"], spec[1] if spec else None)
            record.update({"scale": scale, "device": str(device), "dtype": dtype, "compile": compile,
                           "threads": threads, "warmup": warmup, "matmul_peak_flops": matmul,
                           "spec_peak": {"entry": spec[0], "flops": spec[1]} if spec else None,
                           "config": to_dict(cfg), "environment": environment()})
            atomic_write_text(out_dir / f"{name}.json", json.dumps(record, indent=1))
            records.append(record)
            progress.advance(task)
    table = efficiency_table(records)
    for fmt, render in (("md", tables.to_markdown), ("tex", tables.to_latex)):
        atomic_write_text(out_dir / f"efficiency.{fmt}", render(table))
    console.print(tables.to_rich(table))
    console.print(f"profiles and the efficiency table in {out_dir}")
    return records


def efficiency_table(records: Sequence[dict]):
    from ctal_bench.analysis.tables import Entry, TableData

    first = records[0]
    spec = first["spec_peak"]
    caption = (f"{first['environment']['device']}, {first['dtype']}, {first['threads']} threads"
               f"{', torch.compile' if first['compile'] else ''}; scale {first['scale']}. Step times are medians "
               f"over {first['phases']['finetune']['steps']} timed steps after {first['warmup']} warm-up steps, at "
               f"the dev split's median shape; latency at batch 1 (median and 95th-percentile shapes). FLOPs "
               f"from torch's FlopCounterMode plus hand counts for CPU fused attention and recurrent layers "
               f"(forward + backward for training). MFU against a {first['matmul_peak_flops'] / 1e9:.0f} GFLOP/s "
               f"matmul measured in the same run" + (f" and the {spec['entry']} spec sheet" if spec else "")
               + f". Memory: {first['phases']['finetune']['memory']}.")
    columns = ["params", "GFLOPs/sample", "train samples/s", "p50 / p90 ms (b1, median)",
               "p50 ms (b1, p95)", "best inference samples/s", "peak MB", "MFU measured"]
    if spec:
        columns.append("MFU spec")
    table = TableData("efficiency", "Cost per model", caption, columns)
    for record in records:
        latency = record["phases"]["latency_batch1"]
        sweep = [s for s in record["phases"]["inference"]["sweep"] if "error" not in s]
        best = max(sweep, key=lambda s: s["samples_per_s"])
        for phase in ("finetune", "pretrain"):
            if phase not in record["phases"]:
                continue
            p = record["phases"][phase]
            row = [f"{record['parameters'] / 1e6:.2f}M", f"{p['flops_per_sample'] / 1e9:.3f}",
                   f"{p['samples_per_s']:.0f}",
                   f"{latency['median']['p50_s'] * 1e3:.1f} / {latency['median']['p90_s'] * 1e3:.1f}",
                   f"{latency['p95']['p50_s'] * 1e3:.1f}", f"{best['samples_per_s']:.0f} (b{best['batch']})",
                   f"{p['peak_memory_bytes'] / 2 ** 20:.0f}", f"{100 * p['mfu_measured_peak']:.1f}%"]
            if spec:
                row.append(f"{100 * p['mfu_spec_peak']:.1f}%")
            label = record["model"] + (" (pre-training)" if phase == "pretrain" else "")
            table.rows.append((label, [Entry(text) for text in row]))
    return table
