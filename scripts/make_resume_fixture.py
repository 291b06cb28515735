#!/usr/bin/env python
"""Make the resume fixture: a quickstart checkpoint as the code of this commit writes it, and one more batch.

Run by hand, never in CI; `tests/test_checkpoint_ema_sharing.py` resumes the fixture with the current code
and compares. It runs the quickstart (tiny preset, one FSDP2 rank, sharded DCP checkpoints) in a temporary
folder:

1. two batches, saving `ep0-ba2`, which is copied to `<out>/ep0-ba2/` (its `.metadata`, shard,
   `checksums.json`, `network.json`);
2. the same run resumed from it for one more batch, as a user's autoresume would, saving `ep1-ba3`;
3. `<out>/after_batch_3.json`: that batch's loss, the arguments of both runs, the commit and torch version;
   `<out>/after_batch_3.safetensors`: the EMA's trainable weights (`net_ema.<control branch>`, fp32) after it.

    python scripts/make_resume_fixture.py --out tests/fixtures/quickstart_before_ema_sharing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cosmos_composer.checkpoint.export import read_composer_model_state  # noqa: E402
from cosmos_composer.models import build_network  # noqa: E402

QUICKSTART = REPO / "yamls" / "quickstart.yaml"
CHECKPOINTS = ("out", "cosmos_composer", "quickstart", "quickstart", "checkpoints")
# Both runs: the quickstart without evaluation or sample videos (they draw no training randomness).
COMMON_ARGS = ["eval_loader=null", "callbacks.sample_videos=null", "progress_bar=false"]
FIRST_ARGS = [*COMMON_ARGS, "max_duration=2ba", "save_interval=2ba"]
RESUME_ARGS = [*COMMON_ARGS, "max_duration=3ba", "save_interval=1ba"]
# The loss of the resumed batch: step 2 (batches count from step 0) in the run's metrics.jsonl.
RESUMED_STEP = 2


def _train(root: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "HF_TOKEN", "RANK", "WORLD_SIZE")}
    env["COSMOS_OUTPUT_ROOT"] = str(root / "out")
    command = [sys.executable, str(REPO / "train.py"), str(QUICKSTART), *args]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def step_loss(metrics_jsonl: Path, step: int) -> float:
    """The last `loss/train/total` logged at `step` in a run's metrics.jsonl."""
    losses = [
        record["loss/train/total"]
        for record in map(json.loads, metrics_jsonl.read_text().splitlines())
        if record.get("step") == step and "loss/train/total" in record
    ]
    if not losses:
        raise SystemExit(f"{metrics_jsonl} has no loss/train/total at step {step}")
    return losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "quickstart_before_ema_sharing")
    out = parser.parse_args().out.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _train(root, FIRST_ARGS)
        checkpoints = root.joinpath(*CHECKPOINTS)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(checkpoints / "ep0-ba2", out / "ep0-ba2")
        _train(root, RESUME_ARGS)
        loss = step_loss(checkpoints.parent / "metrics.jsonl", RESUMED_STEP)
        trainable = build_network("tiny-multiview").control_branch_parameter_names()
        ema = read_composer_model_state(checkpoints / "ep1-ba3", prefixes=("net_ema.",), progress=False)
        save_file(
            {f"net_ema.{name}": ema[f"net_ema.{name}"].contiguous() for name in trainable},
            out / "after_batch_3.safetensors",
        )
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    record = {
        "made_by": f"python scripts/make_resume_fixture.py --out {out}",
        "commit": commit,
        "torch": torch.__version__,
        "first_args": FIRST_ARGS,
        "resume_args": RESUME_ARGS,
        "resumed_step": RESUMED_STEP,
        "loss": loss,
    }
    (out / "after_batch_3.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB): batch 3 loss {loss!r}")


if __name__ == "__main__":
    main()
