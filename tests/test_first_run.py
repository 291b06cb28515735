"""A new user's first quickstart runs: a run folder that explains itself, a quiet console, a tidy temp folder.

One module-scoped sequence of real `composer -n 2 train.py yamls/quickstart.yaml` runs, from a fresh
directory as a user runs it from the checkout: 2 batches, then the same command raised to 4 (a resume),
then the same command again (already complete).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICKSTART, REPO, load_script, train_env
from matplotlib.image import imread
from omegaconf import OmegaConf

from cosmos_composer.callbacks.loss_plot import DPI, LOSS_PANEL_HEIGHT_IN, METRIC_PANEL_HEIGHT_IN, LossPlot
from cosmos_composer.config import load_config
from cosmos_composer.config_file import REDACTED, write_json_or_yaml
from cosmos_composer.evaluation.heldout import HeldOutSet

# The sample scores of the quickstart (its YAML leaves out TSE and CSE, which 32x48 frames are too small for).
SCORES = ("blur_ssim", "edge_f1", "edge_precision", "edge_recall")

# Printed by the libraries on every quickstart run before, and silenced or avoided now.
SILENCED = [
    "FSDP2 Config/APIs are experimental",
    "memory monitor only works on CUDA devices",
    "No batches were trained",
    "TypedStorage is deprecated",
    "resource_tracker",
    "leaked shared_memory",
]


def _quickstart(root: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """The README's command, run in `root` with no output root set (the YAML's `runs/` applies).

    The launcher shows rank 0 only; rank 1's stderr goes to `<root>/<name>.rank1.stderr`."""
    env = train_env(root, TMPDIR=str(root / "tmp"))
    env.pop("COSMOS_OUTPUT_ROOT")
    env.pop("IMAGINAIRE_OUTPUT_ROOT", None)
    composer = Path(sys.executable).with_name("composer")
    command = [
        str(composer),
        "-n",
        "2",
        "--stderr",
        str(root / f"{name}.rank{{rank}}.stderr"),
        str(REPO / "train.py"),
        str(QUICKSTART),
        "save_interval=2ba",
        "eval_interval=2ba",
        "callbacks.sample_videos.every_n_batches=2",
        *overrides,
    ]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result.stderr += (root / f"{name}.rank1.stderr").read_text()
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_run")
    (root / "tmp").mkdir()
    first = _quickstart(root, "first", "max_duration=2ba")
    resumed = _quickstart(root, "resumed", "max_duration=4ba")
    again = _quickstart(root, "again", "max_duration=4ba")
    return root, first, resumed, again


def _folder(root: Path) -> Path:
    return root / "runs" / "cosmos_composer" / "quickstart" / "quickstart"


def test_the_run_folder_is_under_the_current_directory_and_holds_every_file(runs):
    root, *_ = runs
    folder = _folder(root)
    names = {p.name for p in folder.iterdir()}
    assert {"checkpoints", "samples", "config.yaml", "metrics.jsonl", "loss.png", "summary.json"} <= names
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_yaml_is_the_resolved_config_and_loads_again(runs):
    root, *_ = runs
    path = _folder(root) / "config.yaml"
    cfg = load_config(path)  # valid as a YAML to train from
    assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.max_duration == "4ba"  # the resumed run's override
    assert cfg.output_root == "runs"  # resolved from the YAML's interpolation
    assert cfg.optimizer.weight_decay == 1e-3  # a default the YAML does not set


def test_metrics_jsonl_has_each_step_once_across_the_resume(runs):
    root, *_ = runs
    records = [json.loads(line) for line in (_folder(root) / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in record for record in records)
    # The first run's records after its last checkpoint (its closing time/* record) are not kept twice.
    logged = [(record["step"], name) for record in records for name in record if name != "step"]
    assert len(logged) == len(set(logged))
    train_steps = [r["step"] for r in records if "loss/train/total" in r]
    assert train_steps == [0, 1, 2, 3]
    assert [r["step"] for r in records if "metrics/eval/loss_fixed_sigmas" in r] == [2, 4]


def test_the_samples_are_scored_at_each_sample_call_and_plotted_under_the_loss(runs, tmp_path):
    root, *_ = runs
    folder = _folder(root)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for name in ("metrics/samples/blur_ssim", "metrics/samples/edge_f1"):
        logged = [(record["step"], record[name], record[f"{name}_std"]) for record in records if name in record]
        assert [step for step, *_ in logged] == [2, 4], logged  # each sample call's batch, once (rank 0 alone)
        for _, mean, spread in logged:  # a non-finite value would be the string "nan"
            assert isinstance(mean, float) and 0 <= mean <= 1 and isinstance(spread, float) and spread >= 0, logged
    assert len(list((folder / "samples" / "ba4").glob("*.mp4"))) == 2 * 8  # the 2 held-out items, 7 views + overview
    # loss.png has the loss panel and, below it, the panel of the sample scores: the plot of the same file
    # has those panels, and loss.png is that tall.
    redrawn = LossPlot(str(tmp_path / "loss.png"))
    redrawn.draw_file(folder / "metrics.jsonl")
    assert redrawn.panels[1:] == [[f"metrics/samples/{name}" for name in SCORES]]
    assert (
        imread(folder / "loss.png").shape[0]
        == imread(redrawn.path).shape[0]
        == ((LOSS_PANEL_HEIGHT_IN + METRIC_PANEL_HEIGHT_IN) * DPI)
    )


def test_evaluate_run_compares_the_quickstarts_two_checkpoints_and_reuses_them_on_a_rerun(runs, tmp_path, capsys):
    """`evaluate.py run` on the run's batch-2 and batch-4 checkpoints (Composer folders, network.json inside) and the
    quickstart's own data: the table with a column per checkpoint, the CSV and the side-by-side videos."""
    root, *_ = runs
    checkpoints = _folder(root) / "checkpoints"
    first, last = (next(checkpoints.glob(f"ep*-ba{batch}")) for batch in (2, 4))
    output = tmp_path / "eval"
    argv = ["run", "--checkpoint", str(first), "--checkpoint", str(last), "--labels", "ba2,ba4"]
    argv += ["--data", str(root / "data" / "quickstart_mds"), "--output", str(output), "--vae", "tiny"]
    argv += ["--text-encoder", "tiny", "--steps", "2", "--num-frames", "5", "--height", "32", "--width", "48"]
    argv += ["--max-clips", "1"]  # of the quickstart's clips: a quick look, as a user would take one
    evaluate = load_script("evaluate")
    assert evaluate.main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    table = (output / "metrics.md").read_text()
    assert table.splitlines()[0] == "| metric | better | ba2 | ba4 |", table
    assert {line.split(" | ")[0] for line in table.splitlines()[2:] if line.startswith("| ")} >= {
        "| blur_ssim",
        "| edge_f1",
    }
    clips = json.loads((output / "metrics.json").read_text())["clips"]
    assert clips == 1 < len(HeldOutSet(root / "data" / "quickstart_mds"))
    rows = (output / "per_sample.csv").read_text().splitlines()
    assert rows[0].startswith("sample,seed,checkpoint,") and len(rows) == 1 + 2 * clips
    assert len(list((output / "side_by_side").rglob("*.mp4"))) == clips
    assert "0 of" in out  # the first run generated every video

    assert evaluate.main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"ba2: {clips} of {clips} videos reused" in out and f"ba4: {clips} of {clips} videos reused" in out


def test_the_summary_says_where_the_run_started_and_where_its_files_are(runs):
    _, first, resumed, _ = runs
    assert "started fresh, batches 0 -> 2" in first.stdout
    assert re.search(
        r"resumed from ep\d+-ba2, batches 2 -> 4, in runs/cosmos_composer/quickstart/quickstart", resumed.stdout
    )
    files = next(line for line in resumed.stdout.splitlines() if line.startswith("run files: "))
    assert re.search(r"last checkpoint checkpoints/ep\d+-ba4\b", files), files
    for part in ("samples samples/ba4", "metrics metrics.jsonl", "loss plot loss.png", "config config.yaml"):
        assert part in files, files


def test_running_it_again_says_it_is_complete_and_how_to_go_on(runs):
    *_, again = runs
    assert "already complete at batch 4" in again.stdout
    assert "raise max_duration" in again.stdout and "new run_name" in again.stdout


def test_no_warning_a_user_cannot_act_on_and_no_filelock_left_in_the_temp_folder(runs):
    root, *results = runs
    for result in results:
        output = result.stdout + result.stderr
        for text in SILENCED:
            assert text not in output, (text, output[-3000:])
    assert not list((root / "tmp").glob("*_filelock"))


# ----------------------------------------------------------------------------- fast
def test_help_after_the_yaml_lists_the_keys_with_defaults_and_comments(capsys):
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with pytest.raises(SystemExit) as exit_:
        train.main([str(REPO / "yamls" / "hdmap.yaml"), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "  max_duration: (required)" in out
    assert "  output_root: null  # Where run folders go" in out
    assert "    train_base: false  # the released recipe trains only the control branch" in out
    assert "      num_frames: 29  # pixel frames per view" in out  # train_loader.dataset, two levels down
    assert "  eval_loader: null  # or a section with the keys of train_loader" in out
    assert "loss_plot" in out and "jsonl" in out


def test_written_configs_never_hold_secrets(tmp_path):
    data = {
        "loggers": {"wandb": {"api_key": "k-123", "project": "p"}},
        "hf_token": "t-123",
        "password": "p-123",
        "nested": [{"client_secret": "s-123"}],
        "control_key": "hdmap_bbox",
        "tokenizer": "tok.pth",
        "token": None,
    }
    for name in ("config.yaml", "network.json"):
        path = write_json_or_yaml(tmp_path / name, data)
        text = path.read_text()
        assert not re.search(r"[ktps]-123", text), text
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        assert loaded["loggers"]["wandb"] == {"api_key": REDACTED, "project": "p"}
        assert loaded["hf_token"] == loaded["password"] == loaded["nested"][0]["client_secret"] == REDACTED
        assert loaded["control_key"] == "hdmap_bbox" and loaded["tokenizer"] == "tok.pth" and loaded["token"] is None


def test_loss_plot_is_on_by_default_and_turns_off_and_memory_monitor_is_left_out_on_cpu():
    import torch

    from cosmos_composer.callbacks.loss_plot import LossPlot
    from cosmos_composer.loggers_and_callbacks import build_callbacks
    from cosmos_composer.run_plan import plan_run

    def names(*overrides):
        cfg = load_config(QUICKSTART, list(overrides))
        return {type(c).__name__ for c in build_callbacks(cfg, plan_run(cfg, world_size=1, has_gpu=False))}

    assert "LossPlot" in names() and "RunSummary" in names()
    assert LossPlot.__name__ not in names("callbacks.loss_plot=null")
    if not torch.cuda.is_available():
        assert "MemoryMonitor" not in names()
