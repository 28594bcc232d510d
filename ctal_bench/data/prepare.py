"""Datasets -> examples -> cached features and token ids -> items, for pre-training and each task.

A ``DataPipeline`` lives for one process and memoises what cells share (opened datasets, the
tokenizer, features), so a suite reads each feature file once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctal_bench.config import Config, FeatureConfig, config_hash
from ctal_bench.data import batching, features, text
from ctal_bench.data.base import Dataset, Example, Split
from ctal_bench.errors import UserError
from ctal_bench.registry import DATASETS, TASKS


@dataclass(frozen=True)
class TaskData:
    """One task and fold, ready for the training loop."""

    split: Split
    train: list[batching.Item]
    dev: list[batching.Item]
    test: list[batching.Item]
    n_outputs: int
    vocab_size: int
    truncated: int  # utterances cut at data.max_audio_frames


class DataPipeline:
    def __init__(self, data_dir: Path, data_paths: dict[str, Path] | None = None, workers: int = 2,
                 progress: bool = True):
        self.data_dir = Path(data_dir)
        self.data_paths = dict(data_paths or {})
        self.workers, self.progress = workers, progress
        self._datasets: dict[tuple[str, str], Dataset] = {}
        self._features: dict[tuple[str, str], np.ndarray] = {}  # (feature cfg hash, uid) -> (T, 160)
        self._tokenizers: dict[tuple[str, int], object] = {}

    def root(self, name: str, size: str) -> Path:
        """A dataset's directory: the one --data gave, else synth's build under the data dir."""
        DATASETS.get(name)  # unknown name -> "did you mean"
        if name in self.data_paths:
            return self.data_paths[name]
        if name == "synth":
            from ctal_bench.data import synth

            return synth.build_root(self.data_dir, size)
        raise UserError(f"dataset {name!r} is on your disk, not built in: pass --data {name}=PATH")

    def dataset(self, name: str, size: str) -> Dataset:
        """Open a registered dataset; ``synth`` is built (or verified) under the data dir."""
        key = (name, size if name == "synth" else "")
        if key not in self._datasets:
            root = self.root(name, size)
            if name == "synth" and name not in self.data_paths:
                from ctal_bench.data import synth

                root = synth.build(self.data_dir, size, workers=self.workers, progress=self.progress)
            self._datasets[key] = DATASETS.get(name)(root)
        return self._datasets[key]

    def pretraining_source(self, cfg: Config) -> tuple[str, str]:
        """(dataset name, corpus directory name) of the corpus that pre-trains CTAL, without
        opening it: what a pre-training's key needs."""
        name = cfg.data.pretrain_dataset
        if not name:
            if DATASETS.get(cfg.data.dataset).has_pretraining:
                name = cfg.data.dataset
            elif "librispeech" in self.data_paths:
                name = "librispeech"
            else:
                raise UserError(f"dataset {cfg.data.dataset!r} has no pre-training corpus: pass "
                                "--data librispeech=PATH or --set data.pretrain_dataset=synth")
        return name, self.root(name, cfg.data.size).name

    def pretraining_dataset(self, cfg: Config) -> Dataset:
        """The corpus that pre-trains CTAL and trains the tokenizer."""
        return self.dataset(self.pretraining_source(cfg)[0], cfg.data.size)

    def features(self, examples: Sequence[Example], cfg: FeatureConfig) -> list[np.ndarray]:
        key = config_hash(cfg)
        missing = [e for e in examples if (key, e.uid) not in self._features]
        if missing:
            found = features.extract_features(missing, cfg, self.data_dir, self.workers, self.progress)
            self._features.update({(key, uid): f for uid, f in found.items()})
        return [self._features[(key, e.uid)] for e in examples]

    def tokenizer(self, cfg: Config):
        """Byte-level BPE trained on the pre-training transcripts (cached on disk and here), or
        the released tokenizer of ``pretrain.init``."""
        if cfg.pretrain.init:
            key = (cfg.pretrain.init, 0)
            if key not in self._tokenizers:
                from ctal_bench.data.converted import converted_tokenizer

                self._tokenizers[key] = converted_tokenizer(cfg.pretrain.init)
            return self._tokenizers[key]
        corpus = self.pretraining_dataset(cfg)
        key = (str(corpus.root), cfg.data.vocab_size)
        if key not in self._tokenizers:
            self._tokenizers[key] = text.load_or_train_tokenizer(
                [e.text for e in corpus.pretraining()], cfg.data.vocab_size, self.data_dir)
        return self._tokenizers[key]

    def items(self, examples: Sequence[Example], cfg: Config, targets: Sequence | None = None
              ) -> tuple[list[batching.Item], int]:
        token_ids = text.encode(self.tokenizer(cfg), [e.text for e in examples], cfg.model.max_text_len)
        feats = self.features(examples, cfg.data.features)
        return batching.make_items(examples, feats, token_ids, targets, cfg.data.max_audio_frames,
                                   cfg.data.frame_stack)

    def pretraining_items(self, cfg: Config) -> list[batching.Item]:
        items, _ = self.items(self.pretraining_dataset(cfg).pretraining(), cfg)
        return items

    def task_data(self, cfg: Config, task_name: str, fold: str, with_test: bool = True) -> TaskData:
        """Items of a task and fold; ``with_test=False`` leaves test empty, unread (tuning)."""
        task = TASKS.get(task_name)
        dataset = self.dataset(cfg.data.dataset, cfg.data.size)
        dataset.check_task(task_name)
        split = dataset.split(task_name, fold, cfg.run.seed)
        names = ("train", "dev", "test") if with_test else ("train", "dev")
        parts, truncated = {"test": []}, 0
        for name in names:
            examples = getattr(split, name)
            parts[name], cut = self.items(examples, cfg, task.targets(examples, split))
            truncated += cut
        return TaskData(split, parts["train"], parts["dev"], parts["test"], task.n_outputs(split),
                        self.tokenizer(cfg).get_vocab_size(), truncated)
