"""Data-parallel pre-training: two CPU processes (gloo) train the model one process trains."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ctal_bench import catalog, declarations
from ctal_bench.cli.pretrain import command_config
from ctal_bench.config import Config, apply_overrides
from ctal_bench.data.batching import AUDIO_DIM, Item
from ctal_bench.data.prepare import DataPipeline
from ctal_bench.data.text import CLS_ID, SEP_ID, SPECIAL_TOKENS
from ctal_bench.declarations import Variant
from ctal_bench.errors import UserError
from ctal_bench.experiment.plan import Request, cell_config
from ctal_bench.train.distributed import SINGLE_PROCESS, World, from_environment, process_group
from ctal_bench.train.pretrain import checkpoint_path, pretrain_key, pretrained_weights

pytestmark = pytest.mark.integration  # torchrun-style process groups

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 40
# 21 utterances in batches of 4: five full batches and a last one of 1 row, which leaves the
# second process without rows (it must still take part in every gradient all-reduce).
UTTERANCES = 21
STEPS_PER_EPOCH = 6
# dropout 0, so that both runs compute the same function and only float rounding differs.
TINY = {"model.d_model": 16, "model.n_heads": 2, "model.text_layers": 1, "model.audio_layers": 1,
        "model.ffn_dim": 32, "model.dropout": 0.0, "model.attention_dropout": 0.0,
        "pretrain.epochs": 2, "pretrain.batch_size": 4, "pretrain.lr": 1e-3, "pretrain.warmup": 0.2,
        "pretrain.span_min": 5, "pretrain.span_max": 10}


class RandomCorpus:
    """Stands in for the DataPipeline in pre-training: random utterances, nothing on disk."""

    root = Path("random-corpus")

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            words = rng.integers(len(SPECIAL_TOKENS), VOCAB, rng.integers(3, 11))
            tokens = np.concatenate([[CLS_ID], words, [SEP_ID]]).astype(np.int64)
            audio = rng.standard_normal((rng.integers(30, 71), AUDIO_DIM)).astype(np.float16)
            self.items.append(Item(f"u{i}", f"s{i % 3}", tokens, audio, None))

    def pretraining_dataset(self, cfg):
        return self

    def pretraining_source(self, cfg):
        return "synth", self.root.name

    def pretraining_items(self, cfg):
        return self.items

    def tokenizer(self, cfg):
        return self

    def get_vocab_size(self) -> int:
        return VOCAB


class Interrupted(Exception):
    pass


def tiny_config(**overrides) -> Config:
    catalog.load()
    return apply_overrides(Config(), {**TINY, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain_in_two_processes(rank: int, port: int, out: Path) -> None:
    """One of two torchrun-like processes: pre-train, crash in the second epoch, resume; then
    pre-train the streams apart (some parameters get no gradient)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg, corpus = tiny_config(), RandomCorpus(UTTERANCES)
    world = from_environment()
    steps = []

    def crash_in_second_epoch():
        steps.append(1)
        if len(steps) == STEPS_PER_EPOCH + 2:
            raise Interrupted

    with process_group(world, torch.device("cpu")) as device:
        try:
            pretrained_weights(cfg, corpus, out / "checkpoints", device, crash_in_second_epoch, world)
        except Interrupted:
            pass
        weights, record = pretrained_weights(cfg, corpus, out / "checkpoints", device, world=world)
        apart, _ = pretrained_weights(tiny_config(**{"pretrain.cross_modal": False}), corpus, out / "apart",
                                      device, world=world)
    torch.save({"weights": weights, "record": record, "apart": apart}, out / f"rank-{rank}.pt")


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_processes_train_the_model_one_process_trains(tmp_path):
    """Identical parameters on both ranks, equal to one process on the same global batches,
    through an interruption and a resume, and with parameters that get no gradient."""
    mp.spawn(_pretrain_in_two_processes, args=(free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank-{rank}.pt", weights_only=True) for rank in (0, 1)]
    for trained in ("weights", "apart"):
        for name, tensor in ranks[0][trained].items():
            assert torch.equal(tensor, ranks[1][trained][name]), (trained, name)

    torch.set_num_threads(1)
    corpus, cpu = RandomCorpus(UTTERANCES), torch.device("cpu")
    single, record = pretrained_weights(tiny_config(), corpus, tmp_path / "single", cpu)
    assert largest_difference(ranks[0]["weights"], single) < 1e-5
    apart, _ = pretrained_weights(tiny_config(**{"pretrain.cross_modal": False}), corpus, tmp_path / "single", cpu)
    assert largest_difference(ranks[0]["apart"], apart) < 1e-5

    # The curve holds global-batch losses; rank 0 wrote the checkpoint and removed the partial one.
    distributed = ranks[0]["record"]
    assert distributed["processes"] == 2 and distributed["steps"] == 2 * STEPS_PER_EPOCH
    for ddp_row, one_row in zip(distributed["curve"], record["curve"], strict=True):
        assert ddp_row["train_mlm"] == pytest.approx(one_row["train_mlm"], rel=1e-5)
        assert ddp_row["train_mam"] == pytest.approx(one_row["train_mam"], rel=1e-5)
    saved = torch.load(checkpoint_path(tmp_path / "checkpoints", distributed["key"]), weights_only=True)
    assert all(torch.equal(saved["model"][k], ranks[0]["weights"][k]) for k in single)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"pretrain-{distributed['key']}.pt"]


def test_global_batch_must_split_evenly_over_the_processes(tmp_path):
    with pytest.raises(UserError, match="pretrain.batch_size 4 does not split evenly over 3 processes"):
        pretrained_weights(tiny_config(), RandomCorpus(8), tmp_path, torch.device("cpu"),
                           world=World(rank=0, size=3))
    assert not tmp_path.joinpath("checkpoints").exists()


def test_suite_cells_find_the_checkpoint_the_command_writes():
    """`bench.py pretrain --scale S --set ...` keys its checkpoint as the suite's cells at scale S do."""
    decl = declarations.load()
    overrides = ("data.size=tiny", "pretrain.epochs=3")
    command = command_config(decl, "smoke", None, list(overrides), seed=2, device="cpu")
    suite = decl.suites.get("paper")
    variants = (Variant("ctal", "ctal"), *decl.ablations.get("no_fusion").variants())
    request = Request("paper", variants, suite.tasks, (2,), "smoke", overrides)
    data = DataPipeline(Path("unused"))  # keys open nothing
    for variant in variants:
        for task in suite.tasks:
            cell = cell_config(decl, suite, request, variant, task, 2)
            assert pretrain_key(cell, data) == pretrain_key(command, data)


@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [1, 4, 7, 16])
def test_ranks_share_every_batch_without_overlap(size, n):
    shares = [World(rank, size).rows(n) for rank in range(size)]
    covered = [i for share in shares for i in range(n)[share]]
    assert covered == list(range(n))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def test_world_comes_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert from_environment() == SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == World(rank=3, size=4, local_rank=1)
    assert not from_environment().is_main
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="torchrun"):
        from_environment()


@pytest.mark.slow
def test_torchrun_command_matches_one_process_and_its_checkpoint_is_reused(tmp_path):
    """`bench.py pretrain` under torchrun with 2 CPU processes on the tiny synth set."""
    args = ["pretrain", "--scale", "smoke", "--device", "cpu", "--data-dir", str(tmp_path / "data"),
            "--set", "data.size=tiny", "--set", "pretrain.epochs=1", "--set", "model.dropout=0.0"]
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(ROOT / "bench.py"), *args, "--results", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    assert "checkpoint: " in single.stdout and "over 1 process(es)" in single.stdout
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "bench.py"), *args, "--results", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "over 2 process(es)" in two.stdout and two.stdout.count("checkpoint: ") == 1  # rank 0 prints

    [one_path] = (tmp_path / "one" / "checkpoints").glob("pretrain-*.pt")
    [two_path] = (tmp_path / "two" / "checkpoints").glob("pretrain-*.pt")
    assert one_path.name == two_path.name  # the same key: a suite finds either
    one, two = (torch.load(p, weights_only=True)["model"] for p in (one_path, two_path))
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4

    again = subprocess.run([sys.executable, str(ROOT / "bench.py"), *args, "--results", str(tmp_path / "two")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "already pre-trained" in again.stdout
