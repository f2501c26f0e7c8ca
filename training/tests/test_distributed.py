"""``fit`` under torchrun: two processes on gloo train one model (DistributedDataParallel)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latent_memory_training.training.fit import load_model

REPO = Path(__file__).resolve().parents[2]

# Runs in each process torchrun starts: records, per rank, which checkpoints it wrote,
# a hash of its first batch, and its model's parameters before and after training.
DRIVER = r"""
import hashlib, json, os, sys
from pathlib import Path

from latent_memory_training import cli
from latent_memory_training.training import fit

rank = int(os.environ["RANK"])
record = Path(sys.argv[1])
seen = {}


def digest(model):
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


forward = fit.WindowStep.forward


def recording_forward(self, state, reset, obs, *args, **kwargs):
    if not seen:
        seen["model"] = self.model
        seen["initial"] = digest(self.model)
        seen["first_batch"] = hashlib.sha256(obs["image"].numpy().tobytes()).hexdigest()
    return forward(self, state, reset, obs, *args, **kwargs)


save = fit.save_checkpoint


def recording_save(path, *args, **kwargs):
    with open(record / f"saves_rank{rank}.txt", "a") as f:
        f.write(Path(path).name + "\n")
    return save(path, *args, **kwargs)


fit.WindowStep.forward = recording_forward
fit.save_checkpoint = recording_save
code = cli.main(sys.argv[2:])
result = {"initial": seen["initial"], "final": digest(seen["model"]),
          "first_batch": seen["first_batch"], "world_size": int(os.environ["WORLD_SIZE"])}
(record / f"rank{rank}.json").write_text(json.dumps(result))
sys.exit(code)
"""


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_two_processes_stay_in_sync_and_only_rank0_writes(data, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    record, run = tmp_path / "record", tmp_path / "run"
    record.mkdir()
    args = ["fit", "--data", str(data / "train"), "--val", str(data / "val"), "--out", str(run)]
    args += ["--batch", "2", "--window", "8", "--spans", "1", "4", "--steps", "3"]
    args += ["--val-every", "2", "--min-episode", "16", "--threads", "1"]
    path = os.pathsep.join([str(REPO), str(REPO / "training"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "2", str(driver), str(record), *args]
    started = time.perf_counter()
    done = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(f"torchrun with 2 processes: {time.perf_counter() - started:.1f} s")

    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # The ranks trained on different data, yet hold the same model, which training
    # changed: their gradients were averaged at every step.
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["final"] == ranks[1]["final"]
    assert ranks[0]["final"] != ranks[0]["initial"]
    # Only rank 0 wrote checkpoints: best.pt at its first validation, last.pt at the end.
    saves = (record / "saves_rank0.txt").read_text().split()
    assert saves[0] == "best.pt" and saves[-1] == "last.pt"
    assert not (record / "saves_rank1.txt").exists()
    last = torch.load(run / "last.pt", weights_only=False)
    assert last["step"] == 3 and last["world_size"] == 2
    assert [h["step"] for h in last["history"]] == [2, 3]
    # The checkpoint holds the unwrapped model (no DDP prefixes): the synchronised one.
    model, _ = load_model(run / "last.pt")
    assert _digest(model) == ranks[0]["final"]
    assert (run / "best.pt").exists()
