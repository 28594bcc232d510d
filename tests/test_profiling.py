"""Profiling: timers against known durations, FLOP counts against hand counts, MFU, peaks."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ctal_bench.experiment import profile as profiling
from ctal_bench.models.ctal import MultiHeadAttention

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def test_cpu_timer_measures_a_known_sleep():
    seconds = profiling.time_steps(lambda: time.sleep(0.02), steps=5, warmup=1, device=CPU)
    assert len(seconds) == 5
    assert 0.02 <= float(seconds.min()) and float(sorted(seconds)[2]) < 0.04


def test_measured_cpu_matmul_peak_is_plausible_for_the_cores():
    peak = profiling.matmul_peak(CPU, torch.float32, n=512, repeats=5)
    # at least 1 GFLOP/s; at most 64 fp32 FLOP/cycle (two AVX-512 FMA units) at 5 GHz per thread
    assert 1e9 < peak < torch.get_num_threads() * 5e9 * 64


def test_timer_agrees_with_the_flops_of_a_known_matmul():
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    peak = profiling.matmul_peak(CPU, torch.float32, n=n, repeats=9)
    median = float(sorted(profiling.time_steps(lambda: a @ b, steps=9, warmup=2, device=CPU))[4])
    assert 2 * n ** 3 / median == pytest.approx(peak, rel=0.5)


def test_linear_flops_forward_and_backward():
    layer, x = nn.Linear(8, 16), torch.randn(4, 8)
    assert profiling.count_flops(layer, lambda: layer(x), backward=False) == 2 * 4 * 8 * 16
    # backward: the weight's gradient, and the input's when it needs one, each the forward's size
    assert profiling.count_flops(layer, lambda: layer(x).sum().backward(), backward=True) == 2 * 2 * 4 * 8 * 16
    x.requires_grad_()
    assert profiling.count_flops(layer, lambda: layer(x).sum().backward(), backward=True) == 3 * 2 * 4 * 8 * 16


def test_ctal_attention_flops_match_a_hand_count():
    B, T, S, d, h = 2, 30, 12, 32, 4
    attention = MultiHeadAttention(d, h, dropout=0.0).eval()
    x, memory = torch.randn(B, T, d), torch.randn(B, S, d)
    mask = torch.ones(B, S, dtype=torch.bool)
    counted = profiling.count_flops(attention, lambda: attention(x, mask, memory=memory), backward=False)
    projections = 2 * B * T * d * d * 2 + 2 * B * S * d * d * 2  # query and out over T; key and value over S
    scores_and_mix = 2 * 2 * B * h * T * S * (d // h)  # QK^T and attention @ V
    assert counted == projections + scores_and_mix


class ManualLSTM(nn.Module):
    """One LSTM layer as two Linear maps per step: what FlopCounterMode can see."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.ih, self.hh, self.hidden = nn.Linear(n_in, 4 * hidden), nn.Linear(hidden, 4 * hidden), hidden

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            i, f, g, o = (self.ih(x[:, t]) + self.hh(h)).chunk(4, dim=-1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
        return h


def test_recurrent_flops_are_counted_analytically():
    B, T, n_in, hidden = 3, 7, 5, 6
    x = torch.randn(B, T, n_in)
    manual = ManualLSTM(n_in, hidden)
    with FlopCounterMode(display=False) as counter:
        manual(x)
    lstm = nn.LSTM(n_in, hidden, batch_first=True)
    assert profiling.rnn_forward_flops(lstm, B * T) == counter.get_total_flops()
    # inside a model, whatever the kernel path, an LSTM counts 3x its forward for training
    model = nn.Sequential(lstm)
    counted = profiling.count_flops(model, lambda: model(x)[0].sum().backward(), backward=True)
    assert counted == 3 * counter.get_total_flops()
    gru = nn.GRU(n_in, hidden, num_layers=2, bidirectional=True)
    per_direction = 2 * 3 * hidden * (n_in + hidden) + 2 * 3 * hidden * (2 * hidden + hidden)
    assert profiling.rnn_forward_flops(gru, 1) == 2 * per_direction


def test_mfu_and_spec_peaks():
    assert profiling.mfu(1e9, 0.01, 2e11) == pytest.approx(0.5)
    assert profiling.mfu(1e9, 0.01, None) != profiling.mfu(1e9, 0.01, None)  # NaN without a peak
    assert profiling.spec_peak("NVIDIA H100 80GB HBM3", "bf16") == ("H100 SXM", 989e12)
    assert profiling.spec_peak("NVIDIA H100 PCIe", "bf16") == ("H100 PCIe", 756e12)
    assert profiling.spec_peak("NVIDIA A100-SXM4-80GB", "bf16") == ("A100", 312e12)
    assert profiling.spec_peak("NVIDIA H200", "bf16") is None


@pytest.mark.integration
def test_profile_command_writes_records_and_the_efficiency_table(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "profile", "--models", "ctal", "lmf",
                           "--steps", "5", "--set", "data.size=tiny", "--results", str(tmp_path / "results"),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "results" / "profile"
    ctal = json.loads((out / "ctal.json").read_text())
    assert set(ctal["phases"]) == {"finetune", "pretrain", "inference", "latency_batch1"}
    finetune = ctal["phases"]["finetune"]
    assert finetune["steps"] == 5 and finetune["flops_per_step"] > 0 and finetune["peak_memory_bytes"] > 0
    assert 0 < finetune["mfu_measured_peak"] < 1.5
    assert [s["batch"] for s in ctal["phases"]["inference"]["sweep"]] == [1, 8, 32]
    assert ctal["environment"]["versions"]["torch"] and ctal["threads"] >= 1 and ctal["dtype"] == "fp32"
    assert "pretrain" not in json.loads((out / "lmf.json").read_text())["phases"]
    table = (out / "efficiency.md").read_text()
    assert "| ctal (pre-training) |" in table and "| lmf |" in table and "MFU" in table


@pytest.mark.cuda
def test_cuda_event_timing_and_peak_memory():
    device = torch.device("cuda")
    seconds = profiling.time_steps(lambda: torch.cuda._sleep(50_000_000), steps=3, warmup=1, device=device)
    assert (seconds > 0).all()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.max_memory_allocated(device)
    block = torch.empty(64 * 2 ** 20, dtype=torch.uint8, device=device)
    assert torch.cuda.max_memory_allocated(device) - before >= 64 * 2 ** 20
    del block
    peak = profiling.matmul_peak(device, torch.bfloat16, n=4096, repeats=5)
    assert 1e12 < peak < 2e15
