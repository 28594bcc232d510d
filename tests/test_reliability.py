"""Results you can trust after anything: damaged files are named and their cells rerun, settings
are never mixed in a table row, bad paths and full disks stop a run with one line, and two runs
never share a results folder. Everything at the tiny synth size."""
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from processes import TINY_SMOKE

from ctal_bench import cli, files
from ctal_bench.data.features import audio_problem
from ctal_bench.errors import UserError
from ctal_bench.results import CellKey, ResultsStore

pytestmark = pytest.mark.integration

TINY = [*TINY_SMOKE, "--jobs", "1"]
SUITE_RUNS = Path("runs") / "smoke"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory, data_dir):
    """The tiny smoke suite, run once, untouched."""
    results = tmp_path_factory.mktemp("undamaged")
    assert cli.main(["run", *TINY, "--results", str(results), "--data-dir", str(data_dir)]) == 0
    return results


def metrics(results: Path) -> dict:
    return {p.name: json.loads(p.read_text())["metrics"] for p in sorted((results / SUITE_RUNS).glob("*.json"))}


def results_tables(results: Path) -> dict:
    """What the report says, without the columns of time (throughput) that differ between runs."""
    found = {}
    for path in sorted((results / "tables").rglob("*.csv")):
        table = pd.read_csv(path)
        found[path.relative_to(results).as_posix()] = table.drop(
            columns=[c for c in table.columns if "per_second" in c or "seconds" in c]).to_csv(index=False)
    for path in sorted((results / "tables").rglob("*.md")):
        lines = path.read_text().splitlines()
        found[path.relative_to(results).as_posix()] = [re.sub(r"\| *[\d.,k]+ *\|$", "|", line) for line in lines
                                                        if "samples/s" not in line]
    return found


def run(results: Path, data_dir: Path, *extra) -> int:
    return cli.main(["run", *TINY, *extra, "--results", str(results), "--data-dir", str(data_dir)])


def test_damaged_records_predictions_and_checkpoint_are_named_rerun_and_end_in_the_same_tables(
        undamaged, data_dir, tmp_path, capsys):
    """The fault-injection test: damage every kind of file between reruns, rerun, compare."""
    results = tmp_path / "results"
    shutil.copytree(undamaged, results)
    runs = results / SUITE_RUNS
    emotion, sentiment, verification = (f"ctal__{task}__synth__fold-0__seed-0"
                                        for task in ("emotion", "sentiment", "verification"))
    preds = (runs / f"{emotion}.preds.csv").read_text().splitlines(keepends=True)
    (runs / f"{emotion}.preds.csv").write_text("".join(preds[:len(preds) // 2]))  # cut at a row boundary
    (runs / f"{sentiment}.preds.csv").write_text("")  # 0 bytes
    (runs / f"{verification}.json").write_text((runs / f"{verification}.json").read_text()[:300])  # cut JSON
    checkpoint, = (results / "checkpoints").glob("pretrain-*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])

    capsys.readouterr()
    assert cli.main(["report", "--results", str(results), "--no-figures"]) == 0  # no traceback, the file named
    out = capsys.readouterr().out.replace("\n", "")
    assert re.search(rf"skipped unreadable .*{re.escape(verification)}.json \(not JSON", out), out

    assert run(results, data_dir) == 0
    captured = capsys.readouterr()
    out = captured.out.replace("\n", "")
    assert "3 to run" in out
    for name in (f"{emotion}.preds.csv (does not match its record", f"{sentiment}.preds.csv (does not match",
                 f"{verification}.json (not JSON"):
        assert re.search(rf"skipped unreadable .*{re.escape(name)}", out), out
    assert f"{checkpoint.name}: unreadable checkpoint" in captured.err
    assert list((results / "checkpoints").glob("pretrain-*.pt.damaged-*"))
    assert metrics(results) == metrics(undamaged)
    assert results_tables(results) == results_tables(undamaged)

    (runs / f"{emotion}.preds.csv").unlink()  # a deleted prediction file: the cell is not done
    (runs / f"{sentiment}.json").write_text('["a list, not a record"]')  # valid JSON, wrong shape
    assert run(results, data_dir) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "2 to run" in out and "not a JSON object" in out
    assert metrics(results) == metrics(undamaged)


def test_a_row_that_mixes_configs_is_refused_until_one_is_kept(data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    narrow = ["--tasks", "emotion"]
    assert run(results, data_dir, *narrow, "--seeds", "2", "--set", "finetune.epochs=1") == 0
    capsys.readouterr()
    assert run(results, data_dir, *narrow, "--seeds", "1") == 0  # finetune.epochs=2 (TINY) replaces seed 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "replacing 1 cells finished with another config" in out
    assert "no report: a table row must come from one configuration" in out

    assert cli.main(["report", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "ctal · emotion on synth (suite smoke) mixes 2 configurations" in err
    assert "finetune.epochs=2 vs 1" in err or "finetune.epochs=1 vs 2" in err
    hashes = re.findall(r"([0-9a-f]{8}) \(seeds (\d)", err)
    newest = next(h for h, seed in hashes if seed == "0")
    assert cli.main(["report", "--results", str(results), "--keep", newest, "--no-figures"]) == 0
    assert (results / "tables" / "smoke" / "synth" / "main.md").exists()


def test_bad_paths_are_one_line_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert cli.main(["run", *TINY, "--results", str(a_file), "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --results {a_file}: is a file, expected a directory"
    assert cli.main(["run", *TINY, "--results", str(tmp_path / "r"), "--data-dir", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --data-dir {a_file}: is a file, expected a directory"


def test_an_unwritable_results_folder_is_refused_up_front(tmp_path, capsys, monkeypatch):
    """Root ignores a read-only mode, so the refusal is injected where the check writes."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    assert cli.main(["report", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --results {tmp_path}: cannot write there (Permission denied)"


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_finished_cells(undamaged, data_dir, tmp_path, capsys,
                                                                          monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(undamaged, results)
    kept = results / SUITE_RUNS / "ctal__emotion__synth__fold-0__seed-0.json"
    kept.unlink()
    (results / SUITE_RUNS / "ctal__sentiment__synth__fold-0__seed-0.json").unlink()
    real = files.atomic_write

    def full(path, write, durable=False):
        if Path(path).suffix in (".json", ".csv") and "runs" in Path(path).parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write, durable)

    monkeypatch.setattr(files, "atomic_write", full)
    capsys.readouterr()
    assert run(results, data_dir) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "No space left on device" in errors[0] and "finished cells are kept" in errors[0]
    assert (results / SUITE_RUNS / "ctal__verification__synth__fold-0__seed-0.json").exists()
    assert not kept.exists()  # stopped at the first cell: the second was never trained


def test_files_are_written_with_the_umask_not_the_temporary_files_mode(tmp_path):
    store = ResultsStore(tmp_path)
    key = CellKey("s", "ctal", "emotion", "synth", "0", 0)
    old = os.umask(0o022)
    try:
        path = store.write(key, {"status": "failed", "config_hash": "x"})
        files.save_atomic(tmp_path / "c.pt", {"w": torch.zeros(1)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(store.write(key, {"status": "failed", "config_hash": "x"}).stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_second_run_on_the_same_results_stops_with_the_holder_named(tmp_path, capsys):
    results = tmp_path / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ctal_bench.results import ResultsStore\n"
         f"with ResultsStore({str(results)!r}).lock('bench.py suite smoke'):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["run", *TINY, "--results", str(results), "--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"in use by bench.py suite smoke (pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with ResultsStore(results).lock("the next run"):  # the dead holder's lock went with it
        assert "the next run" in (results / ".lock").read_text()


def test_report_refuses_an_unknown_reference_with_close_names(undamaged, capsys):
    assert cli.main(["report", "--results", str(undamaged), "--reference", "late_fusio", "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "--reference 'late_fusio' has no finished cells here" in err and len(err.strip().splitlines()) == 1


def test_a_bad_pretrain_init_file_says_it_is_not_a_checkpoint(tmp_path):
    from ctal_bench.data.converted import read_converted

    junk, foreign = tmp_path / "junk.pt", tmp_path / "foreign.pt"
    junk.write_bytes(b"junk")
    torch.save({"path": Path("a")}, foreign)  # a class torch's safe loader refuses, with its advice
    for bad in (junk, foreign):
        with pytest.raises(UserError) as error:
            read_converted(bad)
        message = str(error.value)
        assert message.startswith(f"{bad}: not a checkpoint written by bench.py import-ctal")
        assert "weights_only" not in message


# ---- audio that data check must open -------------------------------------------------------------

def _tone(n=16000):
    return (0.1 * np.sin(np.arange(n) / 10)).astype(np.float32)


def test_audio_problem_finds_every_kind_of_damage(tmp_path):
    good = tmp_path / "good.flac"
    soundfile.write(good, _tone(), 16000)
    assert audio_problem(good) is None
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    assert audio_problem(empty) == "empty file (0 bytes)"
    header_only = tmp_path / "header.wav"
    soundfile.write(header_only, np.zeros(0, np.float32), 16000)
    assert audio_problem(header_only) == "no samples (a header only)"
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    assert audio_problem(cut_flac) is not None
    wav = tmp_path / "whole.wav"
    soundfile.write(wav, _tone(), 16000, subtype="PCM_16")
    half = tmp_path / "half.wav"
    half.write_bytes(wav.read_bytes()[:len(wav.read_bytes()) // 2])
    assert audio_problem(half).startswith("cut short: its WAV header declares 32000 bytes")
    nan = tmp_path / "nan.wav"
    samples = _tone()
    samples[100] = np.nan
    soundfile.write(nan, samples, 16000, subtype="FLOAT")
    assert audio_problem(nan) == "NaN or infinite samples"


def test_data_check_decodes_every_file_and_lists_the_bad_ones(data_dir, tmp_path, capsys):
    from ctal_bench.data import synth

    root = tmp_path / "synth"
    shutil.copytree(synth.build(data_dir, "tiny", progress=False), root)
    victim = sorted((root / "audio").rglob("*.flac"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    assert cli.main(["data", "check", str(root), "--format", "synth"]) == 2
    captured = capsys.readouterr()
    assert victim.name in captured.out.replace("\n", "")
    assert captured.err.strip() == f"error: {root}: 1 audio files cannot be used (listed above)"
