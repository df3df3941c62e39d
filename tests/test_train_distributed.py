"""Multi-rank training on node-local disks: rank 0's checkpoints decide where every rank resumes.

Each rank runs ``lens-hub train`` in its own directory (its "node"), wired together by the environment torchrun
would set, so only rank 0's directory holds the checkpoints rank 0 wrote.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, gpt2_real_vocab, save_model

from lens_hub import TunedLens
from lens_hub.training.checkpoint import list_checkpoints

ARGS = [
    "--data",
    str(SAMPLE),
    "--steps",
    "4",
    "--tokens-per-step",
    "128",
    "--seq-len",
    "32",
    "--batch-size",
    "2",
    "--checkpoint-every",
    "2",
    "--keep-checkpoints",
    "5",
    "--device",
    "cpu",
    "--out",
    "lens",
]
TIMEOUT = 240  # seconds for both ranks; a rank waiting in a collective for the other fails the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(model: Path, nodes: list[Path]) -> list[tuple[int, str, str]]:
    """Run ``lens-hub train`` as rank 0 in ``nodes[0]`` and rank 1 in ``nodes[1]``; (returncode, out, err) each."""
    port = str(_free_port())
    procs = []
    for rank, node in enumerate(nodes):
        node.mkdir(parents=True, exist_ok=True)
        env = os.environ | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "lens_hub.cli", "train", str(model), *ARGS],
                cwd=node,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        tails = [proc.communicate()[1][-2000:] for proc in procs]
        pytest.fail(f"the ranks did not finish within {TIMEOUT} s (waiting for each other?):\n" + "\n".join(tails))
    return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A full two-rank run; rank 0's directory keeps the checkpoints of steps 2 and 4."""
    root = tmp_path_factory.mktemp("uninterrupted")
    save_model(root)
    results = _two_nodes(root / "model", [root / "node0", root / "node1"])
    assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
    kept = [p.name for p in list_checkpoints(root / "node0" / "lens" / "checkpoints")]
    assert kept == ["step-000000", "step-000002", "step-000004"]  # step 0: the fitted lens
    assert not (root / "node1" / "lens").exists()  # rank 1 writes nothing
    return root


def _interrupted_at_step_2(uninterrupted: Path, root: Path) -> list[Path]:
    """Fresh nodes where rank 0's disk holds what a run stopped after step 2 leaves, and rank 1's disk nothing."""
    nodes = [root / "node0", root / "node1"]
    shutil.copytree(
        uninterrupted / "node0" / "lens" / "checkpoints" / "step-000002",
        nodes[0] / "lens" / "checkpoints" / "step-000002",
    )
    nodes[1].mkdir(parents=True)
    return nodes


def test_a_run_resumes_from_rank_0s_checkpoint_when_the_other_rank_has_none(uninterrupted, tmp_path):
    nodes = _interrupted_at_step_2(uninterrupted, tmp_path)
    results = _two_nodes(uninterrupted / "model", nodes)
    assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
    assert [p.name for p in list_checkpoints(nodes[0] / "lens" / "checkpoints")] == ["step-000002", "step-000004"]
    model = gpt2_real_vocab()
    expected = TunedLens.load(uninterrupted / "node0" / "lens", model).state_dict()
    resumed = TunedLens.load(nodes[0] / "lens", model).state_dict()
    # Rank 1 must have resumed at step 2 with rank 0's lens and momentum: its gradients enter every update.
    for x, y in zip(expected.values(), resumed.values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    assert json.loads((nodes[0] / "lens" / "config.json").read_text())["training"]["world_size"] == 2


def test_a_refused_checkpoint_stops_every_rank_instead_of_leaving_one_waiting(uninterrupted, tmp_path):
    nodes = _interrupted_at_step_2(uninterrupted, tmp_path)
    state = nodes[0] / "lens" / "checkpoints" / "step-000002" / "state.json"
    saved = json.loads(state.read_text())
    saved["settings"]["lr"] = 0.5  # a checkpoint of a run with another learning rate
    state.write_text(json.dumps(saved))
    results = _two_nodes(uninterrupted / "model", nodes)
    for code, _, err in results:
        assert code == 1, err[-3000:]
        assert "CheckpointError" in err and "different settings (lr)" in err
        assert "Traceback" not in err
