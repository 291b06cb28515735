"""The README's SLURM batch script (`scripts/slurm_2x8.sbatch`), run by bash with stand-ins for `srun`, `scontrol`
and `composer` on PATH: one launcher per node with its node rank, and a requeue exactly when the run was
preempted (exit 75). No SLURM cluster is reachable from CI; this checks the script's own logic."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

from cosmos_composer.callbacks.preemption import PREEMPTED_EXIT_CODE

SCRIPT = REPO / "scripts" / "slurm_2x8.sbatch"

STAND_INS = {
    # srun starts its command once per node (SLURM_NODEID 0 and 1) and exits with the highest code, as srun does.
    "srun": """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
highest=0
for node in 0 1; do SLURM_NODEID=$node "$@"; code=$?; (( code > highest )) && highest=$code; done
exit $highest
""",
    "scontrol": """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-node-07\\ngpu-node-08\\n'; exit 0; fi
echo "$@" >> "$CALLS/scontrol"
""",
    "composer": """#!/bin/bash
echo "$@" >> "$CALLS/composer"
exit $COMPOSER_EXIT
""",
}


def test_the_readme_shows_the_script_itself():
    readme = (REPO / "README.md").read_text()
    assert SCRIPT.read_text() in readme


@pytest.mark.parametrize("composer_exit, requeued", [(0, False), (PREEMPTED_EXIT_CODE, True), (1, False)])
def test_one_launcher_per_node_and_a_requeue_only_when_preempted(tmp_path, composer_exit, requeued):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "COMPOSER_EXIT": str(composer_exit),
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_JOB_ID": "4242",
    }
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == composer_exit, result.stderr
    launches = Path(calls / "composer").read_text().splitlines()
    assert [line.split()[:8] for line in launches] == [
        ["--world_size", "16", "--node_rank", str(node), "--master_addr", "gpu-node-07", "--master_port", "29500"]
        for node in (0, 1)
    ]
    assert all(line.split()[8:12] == ["-n", "8", "train.py", "yamls/hdmap.yaml"] for line in launches)
    requeue = calls / "scontrol"
    assert requeue.exists() == requeued
    if requeued:
        assert requeue.read_text().split() == ["requeue", "4242"]
