import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from ctal_bench.results import DONE, FAILED, CellKey, ResultsStore

KEY = CellKey("smoke", "ctal", "emotion", "synth", "0", 0)


def test_write_read_roundtrip_and_done(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.read(KEY) is None and not store.is_done(KEY, "abc")
    store.write(KEY, {"status": DONE, "config_hash": "abc", "metrics": {"test": {"wa": 0.5}}})
    record = store.read(KEY)
    assert record["cell"]["variant"] == "ctal" and record["metrics"]["test"]["wa"] == 0.5
    assert store.is_done(KEY, "abc") and not store.is_done(KEY, "other-hash")
    store.write(KEY, {"status": FAILED, "config_hash": "abc", "traceback": "boom"})
    assert not store.is_done(KEY, "abc")
    assert [r["cell"]["seed"] for r in store.records("smoke")] == [0]


def test_predictions_beside_the_cell(tmp_path):
    store = ResultsStore(tmp_path)
    df = pd.DataFrame({"uid": ["a", "b"], "target": [0, 1], "prediction": [0, 0]})
    path = store.write_predictions(KEY, df)
    assert path.parent == store.cell_path(KEY).parent
    pd.testing.assert_frame_equal(store.read_predictions(KEY), df)


def test_reader_skips_partial_and_temporary_files(tmp_path):
    store = ResultsStore(tmp_path)
    store.write(KEY, {"status": DONE, "config_hash": "x"})
    folder = store.cell_path(KEY).parent
    (folder / "broken.json").write_text('{"status": "do')  # e.g. written by a non-atomic tool
    (folder / ".x.json.tmp").write_text("{}")
    assert len(list(store.records())) == 1


WRITER = """
import os, signal, sys
from ctal_bench import files
from ctal_bench.results import CellKey, ResultsStore
if sys.argv[2] == "die-before-rename":
    def die(*a):  # the process is killed after writing the temporary file, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    files.os.replace = die
store = ResultsStore(sys.argv[1])
payload = {"status": "done", "config_hash": "h", "blob": "x" * 5_000_000}
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


def test_writer_killed_at_random_moments_never_exposes_partial_files(tmp_path):
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "loop"])
        time.sleep(0.8 + delay)  # interpreter start-up, then some writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for path in (tmp_path / "runs" / "s").glob("*.json"):
            json.loads(path.read_text())  # every visible file is complete
    assert len(list(ResultsStore(tmp_path).records())) >= 1
