"""`scripts/evaluate.py run` end to end on CPU: two tiny multiview checkpoints, a 2-clip demo MDS set (2 cameras,
5 frames at 32x48), tiny encoders and 2 sampling steps; a run stopped midway, resumed, run once more
(everything reused) and with model-based metrics added (depth si-RMSE per video, FID per checkpoint)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import load_script
from test_evaluation_models import save_tiny_depth_anything, save_tiny_dinov2  # tiny depth and FID models

from cosmos_composer.data.cameras import camera_folder
from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.evaluation import frechet
from cosmos_composer.evaluation import run as run_module
from cosmos_composer.evaluation.models import load_metric_models
from cosmos_composer.evaluation.registry import score_video
from cosmos_composer.evaluation.side_by_side import title_band_height
from cosmos_composer.models import build_network

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ["camera_front_wide_120fov", "camera_cross_left_120fov"]  # two views: multiview at a third of the cost
LABELS = ["base", "tuned"]
TINY = ["--vae", "tiny", "--text-encoder", "tiny", "--steps", "2", "--num-frames", "5", "--no-progress"]
TINY += ["--cameras", ",".join(CAMERAS)]


SCRIPT = load_script("evaluate")


def _decode(path: Path) -> np.ndarray:
    """All frames [T, H, W, 3] of an mp4, read with PyAV (independently of the project's reader)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    """A tiny-multiview network with every weight perturbed (its zero-initialised control projections would make
    the control a no-op), saved as an EMA-only .pt."""
    torch.manual_seed(seed)
    net = build_network("tiny-multiview")
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.02 * torch.randn_like(param))
    path.parent.mkdir(parents=True)
    torch.save({f"net.{key}": value for key, value in net.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_run")
    demo = root / "demo"
    names = make_demo_dataset(demo, samples=2, frames=5, height=32, width=48, progress=False, cameras=CAMERAS)
    convert_to_mds(demo, root / "mds", "multiview-hdmap", min_frames=5, progress=False, cameras=CAMERAS)
    checkpoints = [_tiny_checkpoint(root / label / "model_ema_bf16.pt", seed) for seed, label in enumerate(LABELS)]
    return root, demo, names, checkpoints


def _run_args(inputs, output: Path) -> list[str]:
    root, _, _, checkpoints = inputs
    args = ["run", "--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1], "--labels", ",".join(LABELS)]
    return [str(a) for a in [*args, "--data", root / "mds", "--output", output, *TINY]]


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = SCRIPT.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.mp4")}


def test_run_resumes_after_a_kill_and_reports_each_checkpoint(inputs, tmp_path, capsys, monkeypatch):
    root, demo, names, _ = inputs
    output = tmp_path / "eval"
    args = _run_args(inputs, output)

    # ---- "kill" the run while it writes the second view of the second video: the first video is finished,
    # the second has one view on disk and a half-written temporary file, and no record that it finished.
    write = run_module.write_mp4_atomic
    calls = []

    def killed_on_fourth_file(path, frames, fps):
        calls.append(path)
        if len(calls) == 4:
            Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}").write_bytes(b"half an mp4")
            raise KeyboardInterrupt
        return write(path, frames, fps)

    monkeypatch.setattr(run_module, "write_mp4_atomic", killed_on_fourth_file)
    with pytest.raises(KeyboardInterrupt):
        SCRIPT.main(args)
    capsys.readouterr()
    monkeypatch.setattr(run_module, "write_mp4_atomic", write)
    first = output / "generations" / "base" / "seed2025"
    assert (first / "finished" / f"{names[0]}.json").is_file()
    assert not (first / "finished" / f"{names[1]}.json").exists()
    finished_before = {name: state for name, state in _files_state(first).items() if name.endswith(f"{names[0]}.mp4")}
    assert len(finished_before) == len(CAMERAS)

    # ---- the same command again: the finished video is reused as it is, the rest generated
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert "base: 1 of 2 videos reused" in out and "tuned: 0 of 2 videos reused" in out
    assert "3 videos generated, 1 reused, 4 scored" in out
    after = _files_state(first)
    assert {name: after[name] for name in finished_before} == finished_before  # same inode, same mtime

    # ---- metrics.json: each checkpoint's scores are those of its own videos, recomputed here from the mp4s
    # (decoded with PyAV) against the demo's ground truth
    document = json.loads((output / "metrics.json").read_text())
    assert list(document["checkpoints"]) == LABELS
    metric_names = list(document["higher_is_better"])
    assert metric_names == ["blur_ssim", "edge_f1", "edge_precision", "edge_recall", "tse", "cse"]
    expected = {}
    for label in LABELS:
        for name in names:
            predictions = [
                _decode(output / "generations" / label / "seed2025" / camera_folder(c) / f"{name}.mp4") for c in CAMERAS
            ]
            references = [_decode(demo / "videos" / camera_folder(c) / f"{name}.mp4") for c in CAMERAS]
            expected[label, name] = score_video(predictions, references, ["blur_ssim", "edge_f1"], cameras=CAMERAS)
            recorded = document["checkpoints"][label]["videos"][f"seed2025/{name}"]
            for metric in ("blur_ssim", "edge_f1"):
                assert recorded[metric] == pytest.approx(expected[label, name][metric], abs=1e-9)
    assert expected["base", names[0]]["blur_ssim"] != pytest.approx(expected["tuned", names[0]]["blur_ssim"], abs=1e-4)
    for label in LABELS:
        mean = np.mean([expected[label, name]["blur_ssim"] for name in names])
        assert document["checkpoints"][label]["metrics"]["blur_ssim"] == pytest.approx(mean, abs=1e-9)

    # ---- per_sample.csv: one row per clip and checkpoint, the same values
    with open(output / "per_sample.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(row["sample"], row["checkpoint"]) for row in rows] == [(n, label) for n in names for label in LABELS]
    for row in rows:
        assert float(row["blur_ssim"]) == pytest.approx(expected[row["checkpoint"], row["sample"]]["blur_ssim"])

    # ---- metrics.md: a row per metric with its direction, a column per checkpoint in the order given
    table = (output / "metrics.md").read_text()
    assert table.splitlines()[0] == "| metric | better | base | tuned |"
    blur_row = next(line for line in table.splitlines() if line.startswith("| blur_ssim | higher |"))
    means = [document["checkpoints"][label]["metrics"]["blur_ssim"] for label in LABELS]
    cells = [cell.strip() for cell in blur_row.strip("|").split("|")][2:]
    assert [float(cell.strip("*")) for cell in cells] == pytest.approx(means, abs=1e-4)
    assert cells[int(np.argmax(means))].startswith("**")  # the higher blur SSIM is the better one
    assert "| tse | lower |" in table

    # ---- side by side: ground truth | control | base | tuned, the front-wide camera, frame for frame
    band = title_band_height(48)
    for name in names:
        tiled = _decode(output / "side_by_side" / "seed2025" / f"{name}.mp4")
        assert tiled.shape == (5, band + 32, 4 * 48, 3)
        tiles = [tiled[:, band:, column * 48 : (column + 1) * 48].astype(float) for column in range(4)]
        truth = _decode(demo / "videos" / camera_folder(CAMERAS[0]) / f"{name}.mp4")
        control = _decode(demo / "control_input_hdmap_bbox" / camera_folder(CAMERAS[0]) / f"{name}.mp4")
        generated = [
            _decode(output / "generations" / label / "seed2025" / camera_folder(CAMERAS[0]) / f"{name}.mp4")
            for label in LABELS
        ]
        for tile, source in zip(tiles, [truth, control, *generated]):
            assert np.abs(tile - source).mean() < 6  # H.264 once more
        assert np.abs(tiles[2] - generated[1]).mean() > 3 * np.abs(tiles[2] - generated[0]).mean()

    # ---- once more: everything is reused, no network is loaded, no score computed again
    monkeypatch.setattr(run_module, "load_network", lambda *a, **k: pytest.fail("a network was loaded"))
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert "0 videos generated, 4 reused, 0 scored" in out
    assert _files_state(first) == after

    # ---- model-based metrics added later: their models load, only they are computed, the videos are reused;
    # FID is one value per checkpoint over all its videos (both clips, both views) against the ground truths
    depth_model = save_tiny_depth_anything(tmp_path / "tiny_depth")
    fid_model = save_tiny_dinov2(tmp_path / "tiny_dinov2")
    models = ["--depth-model", str(depth_model), "--fid-model", str(fid_model)]
    code, out, err = _run([*args, "--metrics", "blur_ssim,depth_si_rmse,fid", *models], capsys)
    assert code == 0, err
    assert "0 videos generated, 4 reused, 4 scored" in out and "metric model depth_model" in out
    assert "metric model fid_model" in out
    with_depth = json.loads((output / "metrics.json").read_text())
    for label in LABELS:
        for name in names:
            scores = with_depth["checkpoints"][label]["videos"][f"seed2025/{name}"]
            assert scores["blur_ssim"] == document["checkpoints"][label]["videos"][f"seed2025/{name}"]["blur_ssim"]
            assert np.isfinite(scores["depth_si_rmse"]) and scores["depth_si_rmse"] >= 0
            assert "fid" not in scores
    extractor = load_metric_models(["fid"], fid_model=str(fid_model)).fid
    truths = [_decode(demo / "videos" / camera_folder(c) / f"{name}.mp4") for name in names for c in CAMERAS]
    fids = []
    for label in LABELS:
        generated = [
            _decode(output / "generations" / label / "seed2025" / camera_folder(c) / f"{name}.mp4")
            for name in names
            for c in CAMERAS
        ]
        fids.append(frechet.fid(generated, truths, extractor))
        assert with_depth["checkpoints"][label]["metrics"]["fid"] == pytest.approx(fids[-1], rel=1e-6)
    assert fids[0] != pytest.approx(fids[1], rel=1e-3)
    table = (output / "metrics.md").read_text()
    assert "| depth_si_rmse | lower |" in table
    fid_row = next(line for line in table.splitlines() if line.startswith("| fid | lower |"))
    cells = [cell.strip() for cell in fid_row.strip("|").split("|")][2:]
    assert [float(cell.strip("*")) for cell in cells] == pytest.approx(fids, abs=1e-4)
    assert cells[int(np.argmin(fids))].startswith("**")  # the lower FID is the better one
    with open(output / "per_sample.csv") as file:
        assert next(csv.reader(file)) == ["sample", "seed", "checkpoint", "blur_ssim", "depth_si_rmse"]

    # ---- other generation settings are refused, not mixed with the videos there
    code, out, err = _run([*args, "--steps", "3"], capsys)
    assert code == 2 and "steps: 2 then, 3 now" in err and len(err.strip().splitlines()) == 1, err


def test_bad_inputs_stop_in_one_line_before_any_model_loads(inputs, tmp_path, capsys, monkeypatch):
    root, _, _, checkpoints = inputs
    monkeypatch.setattr(run_module, "load_network", lambda *a, **k: pytest.fail("a network was loaded"))
    monkeypatch.setattr(run_module, "build_generation_encoders", lambda *a, **k: pytest.fail("encoders built"))
    empty = tmp_path / "empty"
    (empty / "videos").mkdir(parents=True)
    good = ["--checkpoint", str(checkpoints[0]), "--data", str(root / "mds"), "--output", str(tmp_path / "out")]
    cases = {
        "missing checkpoint": (["--checkpoint", str(tmp_path / "nope.pt"), *good[2:]], "nope.pt does not exist"),
        "empty data": ([*good[:3], str(empty), *good[4:]], "holds no clip"),
        "not a dataset": ([*good[:3], str(tmp_path), *good[4:]], "neither index.json"),
        "unknown metric": ([*good, "--metrics", "blur_ssim,sharpness"], "unknown metric(s) sharpness"),
        "set-level metric without its model": ([*good, "--metrics", "fid"], "fid needs --fid-model (fid_model)"),
        "missing metric model": (
            [*good, "--metrics", "depth_si_rmse", "--depth-model", str(tmp_path / "no_depth")],
            "no_depth does not exist",
        ),
        "bad seeds": ([*good, "--seeds", "1,x"], "--seeds"),
        "no clip asked for": ([*good, "--max-clips", "0"], "--max-clips 0: give at least 1"),
    }
    for case, (args, message) in cases.items():
        code, out, err = _run(["run", *args, *TINY], capsys)
        assert code == 2, case
        assert message in err, (case, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (case, err)


def test_labels_tell_the_checkpoints_apart_and_the_table_bolds_the_better_direction():
    labels = run_module.checkpoint_labels(
        ["runs/a/model_ema_bf16.pt", "runs/b/model_ema_bf16.pt", "hf://nvidia/repo/released/model_ema_bf16.pt@f00"]
    )
    assert labels == ["a/model_ema_bf16", "b/model_ema_bf16", "released/model_ema_bf16"]
    assert run_module.checkpoint_labels(["x/one.pt", "y/two.pt"], ["base", "tuned"]) == ["base", "tuned"]
    with pytest.raises(ValueError, match="more than once"):
        run_module.checkpoint_labels(["x.pt", "x.pt"])

    summaries = {
        "base": {"blur_ssim": {"mean": 0.5, "count": 2}, "tse": {"mean": 2.0, "count": 2}},
        "tuned": {"blur_ssim": {"mean": 0.7, "count": 2}, "tse": {"mean": 1.5, "count": 1}},
    }
    rows = run_module.markdown_table(summaries, ["blur_ssim", "tse"], videos=2).splitlines()
    assert rows[0] == "| metric | better | base | tuned |"
    assert rows[2] == "| blur_ssim | higher | 0.5000 | **0.7000** |"
    assert rows[3] == "| tse | lower | 2.0000 | **1.5000** (1 of 2) |"
