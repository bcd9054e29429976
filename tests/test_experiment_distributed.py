"""The main job under two processes, launched as the README says (torchrun, gloo on the CPU): every process takes
part in the lock, only the main process probes and writes, and the others wait for it. A launch whose processes
would each run alone, or that starts one where several were asked for, is refused before any work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import toy_main_job_inputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lock_vit.py"
# the tiny main job: 2 rounds x 2 steps of 10 weights, one probe seed, no adaptive attacker
TINY_JOB = [
    *("--num_rounds", "2", "--update_steps_per_round", "2", "--weights_per_round", "10"),
    *("--per_device_train_batch_size", "8", "--score_batches", "1", "--adversary_epochs", "2"),
    *("--adversary_seeds", "1", "--adversary_kinds", "linear", "--probe_seeds", "0", "--probe_fractions", "1.0"),
    *("--adaptive_attacks", "false", "--disable_tqdm", "true"),
]


def _launch(launcher: list[str], words: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_MIXED_PRECISION"):
        environment.pop(name, None)  # this test's own process is one alone, whatever launched pytest
    return subprocess.run(
        [*launcher, *words], cwd=cwd, env=environment, capture_output=True, text=True, timeout=240, check=False
    )


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_readme_torchrun_main_job_writes_once_and_every_rank_locks(tmp_path):
    _, words = toy_main_job_inputs(tmp_path)
    out = tmp_path / "out"
    done = _launch(
        [*_torchrun(_free_port()), str(EXAMPLE)],
        [*words, *TINY_JOB, "--output_dir", str(out)],
        tmp_path,
        ACCELERATE_USE_CPU="true",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("outputs in") == 1  # the main process reports; the other waited and stayed quiet
    assert {p.name for p in out.iterdir()} == {"victim", "locked", "report.json", "report.md", "probe.png"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder of any rank
    lock = json.loads((out / "locked" / "encoderlock_config.json").read_text())
    # a lock made under two processes: each process's share of the pairs still held a batch, so updates ran
    assert lock["rounds_completed"] == 2 and lock["mask"]["count"] == 20
    assert json.loads((out / "report.json").read_text())["lock"]["rounds_completed"] == 2


@pytest.mark.parametrize(
    "launcher, env, message",
    [
        (lambda port: _torchrun(port), {}, "2 processes were started (WORLD_SIZE=2), but each would lock alone"),
        (
            lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"],
            {},
            "`accelerate launch` was asked for several processes but started one",
        ),
    ],
    ids=["torchrun-without-cpu-flag", "accelerate-launch-cpu"],
)
def test_a_launch_whose_processes_would_not_join_is_refused_before_any_work(tmp_path, launcher, env, message):
    _, words = toy_main_job_inputs(tmp_path)
    out = tmp_path / "out"
    done = _launch(
        [*launcher(_free_port()), "-m", "hf_encoderlock.cli.main", "lock"], [*words, "--output_dir", str(out)], tmp_path
    )
    assert done.returncode != 0 and message in done.stderr, done.stderr[-3000:]
    assert "probe" not in done.stdout.lower() and not out.exists()
