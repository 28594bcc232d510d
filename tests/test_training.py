"""The training loop's selection: the dev score that picks the epoch is the one a record keeps."""
import pytest
import torch

from ctal_bench.data import batching
from ctal_bench.train import loop as training
from ctal_bench.train.loop import Schedule, fit


def test_dev_selection_runs_in_full_precision_like_the_recorded_dev_score(monkeypatch):
    """On CUDA, training runs under bf16 autocast; the dev score that selects the epoch must not
    (finetune records dev, and test, in fp32 with the selected weights): the selected score and
    the recorded one are then the same number. Autocast is forced on CPU here to see it."""
    monkeypatch.setattr(training, "_autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    torch.manual_seed(0)
    xs, ys = torch.randn(32, 4), torch.randn(32, 1)
    model = torch.nn.Linear(4, 1)

    def batches(epoch):
        for i in range(0, 32, 16):
            yield batching.Batch(torch.zeros(16, 1, dtype=torch.long), torch.ones(16, 1, dtype=torch.bool),
                                 xs[i:i + 16, None, :], torch.ones(16, 1, dtype=torch.bool), ys[i:i + 16], (), ())

    def loss(m, b):
        assert torch.is_autocast_enabled("cpu"), "training itself still runs under autocast"
        return {"mse": ((m(b.audio[:, 0]) - b.targets) ** 2).float().mean()}

    seen = []

    def dev_score():
        seen.append(torch.is_autocast_enabled("cpu"))
        with torch.no_grad():
            return float(((model(xs) - ys) ** 2).mean())

    result = fit(model, batches, 2, loss, Schedule(epochs=3, lr=0.05, weight_decay=0.0, warmup=0.1, clip=1.0),
                 torch.device("cpu"), evaluate=dev_score, selection_metric="mae")
    assert seen == [False] * 3, "dev is scored outside autocast"
    assert result.best_score == pytest.approx(dev_score())  # the selected weights score what was selected on
