"""Builders of small dataset trees in the real on-disk layouts, for loader and pipeline tests.

Each ``make_*`` writes into ``root`` (created if needed) and returns the dataset root. The
trees are tiny but complete: every file a loader reads, in the corpus's own format.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ctal_bench.data.synth import SAMPLE_RATE, synthesize

IEMOCAP_RATE = 16000  # the corpus's own rate
LIBRISPEECH_RATE = 16000

SENTENCES = (
    "the coffee was wonderful today",
    "i never liked that old hotel",
    "the train left at nine",
    "this phone is really not good",
    "what a lovely little garden",
    "the meeting was terrible",
)


def _speech(text: str, speaker: int, sample_rate: int, female: bool = False) -> np.ndarray:
    """eSpeak NG speech (int16) in a voice and pitch that depend on the speaker."""
    variant = f"f{1 + speaker % 5}" if female else f"m{1 + speaker % 8}"
    samples = synthesize(text, f"en-us+{variant}", pitch=30 + 7 * (speaker % 6), pitch_range=50,
                         rate=160 + 6 * (speaker % 5), volume=80)
    if sample_rate == SAMPLE_RATE:
        return samples
    resampled = torchaudio.functional.resample(torch.from_numpy(samples).float(), SAMPLE_RATE, sample_rate)
    return resampled.round().clamp(-32768, 32767).to(torch.int16).numpy()


def _write_audio(path: Path, text: str, speaker: int, sample_rate: int, female: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _speech(text, speaker, sample_rate, female), sample_rate)


# --- IEMOCAP --------------------------------------------------------------------------

# One dialog per session; codes cycle so that every session holds all four classes
# (exc mapped to happy) plus two codes that are dropped (fru, xxx).
IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "neu", "xxx")
IEMOCAP_KEPT_PER_SESSION = 6
IEMOCAP_DIALOGS = {1: "Ses01F_script01_1", 2: "Ses02M_impro03", 3: "Ses03F_impro01",
                   4: "Ses04M_impro02", 5: "Ses05F_impro07"}
_ANNOTATOR_DETAIL = ("C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nC-F1:\tNeutral;\t(curious)\n"
                     "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 2; dom  1;\t()\n")


def iemocap_utterance(session: int, index: int) -> str:
    """Utterances alternate female and male speakers: Ses01F_script01_1_F000, ..._M001, ..."""
    gender = "FM"[index % 2]
    return f"{IEMOCAP_DIALOGS[session]}_{gender}{index:03d}"


def make_iemocap(root: Path) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for session, dialog in IEMOCAP_DIALOGS.items():
        session_dir = root / f"Session{session}"
        labels = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"]
        transcripts = []
        for index, code in enumerate(IEMOCAP_CODES):
            utterance = iemocap_utterance(session, index)
            start, end = 2.5 * index + 1.0, 2.5 * index + 3.1234
            text = SENTENCES[(session + index) % len(SENTENCES)]
            labels.append(f"[{start:.4f} - {end:.4f}]\t{utterance}\t{code}\t[2.5000, 3.0000, 2.5000]\n"
                          f"{_ANNOTATOR_DETAIL}\n")
            transcripts.append(f"{utterance} [{start:07.4f}-{end:07.4f}]: {text.capitalize()}.\n")
            speaker = 2 * session + index % 2
            _write_audio(session_dir / "sentences" / "wav" / dialog / f"{utterance}.wav",
                         text, speaker, IEMOCAP_RATE, female=index % 2 == 0)
        label_dir = session_dir / "dialog" / "EmoEvaluation"
        for sub in ("Categorical", "Attribute"):  # per-annotator folders the loader must not read
            (label_dir / sub).mkdir(parents=True, exist_ok=True)
        (label_dir / "Categorical" / f"{dialog}_e2_cat.txt").write_text(
            f"{iemocap_utterance(session, 0)} :Neutral state; ()\n")
        (label_dir / f"{dialog}.txt").write_text("".join(labels))
        transcript_dir = session_dir / "dialog" / "transcriptions"
        transcript_dir.mkdir(parents=True, exist_ok=True)
        (transcript_dir / f"{dialog}.txt").write_text("".join(transcripts))
    return root


# --- MMSA (CMU-MOSI / CMU-MOSEI raw layout) -------------------------------------------

MMSA_VIDEOS = {"03bSnISJMiM": "train", "0h-zjBukYpk": "train", "1DmNV9C1hbY": "train",
               "2iD-tVS8NPw": "valid", "5W7Z1C_fDaE": "test"}
MMSA_CLIPS_PER_VIDEO = 3
MMSA_LABELS = (-2.4, 0.0, 1.8, -0.6, 3.0, -3.0, 0.4, 2.2, -1.2, 1.0, -0.2, 2.6, -1.8, 0.8, -2.8)


def mmsa_rows() -> list[dict[str, str]]:
    rows = []
    for v, (video_id, mode) in enumerate(MMSA_VIDEOS.items()):
        for clip in range(1, MMSA_CLIPS_PER_VIDEO + 1):
            k = v * MMSA_CLIPS_PER_VIDEO + clip - 1
            label = MMSA_LABELS[k]
            text = SENTENCES[k % len(SENTENCES)] + (", honestly" if clip == 1 else "")
            rows.append({"video_id": video_id, "clip_id": str(clip), "text": text, "label": f"{label}",
                         "label_T": f"{label}", "label_A": "0.0", "label_V": "0.0",
                         "annotation": "Positive" if label > 0 else "Negative" if label < 0 else "Neutral",
                         "mode": mode})
    return rows


def write_mmsa_labels(root: Path, rows: list[dict[str, str]]) -> None:
    with open(Path(root) / "label.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_mmsa(root: Path) -> Path:
    """Audio at the synthesiser's 22,050 Hz, alternating WAV and FLAC clips."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = mmsa_rows()
    for k, row in enumerate(rows):
        suffix = ".wav" if k % 2 == 0 else ".flac"
        _write_audio(root / "Raw" / row["video_id"] / f"{row['clip_id']}{suffix}",
                     row["text"], k // MMSA_CLIPS_PER_VIDEO, SAMPLE_RATE)
    write_mmsa_labels(root, rows)
    return root


# --- LibriSpeech ----------------------------------------------------------------------

# split -> speaker -> chapters; one train speaker reads two chapters.
LIBRISPEECH_TREE = {
    "train-clean-100": {"19": ("198",), "26": ("495",), "27": ("123349",), "32": ("21625",),
                        "39": ("121914", "121915"), "40": ("222",)},
    "dev-clean": {"84": ("121123",), "174": ("50561",)},
    "test-clean": {"1089": ("134686",), "121": ("127105",), "237": ("126133",)},
}
LIBRISPEECH_UTTERANCES_PER_CHAPTER = 3


def make_librispeech(root: Path) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "SPEAKERS.TXT").write_text("; ID |SEX| SUBSET | MINUTES | NAME\n")  # ignored by the loader
    for s, (split, speakers) in enumerate(LIBRISPEECH_TREE.items()):
        for p, (speaker, chapters) in enumerate(speakers.items()):
            for chapter in chapters:
                chapter_dir = root / split / speaker / chapter
                lines = []
                for u in range(LIBRISPEECH_UTTERANCES_PER_CHAPTER):
                    uid = f"{speaker}-{chapter}-{u:04d}"
                    text = SENTENCES[(p + u) % len(SENTENCES)].upper()
                    lines.append(f"{uid} {text}\n")
                    _write_audio(chapter_dir / f"{uid}.flac", text, 10 * s + p, LIBRISPEECH_RATE)
                (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return root


def librispeech_count(prefix: str) -> int:
    """Utterances in the fixture's splits whose name starts with ``prefix``."""
    return sum(len(chapters) * LIBRISPEECH_UTTERANCES_PER_CHAPTER
               for split, speakers in LIBRISPEECH_TREE.items() if split.startswith(prefix)
               for chapters in speakers.values())
