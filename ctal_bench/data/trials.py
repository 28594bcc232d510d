"""Speaker-verification trial lists: built deterministically from examples, or read from a file.

The file format is VoxCeleb's: one trial per line, ``label enroll test`` separated by
whitespace, label 1 = same speaker, 0 = different speakers.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ctal_bench.data.base import Example, Trial
from ctal_bench.errors import DataError, UserError


def _partner_ranges(speakers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For examples sorted by speaker: each one's same-speaker run ``[start, end)`` in that order."""
    n = len(speakers)
    starts = np.empty(n, dtype=np.int64)
    ends = np.empty(n, dtype=np.int64)
    run_start = 0
    for i in range(1, n + 1):
        if i == n or speakers[i] != speakers[run_start]:
            starts[run_start:i] = run_start
            ends[run_start:i] = i
            run_start = i
    return starts, ends


def _sample_pairs(first: np.ndarray, count: np.ndarray, k: int, rng: np.random.Generator):
    """Draw ``k`` distinct pairs (i, j); example i has ``count[i]`` partners ``first[i] + 0..``.

    Every pair is ranked by one integer (cumulative partner counts), so drawing k distinct
    ranks without replacement gives k distinct pairs without enumerating them all.
    """
    cumulative = np.cumsum(count)
    ranks = np.sort(rng.choice(int(cumulative[-1]), size=k, replace=False))
    i = np.searchsorted(cumulative, ranks, side="right")
    offset = ranks - (cumulative[i] - count[i])
    return i, first[i] + offset


def count_pairs(examples: Sequence[Example]) -> tuple[int, int]:
    """(target, non-target): how many distinct unordered pairs of each kind ``examples`` hold."""
    per_speaker = Counter(e.speaker for e in examples)
    target = sum(n * (n - 1) // 2 for n in per_speaker.values())
    n = sum(per_speaker.values())
    return target, n * (n - 1) // 2 - target


def max_balanced_trials(examples: Sequence[Example]) -> int:
    """The largest even ``n_trials`` that ``build_trials`` can serve from ``examples``."""
    return 2 * min(count_pairs(examples))


def build_trials(examples: Sequence[Example], n_trials: int, seed: int) -> tuple[Trial, ...]:
    """``n_trials`` distinct trials, half target (same speaker) and half non-target.

    Deterministic for a seed and independent of the order of ``examples`` (they are sorted
    by speaker and uid first). A pair appears at most once in either orientation and never
    pairs an utterance with itself. With an odd ``n_trials`` the extra trial is non-target.
    Raises UserError when the examples cannot supply that many distinct pairs.
    """
    if n_trials < 2:
        raise UserError(f"a trial list needs at least 2 trials (one of each kind), got {n_trials}")
    ordered = sorted(examples, key=lambda e: (e.speaker, e.uid))
    uids = [e.uid for e in ordered]
    if len(set(uids)) != len(uids):
        raise ValueError("build_trials: example uids must be unique")
    n = len(ordered)
    if n < 2:
        raise UserError(f"cannot build trials from {n} utterance(s)")
    starts, ends = _partner_ranges([e.speaker for e in ordered])
    position = np.arange(n)
    # Same-speaker partners of i come after it within its run; other-speaker partners
    # come after its run ends. Counting only later partners makes every pair unordered.
    target_count = ends - position - 1
    nontarget_count = n - ends
    n_target = n_trials // 2
    n_nontarget = n_trials - n_target
    available_target, available_nontarget = int(target_count.sum()), int(nontarget_count.sum())
    if available_target < n_target or available_nontarget < n_nontarget:
        raise UserError(
            f"cannot build {n_trials} balanced trials from {n} utterances of "
            f"{len(set(e.speaker for e in ordered))} speakers: at most {available_target} target "
            f"and {available_nontarget} non-target pairs exist")
    rng = np.random.default_rng(seed)
    ti, tj = _sample_pairs(position + 1, target_count, n_target, rng)
    ni, nj = _sample_pairs(ends, nontarget_count, n_nontarget, rng)
    trials = [Trial(1, uids[a], uids[b]) for a, b in zip(ti.tolist(), tj.tolist())]
    trials += [Trial(0, uids[a], uids[b]) for a, b in zip(ni.tolist(), nj.tolist())]
    # Interleave kinds in a seeded order: a file read top to bottom is not sorted by label.
    order = rng.permutation(len(trials))
    return tuple(trials[k] for k in order)


def read_trials(path: Path, uid_of: Callable[[str], str | None] | Mapping[str, str]) -> tuple[Trial, ...]:
    """Parse a VoxCeleb-format trial file; ``uid_of`` maps each enroll/test entry to a uid.

    ``uid_of`` is a mapping or a callable returning None (or raising KeyError) for an
    entry it does not know. A malformed line, an unknown utterance, an empty file or a
    list without both kinds of trial is a DataError naming the file (and line).
    """
    path = Path(path)
    lookup = uid_of.get if isinstance(uid_of, Mapping) else uid_of
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: trial file not found") from None
    except UnicodeDecodeError:
        raise DataError(path, "expected a UTF-8 text file of 'label enroll test' lines") from None
    trials = []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise DataError(path, f"expected 'label enroll test' with label 0 or 1, got {line.strip()!r}", line_no)
        resolved = []
        for entry in fields[1:]:
            try:
                uid = lookup(entry)
            except KeyError:
                uid = None
            if uid is None:
                raise DataError(path, f"unknown utterance {entry!r} (not in the dataset)", line_no)
            resolved.append(uid)
        trials.append(Trial(int(fields[0]), resolved[0], resolved[1]))
    labels = {t.target for t in trials}
    if labels != {0, 1}:
        raise DataError(path, "expected both target (1) and non-target (0) trials")
    return tuple(trials)


def write_trials(path: Path, trials: Sequence[Trial]) -> None:
    """Write trials in VoxCeleb format (uids as the enroll/test entries)."""
    text = "".join(f"{t.target} {t.enroll} {t.test}\n" for t in trials)
    Path(path).write_text(text, encoding="utf-8")
