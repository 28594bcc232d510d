"""benchmarks/peers.py: both sides of each pair see the same batch and shapes (needs the `peers` extra)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("MMSA", reason="MMSA is not installed (pip install -e '.[peers]')")
pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
spec = importlib.util.spec_from_file_location("peers", SCRIPT)
peers = sys.modules["peers"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
spec.loader.exec_module(peers)


@pytest.mark.parametrize("name", list(peers.PAIRS))
def test_both_sides_see_the_same_batch_and_shapes_and_train(name):
    pair, = peers.build([name], batch=4)
    text, audio, vision = pair.their_inputs
    ours = pair.our_batch
    assert ours.tokens.shape == text.shape[:2] == (4, peers.TEXT_LEN)
    assert ours.audio.shape == audio.shape and torch.equal(ours.audio, audio)
    assert audio.shape[1] == (peers.AUDIO_LEN if name == "mult" else 1)  # MMSA averages audio for the others
    assert vision.shape[0] == 4
    before = [p.detach().clone() for p in (*pair.ours.parameters(), *pair.theirs.parameters())]
    for step in peers.step_functions(pair)[:2]:  # one training step each
        step()
    after = list((*pair.ours.parameters(), *pair.theirs.parameters()))
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    assert pair.ours(ours).logits.shape == (4, 1) and pair.theirs(*pair.their_inputs)["M"].shape == (4, 1)
