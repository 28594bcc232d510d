import shutil

import pytest
import soundfile as sf
import torch
from fixtures import (
    IEMOCAP_DIALOGS,
    IEMOCAP_KEPT_PER_SESSION,
    LIBRISPEECH_TREE,
    MMSA_CLIPS_PER_VIDEO,
    MMSA_VIDEOS,
    SENTENCES,
    iemocap_utterance,
    librispeech_count,
    make_iemocap,
    make_librispeech,
    make_mmsa,
    mmsa_rows,
    write_mmsa_labels,
)
from rich.console import Console

from ctal_bench.data.base import EMOTIONS
from ctal_bench.data.check import check_dataset, render
from ctal_bench.data.iemocap import IEMOCAP, SESSIONS
from ctal_bench.data.librispeech import LibriSpeech
from ctal_bench.data.mmsa import MOSEI, MOSI
from ctal_bench.errors import DataError, UserError
from ctal_bench.registry import DATASETS

torch.set_num_threads(1)  # the fixtures resample with torch; the machine's cores are shared


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory):
    return make_iemocap(tmp_path_factory.mktemp("iemocap"))


@pytest.fixture(scope="module")
def mmsa_root(tmp_path_factory):
    return make_mmsa(tmp_path_factory.mktemp("mmsa"))


@pytest.fixture(scope="module")
def librispeech_root(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("librispeech"))


def copy_of(root, tmp_path):
    return shutil.copytree(root, tmp_path / "copy")


def test_all_formats_registered():
    assert {"iemocap", "mosei", "mosi", "librispeech"} <= set(DATASETS.names())


# --- IEMOCAP --------------------------------------------------------------------------

def test_iemocap_loads_with_label_policy(iemocap_root):
    ds = IEMOCAP(iemocap_root)
    assert len(ds.examples) == 5 * IEMOCAP_KEPT_PER_SESSION
    assert ds.dropped == {"fru": 5, "xxx": 5}
    by_uid = {e.uid: e for e in ds.examples}
    exc = by_uid[iemocap_utterance(1, 2)]  # code exc -> happy
    assert exc.emotion == "happy" and exc.speaker == "Ses01_F"
    male = by_uid[iemocap_utterance(1, 1)]  # Ses01F_script01_1_M001: male speaker of session 1
    assert male.speaker == "Ses01_M" and male.emotion == "happy"
    assert by_uid[iemocap_utterance(1, 0)].text == SENTENCES[1].capitalize() + "."
    assert {e.emotion for e in ds.examples} == set(EMOTIONS)
    info = sf.info(str(exc.audio))
    assert info.samplerate == 16000 and info.duration > 0.5 and exc.audio.name == f"{exc.uid}.wav"


def test_iemocap_transcript_is_read(iemocap_root):
    ds = IEMOCAP(iemocap_root)
    uid = iemocap_utterance(2, 0)
    transcript = (iemocap_root / "Session2/dialog/transcriptions" / f"{IEMOCAP_DIALOGS[2]}.txt").read_text()
    line = next(line for line in transcript.splitlines() if line.startswith(uid))
    assert next(e for e in ds.examples if e.uid == uid).text == line.split(": ", 1)[1]


def test_iemocap_leave_one_session_out(iemocap_root):
    ds = IEMOCAP(iemocap_root)
    assert ds.folds("emotion") == SESSIONS
    dev_sessions = set()
    for fold in SESSIONS:
        for seed in range(4):
            split = ds.split("emotion", fold, seed)
            assert {ds.session_of[e.uid] for e in split.test} == {fold}
            assert len(split.test) == IEMOCAP_KEPT_PER_SESSION
            dev = {ds.session_of[e.uid] for e in split.dev}
            assert len(dev) == 1 and fold not in dev
            dev_sessions |= dev
            train_speakers = {e.speaker for e in split.train}
            assert len(train_speakers) == 6
            assert not train_speakers & {e.speaker for e in split.dev}
            assert not {e.speaker for e in split.test} & ({e.speaker for e in split.dev} | train_speakers)
            assert len(split.train) + len(split.dev) + len(split.test) == len(ds.examples)
            assert split == ds.split("emotion", fold, seed)  # deterministic
    assert len(dev_sessions) >= 3  # the seed really chooses


def test_iemocap_bad_fold_and_task(iemocap_root):
    ds = IEMOCAP(iemocap_root)
    with pytest.raises(UserError, match="Session1"):
        ds.split("emotion", "6", 0)
    with pytest.raises(UserError, match="no task 'sentiment'"):
        ds.folds("sentiment")


def test_iemocap_missing_session_directory(iemocap_root, tmp_path):
    root = copy_of(iemocap_root, tmp_path)
    shutil.rmtree(root / "Session3")
    with pytest.raises(UserError, match="Session3: missing directory"):
        IEMOCAP(root)
    with pytest.raises(UserError, match="does not exist"):
        IEMOCAP(tmp_path / "nowhere")


def _edit_label_file(root, session, old, new):
    path = root / f"Session{session}/dialog/EmoEvaluation/{IEMOCAP_DIALOGS[session]}.txt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_iemocap_unparsable_label_line(iemocap_root, tmp_path):
    root = copy_of(iemocap_root, tmp_path)
    path = _edit_label_file(root, 4, "[2.5000, 3.0000, 2.5000]", "[2.5000, 3.0000]")
    with pytest.raises(DataError, match="expected a label line") as info:
        IEMOCAP(root)
    assert str(info.value).startswith(f"{path}:3: ")  # header, blank line, first label line


def test_iemocap_unknown_emotion_code(iemocap_root, tmp_path):
    root = copy_of(iemocap_root, tmp_path)
    utterance = iemocap_utterance(2, 3)
    path = _edit_label_file(root, 2, f"{utterance}\tsad", f"{utterance}\tjoy")
    with pytest.raises(DataError, match="unknown emotion code 'joy'") as info:
        IEMOCAP(root)
    lines = path.read_text().splitlines()
    line_no = next(n for n, line in enumerate(lines, start=1) if line.startswith("[") and utterance in line)
    assert str(info.value).startswith(f"{path}:{line_no}: ")


def test_iemocap_missing_clip(iemocap_root, tmp_path):
    root = copy_of(iemocap_root, tmp_path)
    utterance = iemocap_utterance(5, 4)
    wav = root / "Session5/sentences/wav" / IEMOCAP_DIALOGS[5] / f"{utterance}.wav"
    wav.unlink()
    with pytest.raises(DataError, match=f"{utterance}: audio clip .*{utterance}.wav is missing") as info:
        IEMOCAP(root)
    assert f"{IEMOCAP_DIALOGS[5]}.txt:" in str(info.value)


def test_iemocap_missing_clip_of_a_dropped_code_is_fine(iemocap_root, tmp_path):
    root = copy_of(iemocap_root, tmp_path)
    (root / "Session5/sentences/wav" / IEMOCAP_DIALOGS[5] / f"{iemocap_utterance(5, 7)}.wav").unlink()  # xxx
    assert len(IEMOCAP(root).examples) == 5 * IEMOCAP_KEPT_PER_SESSION


# --- MOSI / MOSEI ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", [MOSI, MOSEI])
def test_mmsa_splits_from_mode(mmsa_root, cls):
    ds = cls(mmsa_root)
    assert ds.folds("sentiment") == ("0",)
    split = ds.split("sentiment", "0", seed=0)
    n_videos = {m: sum(1 for v in MMSA_VIDEOS.values() if v == m) for m in ("train", "valid", "test")}
    assert len(split.train) == n_videos["train"] * MMSA_CLIPS_PER_VIDEO
    assert len(split.dev) == n_videos["valid"] * MMSA_CLIPS_PER_VIDEO
    assert len(split.test) == n_videos["test"] * MMSA_CLIPS_PER_VIDEO
    assert {e.speaker for e in split.dev} == {v for v, m in MMSA_VIDEOS.items() if m == "valid"}
    rows = {(r["video_id"], r["clip_id"]): r for r in mmsa_rows()}
    for e in split.train + split.dev + split.test:
        row = rows[(e.speaker, e.audio.stem)]
        assert e.sentiment == float(row["label"]) and e.text == row["text"]
        assert e.audio.suffix in (".wav", ".flac") and e.audio.is_file()
    assert any("," in e.text for e in split.train)  # quoted CSV field kept whole
    assert split == ds.split("sentiment", "0", seed=9)


def _mmsa_with(tmp_path, mmsa_root, index, **changes):
    root = copy_of(mmsa_root, tmp_path)
    rows = mmsa_rows()
    rows[index].update(changes)
    write_mmsa_labels(root, rows)
    return root


@pytest.mark.parametrize("label, expected", [("abc", "not a number"), ("3.5", "outside"),
                                             ("-7", "outside"), ("nan", "outside")])
def test_mmsa_bad_label_names_line(mmsa_root, tmp_path, label, expected):
    root = _mmsa_with(tmp_path, mmsa_root, 4, label=label)
    with pytest.raises(DataError, match=expected) as info:
        MOSI(root)
    assert str(info.value).startswith(f"{root / 'label.csv'}:6: ")  # header + 5th row


def test_mmsa_bad_mode(mmsa_root, tmp_path):
    root = _mmsa_with(tmp_path, mmsa_root, 0, mode="validation")
    with pytest.raises(DataError, match=r"label.csv:2: mode 'validation'"):
        MOSEI(root)


def test_mmsa_missing_clip(mmsa_root, tmp_path):
    root = copy_of(mmsa_root, tmp_path)
    video = next(iter(MMSA_VIDEOS))
    for clip in (root / "Raw" / video).glob("2.*"):
        clip.unlink()
    with pytest.raises(DataError, match=rf"label.csv:3: clip {video}/2: audio missing; expected .*2.wav"):
        MOSI(root)


def test_mmsa_missing_layout(mmsa_root, tmp_path):
    root = copy_of(mmsa_root, tmp_path)
    shutil.rmtree(root / "Raw")
    with pytest.raises(UserError, match="Raw: missing directory"):
        MOSI(root)
    (root / "label.csv").unlink()
    with pytest.raises(UserError, match="label.csv: missing label file"):
        MOSI(root)


def test_mmsa_missing_column_and_empty_split(mmsa_root, tmp_path):
    root = copy_of(mmsa_root, tmp_path)
    write_mmsa_labels(root, [{k: v for k, v in r.items() if k != "mode"} for r in mmsa_rows()])
    with pytest.raises(DataError, match=r"label.csv:1: missing column\(s\) mode"):
        MOSI(root)
    write_mmsa_labels(root, [r for r in mmsa_rows() if r["mode"] != "test"])
    with pytest.raises(DataError, match="no row with mode 'test'"):
        MOSI(root)


# --- LibriSpeech ----------------------------------------------------------------------

def test_librispeech_pretraining_corpus(librispeech_root):
    ds = LibriSpeech(librispeech_root)
    corpus = ds.pretraining()
    assert len(corpus) == librispeech_count("train")
    assert {e.speaker for e in corpus} == set(LIBRISPEECH_TREE["train-clean-100"])
    e = next(x for x in corpus if x.uid == "39-121915-0001")
    assert e.audio == librispeech_root / "train-clean-100/39/121915/39-121915-0001.flac"
    assert e.text.isupper() and e.speaker == "39"
    assert len(ds.examples) == librispeech_count("")
    assert ds.dropped["audio without transcript"] == 0


def test_librispeech_verification_split(librispeech_root):
    ds = LibriSpeech(librispeech_root)
    assert ds.folds("verification") == ("0",)
    split = ds.split("verification", "0", seed=0)
    train_speakers = {e.speaker for e in split.train}
    dev_speakers = {e.speaker for e in split.dev}
    assert len(dev_speakers) == 2 and not train_speakers & dev_speakers
    assert train_speakers | dev_speakers == set(LIBRISPEECH_TREE["train-clean-100"])
    assert {e.speaker for e in split.test} == set(LIBRISPEECH_TREE["test-clean"])
    dev_uids, test_uids = {e.uid for e in split.dev}, {e.uid for e in split.test}
    assert {u for t in split.dev_trials for u in (t.enroll, t.test)} <= dev_uids
    assert {u for t in split.test_trials for u in (t.enroll, t.test)} <= test_uids
    # 3 test speakers x 3 utterances: 9 target pairs, so 18 balanced trials at most.
    assert len(split.test_trials) == 18 and sum(t.target for t in split.test_trials) == 9
    assert sum(t.target for t in split.dev_trials) * 2 == len(split.dev_trials) > 0
    other = ds.split("verification", "0", seed=1)
    assert other.test_trials == split.test_trials  # one test list for every run
    assert split == ds.split("verification", "0", seed=0)
    dev_choices = {frozenset(e.speaker for e in ds.split("verification", "0", seed=s).dev) for s in range(6)}
    assert len(dev_choices) > 1


def test_librispeech_trial_file(librispeech_root, tmp_path):
    root = copy_of(librispeech_root, tmp_path)
    (root / "trials.txt").write_text(
        "1 test-clean/1089/134686/1089-134686-0000.flac 1089-134686-0002\n"
        "0 121-127105-0001 dev-clean/84/121123/84-121123-0000.flac\n"
        "0 1089/134686/1089-134686-0001.flac 237-126133-0000\n")
    split = LibriSpeech(root).split("verification", "0", seed=0)
    assert [(t.target, t.enroll, t.test) for t in split.test_trials] == [
        (1, "1089-134686-0000", "1089-134686-0002"), (0, "121-127105-0001", "84-121123-0000"),
        (0, "1089-134686-0001", "237-126133-0000")]
    assert [e.uid for e in split.test] == sorted(
        {"1089-134686-0000", "1089-134686-0002", "121-127105-0001", "84-121123-0000",
         "1089-134686-0001", "237-126133-0000"})


def test_librispeech_trial_file_errors(librispeech_root, tmp_path):
    root = copy_of(librispeech_root, tmp_path)
    trials = root / "trials.txt"
    trials.write_text("1 1089-134686-0000 1089-134686-0002\n0 1089-134686-0000 19-198-0000\n")
    with pytest.raises(DataError, match="19-198-0000 is by a train\\* speaker"):
        LibriSpeech(root).split("verification", "0", seed=0)
    trials.write_text("1 1089-134686-0000 1089-134686-0002\n0 1089-134686-0000 9999-1-0000\n")
    with pytest.raises(DataError, match=r"trials.txt:2: unknown utterance '9999-1-0000'"):
        LibriSpeech(root).split("verification", "0", seed=0)
    with pytest.raises(UserError, match="trial file not found"):
        LibriSpeech(root, trials_path=root / "other.txt")


def test_librispeech_bad_transcript_and_missing_clip(librispeech_root, tmp_path):
    root = copy_of(librispeech_root, tmp_path)
    chapter = root / "test-clean/121/127105"
    transcript = chapter / "121-127105.trans.txt"
    original = transcript.read_text()
    transcript.write_text(original + "121-127105-0009 A LINE WITHOUT ITS AUDIO\n")
    with pytest.raises(DataError, match=r"121-127105.trans.txt:4: utterance 121-127105-0009: audio clip .*missing"):
        LibriSpeech(root)
    transcript.write_text(original.replace("121-127105-0001 ", "121-127105-0001\t", 1).replace("\t", ""))
    with pytest.raises(DataError, match=r"121-127105.trans.txt:2: expected '121-127105-<number> TRANSCRIPT'"):
        LibriSpeech(root)
    transcript.write_text("\n".join(original.splitlines()[:2]) + "\n")  # utterance 0002 loses its line
    assert LibriSpeech(root).dropped["audio without transcript"] == 1
    transcript.unlink()
    with pytest.raises(DataError, match="expected the transcript file 121-127105.trans.txt"):
        LibriSpeech(root)


def test_librispeech_needs_train_and_test(librispeech_root, tmp_path):
    root = copy_of(librispeech_root, tmp_path)
    shutil.rmtree(root / "test-clean")
    with pytest.raises(DataError, match="test\\* split"):
        LibriSpeech(root).split("verification", "0", seed=0)
    shutil.rmtree(root / "train-clean-100")
    with pytest.raises(DataError, match="named train\\*"):
        LibriSpeech(root)


# --- data check -----------------------------------------------------------------------

def test_check_iemocap_summary(iemocap_root):
    summary = check_dataset(iemocap_root, "iemocap")
    assert summary.n_examples == 5 * IEMOCAP_KEPT_PER_SESSION
    assert [s.fold for s in summary.splits] == list(SESSIONS)
    assert all(s.test == IEMOCAP_KEPT_PER_SESSION and s.dev == IEMOCAP_KEPT_PER_SESSION for s in summary.splits)
    assert summary.emotions == {"angry": 5, "happy": 10, "neutral": 10, "sad": 5}
    assert len(summary.speakers) == 10 and sum(summary.speakers.values()) == 30
    assert summary.dropped == {"fru": 5, "xxx": 5}
    console = Console(record=True, width=100)
    console.print(render(summary))
    text = console.export_text()
    assert "Session5" in text and "neutral" in text and "fru" in text


def test_check_mmsa_and_librispeech(mmsa_root, librispeech_root):
    mosi = check_dataset(mmsa_root, "mosi")
    assert mosi.sentiment_bins == {-3: 2, -2: 2, -1: 2, 0: 3, 1: 2, 2: 2, 3: 2}
    assert mosi.splits[0].train == 9 and mosi.n_pretraining is None
    libri = check_dataset(librispeech_root, "librispeech")
    assert libri.n_pretraining == librispeech_count("train")
    assert libri.splits[0].test_trials == 18
    # dev-clean is used by no task: the summary counts what the benchmark uses.
    assert libri.n_examples == librispeech_count("train") + librispeech_count("test")
    console = Console(record=True, width=100)
    console.print(render(libri))
    assert "test trials" in console.export_text()


def test_check_unknown_format(iemocap_root):
    with pytest.raises(UserError, match="unknown dataset 'iemocapp'"):
        check_dataset(iemocap_root, "iemocapp")
