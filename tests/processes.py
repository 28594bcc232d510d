"""Starting ``bench.py`` as a child process, as a user starts it from a terminal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The smoke suite at the tiny synth size with two epochs of each training: a whole run in seconds.
TINY_SMOKE = ["--suite", "smoke", "--set", "data.size=tiny", "--set", "pretrain.epochs=2", "--set", "finetune.epochs=2",
              "--set", "run.threads=1"]


def start_bench(*args, data_dir: Path, stdout=subprocess.PIPE) -> subprocess.Popen:
    """``bench.py *args --data-dir data_dir``, with stderr piped and Ctrl-C's default action.

    A script's background job inherits SIGINT ignored, Python then keeps it ignored, and so
    would this child: it gets the default disposition, so that SIGINT raises KeyboardInterrupt
    in it wherever the tests run.
    """
    return subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *args, "--data-dir", str(data_dir)],
                            stdout=stdout, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "250"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
