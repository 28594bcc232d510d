import math

import pytest

from ctal_bench.train.optim import lr_at


def test_linear_warmup_then_linear_decay():
    total, peak = 100, 1e-3
    lrs = [lr_at(s, total, peak, warmup=0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 10) and lrs[9] == pytest.approx(peak)  # 10 warm-up steps
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # then falling, every step
    assert lr_at(total, total, peak, 0.1) == 0.0


def test_cosine_decay_midpoint():
    assert lr_at(55, 100, 1.0, warmup=0.1, schedule="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(50, 100, 1.0, 0.1, "step")
