"""IEMOCAP in the IEMOCAP_full_release layout: four-class emotion, leave-one-session-out.

Layout (under the root):
    Session{1..5}/sentences/wav/<dialog>/<utterance>.wav
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
    Session{1..5}/dialog/transcriptions/<dialog>.txt

An EmoEvaluation file holds one summary line per utterance,
``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``
(time span, utterance, consensus code, mean valence/activation/dominance), followed by
per-annotator lines (``C-E2:<TAB>Neutral;<TAB>()``, ``A-E3:<TAB>val 3; act 2; dom  2;<TAB>()``)
and blank lines; the file starts with a ``%`` header. Only the summary lines are read; the
subfolders of EmoEvaluation (Attribute, Categorical, Self-evaluation) are not.

Label policy: neu -> neutral, hap and exc -> happy, sad -> sad, ang -> angry (the common
four-class IEMOCAP setup); the other IEMOCAP codes (fru, sur, fea, dis, oth, and xxx for
"no majority") are dropped and counted in ``dropped``. Any other code is a DataError.

Speaker = session + the gender letter of the utterance's last part
(Ses01F_impro01_M003 -> Ses01_M): each session has one female and one male actor.

Folds: "Session1".."Session5"; the named session is the test set. Dev is both speakers of
one training session drawn with the seed (a different draw per fold), so dev is
speaker-disjoint from train and never the test session. A whole session rather than a
single speaker, because the two actors of a session perform the same dialogs: a single
dev speaker would share every dialog's transcript with its partner in train.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from ctal_bench.data.base import Dataset, Example, Split
from ctal_bench.errors import DataError, UserError
from ctal_bench.registry import DATASETS

SESSIONS = tuple(f"Session{i}" for i in range(1, 6))

# IEMOCAP consensus codes -> our four classes; None = a valid code outside the label set.
CODE_TO_EMOTION: dict[str, str | None] = {
    "neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry",
    "fru": None, "sur": None, "fea": None, "dis": None, "oth": None, "xxx": None,
}

_UTTERANCE = r"Ses(?P<session>\d\d)[FM]_\w+?_(?P<gender>[FM])\d+"
_LABEL_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]\s+"
    rf"(?P<utt>{_UTTERANCE})\s+(?P<code>\S+)\s+"
    r"\[\s*-?\d+(?:\.\d*)?\s*,\s*-?\d+(?:\.\d*)?\s*,\s*-?\d+(?:\.\d*)?\s*\]\s*$")
_ANNOTATOR_LINE = re.compile(r"^[A-Z]-[A-Za-z0-9]+:")  # C-E2:, A-F1:, ... per-annotator detail
_TRANSCRIPT_LINE = re.compile(r"^(?P<utt>\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)$")


def read_lines(path: Path) -> list[str]:
    """Lines of a text file; the corpus predates UTF-8 everywhere, so fall back to Latin-1."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.splitlines()


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: missing directory ({what}); expected the IEMOCAP_full_release layout")
    return path


def _visible_txt(folder: Path) -> list[Path]:
    """``*.txt`` directly in ``folder``, skipping hidden files (macOS ``._`` copies)."""
    return sorted(p for p in folder.glob("*.txt") if p.is_file() and not p.name.startswith("."))


def speaker_of(utterance: str) -> str:
    """Ses01F_impro01_M003 -> Ses01_M."""
    return f"{utterance[:5]}_{utterance.rsplit('_', 1)[1][0]}"


@DATASETS.register("iemocap")
class IEMOCAP(Dataset):
    name = "iemocap"
    tasks = ("emotion",)

    def __init__(self, root: Path):
        super().__init__(root)
        self.dropped: Counter[str] = Counter()  # IEMOCAP code -> utterances dropped
        examples: list[Example] = []
        self.session_of: dict[str, str] = {}  # uid -> "SessionN"
        for session in SESSIONS:
            for example in self._read_session(session):
                examples.append(example)
                self.session_of[example.uid] = session
        if not examples:
            raise DataError(self.root, "no utterance with a four-class emotion label (neu, hap, exc, sad, ang)")
        self.examples = tuple(examples)

    def _read_session(self, session: str) -> list[Example]:
        session_dir = _require_dir(self.root / session, f"session {session}")
        wav_dir = _require_dir(session_dir / "sentences" / "wav", "utterance audio")
        label_dir = _require_dir(session_dir / "dialog" / "EmoEvaluation", "emotion labels")
        transcript_dir = _require_dir(session_dir / "dialog" / "transcriptions", "transcripts")
        label_files = _visible_txt(label_dir)
        if not label_files:
            raise DataError(label_dir, "expected one <dialog>.txt label file per dialog; found none")
        examples = []
        for label_file in label_files:
            dialog = label_file.stem
            transcripts = self._read_transcripts(transcript_dir / f"{dialog}.txt", label_file)
            for line_no, utterance, code in self._read_labels(label_file, session):
                emotion = CODE_TO_EMOTION[code]
                if emotion is None:
                    self.dropped[code] += 1
                    continue
                if utterance.rsplit("_", 1)[0] != dialog:
                    raise DataError(label_file, f"utterance {utterance} does not belong to dialog {dialog}", line_no)
                if utterance not in transcripts:
                    raise DataError(label_file, f"utterance {utterance} has no line in "
                                                f"{transcript_dir / (dialog + '.txt')}", line_no)
                audio = wav_dir / dialog / f"{utterance}.wav"
                if not audio.is_file():
                    raise DataError(label_file, f"utterance {utterance}: audio clip {audio} is missing", line_no)
                examples.append(Example(uid=utterance, audio=audio, text=transcripts[utterance],
                                        speaker=speaker_of(utterance), emotion=emotion))
        return examples

    @staticmethod
    def _read_labels(path: Path, session: str):
        """Yield (line number, utterance, code) for each summary line of an EmoEvaluation file."""
        for line_no, line in enumerate(read_lines(path), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("%") or _ANNOTATOR_LINE.match(stripped):
                continue
            match = _LABEL_LINE.match(stripped)
            if match is None:
                raise DataError(path, "expected a label line '[start - end]<TAB>utterance<TAB>code<TAB>"
                                      f"[val, act, dom]' or an annotator line, got {stripped[:80]!r}", line_no)
            code = match["code"]
            if code not in CODE_TO_EMOTION:
                raise DataError(path, f"unknown emotion code {code!r}; expected one of "
                                      f"{', '.join(CODE_TO_EMOTION)}", line_no)
            if int(match["session"]) != SESSIONS.index(session) + 1:
                raise DataError(path, f"utterance {match['utt']} is filed under {session}", line_no)
            yield line_no, match["utt"], code

    @staticmethod
    def _read_transcripts(path: Path, label_file: Path) -> dict[str, str]:
        """Utterance -> transcript. Lines not in ``utt [start-end]: text`` form (none in a
        clean copy) carry no labelled utterance and are ignored; a labelled utterance
        without a transcript is caught by the caller."""
        if not path.is_file():
            raise DataError(label_file, f"expected the transcript file {path} beside it")
        transcripts = {}
        for line in read_lines(path):
            match = _TRANSCRIPT_LINE.match(line.strip())
            if match:
                transcripts[match["utt"]] = match["text"].strip()
        return transcripts

    @classmethod
    def folds(cls, task: str) -> tuple[str, ...]:
        cls.check_task(task)
        return SESSIONS

    def split(self, task: str, fold: str, seed: int) -> Split:
        self.check_fold(task, fold)
        training_sessions = [s for s in SESSIONS if s != fold]
        # Seeded per (seed, fold) so the dev session varies across folds for one seed.
        rng = np.random.default_rng([seed, SESSIONS.index(fold)])
        dev_session = training_sessions[int(rng.integers(len(training_sessions)))]
        parts: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
        for example in self.examples:
            session = self.session_of[example.uid]
            part = "test" if session == fold else "dev" if session == dev_session else "train"
            parts[part].append(example)
        return Split(train=tuple(parts["train"]), dev=tuple(parts["dev"]), test=tuple(parts["test"]))
