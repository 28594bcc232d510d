"""Task definitions on a small hand-built split: targets, output sizes, losses, evaluation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctal_bench.data.base import EMOTIONS, Example, Split, Trial
from ctal_bench.errors import UserError
from ctal_bench.registry import TASKS
from ctal_bench.train.metrics import HIGHER_IS_BETTER
from ctal_bench.train.tasks import UNSEEN_SPEAKER, EvalOutputs, Task

torch.set_num_threads(1)


def example(uid: str, speaker: str, emotion: str | None = None, sentiment: float | None = None) -> Example:
    return Example(uid=uid, audio=Path(f"{uid}.wav"), text="a b", speaker=speaker,
                   emotion=emotion, sentiment=sentiment)


TRAIN = (example("t1", "zoe", "sad", -2.0), example("t2", "amy", "happy", 1.5),
         example("t3", "max", "angry", -0.5), example("t4", "amy", "neutral", 0.0))
DEV = (example("d1", "bob", "angry", 2.0), example("d2", "bob", "sad", -1.0),
       example("d3", "cat", "happy", 0.5), example("d4", "cat", "neutral", 0.0))
DEV_TRIALS = (Trial(1, "d1", "d2"), Trial(0, "d1", "d3"), Trial(1, "d3", "d4"), Trial(0, "d2", "d4"))
TEST_TRIALS = (Trial(0, "d2", "d3"), Trial(1, "d4", "d3"))
SPLIT = Split(train=TRAIN, dev=DEV, test=(), dev_trials=DEV_TRIALS, test_trials=TEST_TRIALS)


def outputs(logits, targets, embeddings=None, trials=()) -> EvalOutputs:
    logits = np.asarray(logits, dtype=np.float32)
    if embeddings is None:
        embeddings = np.zeros((len(DEV), 3), dtype=np.float32)
    return EvalOutputs(uids=tuple(e.uid for e in DEV), speakers=tuple(e.speaker for e in DEV),
                       targets=np.asarray(targets), logits=logits, embeddings=embeddings, trials=trials)


def test_registry_holds_the_three_tasks():
    assert {"emotion", "sentiment", "verification"} <= set(TASKS.names())
    for name in ("emotion", "sentiment", "verification"):
        task = TASKS.get(name)
        assert isinstance(task, Task) and task.name == name
        assert task.selection_metric in task.metric_names
        assert set(task.metric_names) <= set(HIGHER_IS_BETTER)
    assert TASKS.get("emotion").higher_is_better
    assert not TASKS.get("sentiment").higher_is_better
    assert not TASKS.get("verification").higher_is_better
    assert (TASKS.get("emotion").selection_metric, TASKS.get("sentiment").selection_metric,
            TASKS.get("verification").selection_metric) == ("ua", "mae", "eer")


# ---------------------------------------------------------------------------------------
# Targets and sizes
# ---------------------------------------------------------------------------------------

def test_emotion_targets():
    task = TASKS.get("emotion")
    assert task.n_outputs(SPLIT) == 4
    assert task.targets(TRAIN, SPLIT) == [EMOTIONS.index(e) for e in ("sad", "happy", "angry", "neutral")]
    assert task.targets(TRAIN, SPLIT) == [2, 1, 3, 0]
    with pytest.raises(UserError, match="'x1'.*neutral, happy, sad, angry"):
        task.targets([example("x1", "amy", "bored")], SPLIT)
    with pytest.raises(UserError, match="'x2'"):
        task.targets([example("x2", "amy")], SPLIT)


def test_sentiment_targets():
    task = TASKS.get("sentiment")
    assert task.n_outputs(SPLIT) == 1
    targets = task.targets(DEV, SPLIT)
    assert targets == [2.0, -1.0, 0.5, 0.0] and all(isinstance(t, float) for t in targets)
    with pytest.raises(UserError, match="'x1'.*no sentiment"):
        task.targets([example("x1", "amy", "sad")], SPLIT)


def test_verification_targets_index_sorted_train_speakers():
    task = TASKS.get("verification")
    assert task.n_outputs(SPLIT) == 3  # amy, max, zoe
    assert task.targets(TRAIN, SPLIT) == [2, 0, 1, 0]
    # Held-out speakers have no class.
    assert task.targets(DEV, SPLIT) == [UNSEEN_SPEAKER] * 4
    # The index depends on the set of training speakers, not their order in the split.
    reordered = Split(train=TRAIN[::-1], dev=DEV, test=())
    assert task.targets(TRAIN, reordered) == task.targets(TRAIN, SPLIT)
    with pytest.raises(UserError, match="at least 2 training speakers"):
        task.n_outputs(Split(train=TRAIN[:1], dev=(), test=()))


def test_eval_trials():
    verification = TASKS.get("verification")
    assert verification.eval_trials(SPLIT, "dev") == DEV_TRIALS
    assert verification.eval_trials(SPLIT, "test") == TEST_TRIALS
    with pytest.raises(UserError, match="no test trials"):
        verification.eval_trials(Split(train=TRAIN, dev=DEV, test=(), dev_trials=DEV_TRIALS), "test")
    assert TASKS.get("emotion").eval_trials(SPLIT, "dev") == ()


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------

def target_tensor(task: Task, examples) -> torch.Tensor:
    return torch.tensor(task.targets(examples, SPLIT), dtype=task.target_dtype)


@pytest.mark.parametrize("name", ["emotion", "verification"])
def test_classification_loss_falls_as_logits_move_to_targets(name):
    task = TASKS.get(name)
    targets = target_tensor(task, TRAIN)
    one_hot = torch.nn.functional.one_hot(targets, task.n_outputs(SPLIT)).float()
    losses = [task.loss(scale * one_hot, targets).item() for scale in (-1.0, 0.0, 1.0, 3.0)]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    assert losses[1] == pytest.approx(math.log(task.n_outputs(SPLIT)))  # uniform logits


def test_sentiment_loss_is_l1_on_first_output():
    task = TASKS.get("sentiment")
    targets = target_tensor(task, TRAIN)
    assert targets.dtype == torch.float32
    losses = [task.loss((targets + offset).unsqueeze(1), targets).item() for offset in (2.0, 1.0, 0.5, 0.0)]
    assert losses == pytest.approx([2.0, 1.0, 0.5, 0.0])
    # Only column 0 is the prediction.
    two_columns = torch.stack([targets, targets + 5.0], dim=1)
    assert task.loss(two_columns, targets).item() == 0.0


def test_verification_loss_skips_unseen_speakers():
    task = TASKS.get("verification")
    logits = torch.randn(4, 3, requires_grad=True)
    mixed = torch.tensor([0, UNSEEN_SPEAKER, 2, UNSEEN_SPEAKER])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], mixed[[0, 2]])
    assert task.loss(logits, mixed).item() == pytest.approx(expected.item())
    unseen_only = task.loss(logits, torch.full((4,), UNSEEN_SPEAKER))
    assert unseen_only.item() == 0.0
    unseen_only.backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------
# Evaluation and predictions
# ---------------------------------------------------------------------------------------

def test_emotion_evaluate_and_predictions():
    task = TASKS.get("emotion")
    targets = np.array(task.targets(DEV, SPLIT))  # angry sad happy neutral = 3 2 1 0
    logits = np.full((4, 4), -1.0)
    logits[[0, 1, 2, 3], [3, 2, 1, 1]] = 2.0  # the neutral utterance is called happy
    out = outputs(logits, targets)
    got = task.evaluate(out)
    assert tuple(got) == task.metric_names
    # WA 3/4; recalls 0 (neutral) 1 1 1 -> UA 3/4; F1: neutral 0, happy 2/3, sad 1, angry 1
    assert got == pytest.approx({"wa": 0.75, "ua": 0.75, "macro_f1": (0 + 2 / 3 + 1 + 1) / 4})
    assert task.confusion_matrix(out) == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    table = task.predictions(out)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["uid", "speaker", "target", "prediction"]
    assert table["prediction"].tolist() == [3, 2, 1, 1]
    assert table["uid"].tolist() == ["d1", "d2", "d3", "d4"] and table["speaker"].tolist()[0] == "bob"


def test_sentiment_evaluate_and_predictions():
    task = TASKS.get("sentiment")
    targets = np.array(task.targets(DEV, SPLIT), dtype=np.float32)  # 2 -1 0.5 0
    out = outputs((targets + 0.25)[:, None], targets)
    got = task.evaluate(out)
    assert tuple(got) == task.metric_names
    assert got["mae"] == pytest.approx(0.25)
    assert got["corr"] == pytest.approx(1.0)
    assert got["acc2_has0"] == 1.0
    table = task.predictions(out)
    assert list(table.columns) == ["uid", "speaker", "target", "prediction"]
    np.testing.assert_allclose(table["prediction"], targets + 0.25)


def test_verification_evaluate_and_predictions():
    task = TASKS.get("verification")
    # Embeddings that separate the two dev speakers (bob: d1 d2, cat: d3 d4).
    embeddings = np.array([[1.0, 0.1, 0], [0.9, -0.1, 0], [0, 1.0, 0.2], [0.1, 1.0, 0]], dtype=np.float32)
    out = outputs(np.zeros((4, 3)), task.targets(DEV, SPLIT), embeddings, DEV_TRIALS)
    got = task.evaluate(out)
    assert tuple(got) == task.metric_names
    assert got == {"eer": 0.0, "min_dcf": 0.0}
    # Embeddings that pair each utterance with the other speaker: every trial is scored wrong.
    crossed = outputs(np.zeros((4, 3)), task.targets(DEV, SPLIT), embeddings[[0, 2, 1, 3]], DEV_TRIALS)
    assert task.evaluate(crossed) == {"eer": 1.0, "min_dcf": 1.0}
    table = task.predictions(out)
    assert list(table.columns) == ["enroll", "test", "enroll_speaker", "test_speaker", "target", "score"]
    assert table["target"].tolist() == [t.target for t in DEV_TRIALS]
    assert table["enroll_speaker"].tolist() == ["bob", "bob", "cat", "bob"]
    assert table["score"].iloc[0] == pytest.approx(
        float(embeddings[0] @ embeddings[1] / np.linalg.norm(embeddings[0]) / np.linalg.norm(embeddings[1])))


def test_eval_outputs_checks_lengths():
    with pytest.raises(AssertionError, match="4 uids"):
        outputs(np.zeros((3, 4)), np.zeros(4, dtype=int))


def test_subset_metrics_score_only_the_subsets_examples():
    tagged = tuple(Example(e.uid, e.audio, e.text, e.speaker, e.emotion, e.sentiment,
                           ("transfer",) if e.uid in ("d1", "d3") else ()) for e in DEV)
    task = TASKS.get("sentiment")
    out = outputs([[1.0], [-1.0], [0.0], [0.5]], [e.sentiment for e in DEV])
    by_subset = task.evaluate_subsets(out, tagged)
    assert set(by_subset) == {"transfer"}
    assert by_subset["transfer"]["mae"] == pytest.approx((abs(1.0 - 2.0) + abs(0.0 - 0.5)) / 2)
    assert task.evaluate_subsets(out, DEV) == {}  # no example in any subset
    trials = outputs(np.eye(4)[:, :3], [0, 1, 2, 0], np.eye(4)[:, :3], DEV_TRIALS)
    assert TASKS.get("verification").evaluate_subsets(trials, tagged) == {}  # scored on trials
