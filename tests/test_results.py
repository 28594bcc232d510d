import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ctal_bench.results import DONE, FAILED, CellKey, ResultsStore

KEY = CellKey("smoke", "ctal", "emotion", "synth", "0", 0)


def test_write_read_roundtrip_and_done(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.read(KEY) is None and not store.is_done(KEY, "abc")
    predictions = pd.DataFrame({"uid": ["a", "b"], "target": [0, 1], "prediction": [0, 0]})
    record = {"status": DONE, "config_hash": "abc", "metrics": {"test": {"wa": 0.5}}}
    store.write(KEY, record)
    assert not store.is_done(KEY, "abc")  # a finished cell without its predictions is not done
    store.write(KEY, {**record, "predictions": store.write_predictions(KEY, predictions)})
    read = store.read(KEY)
    assert read["cell"]["variant"] == "ctal" and read["metrics"]["test"]["wa"] == 0.5
    assert store.is_done(KEY, "abc") and not store.is_done(KEY, "other-hash")
    store.write(KEY, {"status": FAILED, "config_hash": "abc", "traceback": "boom"})
    assert not store.is_done(KEY, "abc")
    assert [r["cell"]["seed"] for r in store.records("smoke")] == [0]


def test_predictions_beside_the_cell_are_checked_against_the_record(tmp_path):
    store = ResultsStore(tmp_path)
    df = pd.DataFrame({"uid": ["a", "b"], "target": [0, 1], "prediction": [0, 0]})
    fingerprint = store.write_predictions(KEY, df)
    assert fingerprint["rows"] == 2 and store.predictions_path(KEY).parent == store.cell_path(KEY).parent
    store.write(KEY, {"status": DONE, "config_hash": "h", "metrics": {"test": {}}, "predictions": fingerprint})
    pd.testing.assert_frame_equal(store.read_predictions(KEY), df)
    pd.testing.assert_frame_equal(store.predictions(f"smoke/{KEY.id}"), df)
    lines = store.predictions_path(KEY).read_text().splitlines(keepends=True)
    store.predictions_path(KEY).write_text("".join(lines[:2]))  # cut at a row boundary: still a valid CSV
    assert store.read_predictions(KEY) is None and not store.is_done(KEY, "h")
    damaged, = store.take_damaged()
    assert damaged.path == store.predictions_path(KEY) and "does not match its record (expected 2 rows)" in str(damaged)


def test_reader_skips_partial_temporary_and_foreign_files_and_names_them(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(KEY, {"status": DONE, "config_hash": "x", "metrics": {"test": {}}})
    folder = store.cell_path(KEY).parent
    (folder / "broken.json").write_text('{"status": "do')  # e.g. written by a non-atomic tool
    (folder / "list.json").write_text("[1, 2]")  # valid JSON of the wrong shape
    (folder / "bare.json").write_text('{"status": "done", "config_hash": "x"}')  # no coordinates
    (folder / ".x.json.tmp").write_text("{}")
    assert len(list(store.records())) == 1
    assert {d.path.name: d.reason.split(":")[0] for d in store.take_damaged()} == {
        "broken.json": "not JSON", "list.json": "not a JSON object", "bare.json": "no cell coordinates"}


WRITER = """
import os, signal, sys
from ctal_bench import files
from ctal_bench.results import CellKey, ResultsStore
if sys.argv[2] == "die-before-rename":
    def die(*a):  # the process is killed after writing the temporary file, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    files.os.replace = die
store = ResultsStore(sys.argv[1])
payload = {"status": "done", "config_hash": "h", "metrics": {"test": {}}, "blob": "x" * 5_000_000}
i = 0
while True:
    store.write(CellKey("s", "v", "t", "d", "0", i % 3), payload)
    i += 1
"""


def test_killed_writer_leaves_no_partial_json(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "die-before-rename"])
    assert proc.returncode == -signal.SIGKILL
    assert list((tmp_path / "runs" / "s").glob("*.json")) == []  # only a hidden temp file is left
    assert list(ResultsStore(tmp_path).records()) == []


@pytest.mark.integration
def test_writer_killed_at_random_moments_never_exposes_partial_files(tmp_path):
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "loop"])
        time.sleep(0.8 + delay)  # interpreter start-up, then some writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for path in (tmp_path / "runs" / "s").glob("*.json"):
            json.loads(path.read_text())  # every visible file is complete
    assert len(list(ResultsStore(tmp_path).records())) >= 1
