"""The sample-video callback's scores: each sample against its own clip, on a fixed held-out set, logged and plotted.

The callback runs on a real multiview dataset (the demo clips at 32x48, converted to MDS with cached latent
columns); the network is left out: the sampler returns the item's control latents, and the "VAE" decodes them to
the item's own frames read straight from the demo's mp4 files. So every sample is its clip's ground truth, and a
callback that scores against the right frames gets 1.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from composer.devices import DeviceCPU
from matplotlib.image import imread

from cosmos_composer.callbacks import sample_videos
from cosmos_composer.callbacks.loss_plot import LossPlot
from cosmos_composer.callbacks.sample_videos import SampleVideos, score_sample
from cosmos_composer.data.cameras import DEFAULT_CAMERAS, camera_folder
from cosmos_composer.data.convert import convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.precompute import Precomputer
from cosmos_composer.data.video import decode_frames
from cosmos_composer.loggers import JSONLinesLogger

F, H, W = 5, 32, 48  # the demo clips are written at the training size: no resize between mp4 and reference
SAMPLES = 3
LATENT_T, LATENT_H, LATENT_W = 2, 4, 6
SCORES = ("blur_ssim", "edge_f1", "edge_precision", "edge_recall")


class ZeroLatentVAE:
    """Stands in for the VAE of ``--precompute latents``: latents of the right shape (their values are unused)."""

    def encode(self, video_V_3_F_H_W: torch.Tensor) -> torch.Tensor:
        return torch.zeros(video_V_3_F_H_W.shape[0], 16, LATENT_T, LATENT_H, LATENT_W)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two demo datasets (train: seed 0, eval: seed 1) as MDS with cached latent columns."""
    root = tmp_path_factory.mktemp("sample_metrics")
    folders = {}
    for split, seed in (("train", 0), ("eval", 1)):
        raw = root / f"{split}_raw"
        make_demo_dataset(
            raw, "multiview-hdmap", samples=SAMPLES, frames=F, height=H, width=W, seed=seed, progress=False
        )
        precomputer = Precomputer(height=H, width=W, num_frames=F, vae=ZeroLatentVAE())
        convert_to_mds(
            raw, root / f"{split}_mds", "multiview-hdmap", min_frames=F, precomputer=precomputer, progress=False
        )
        folders[split] = raw
    return SimpleNamespace(root=root, raw=folders)


def source_frames(raw: Path, name: str) -> np.ndarray:
    """A clip's 7 views read straight from the demo's mp4 files with PyAV: uint8 ``[7*F, H, W, 3]``."""
    views = [
        decode_frames(raw / "videos" / camera_folder(camera) / f"{name}.mp4", 0, F)[0] for camera in DEFAULT_CAMERAS
    ]
    return np.concatenate(views)


class RecordingDataset:
    """A dataset that records which items were read (and delegates everything to the real one)."""

    def __init__(self, dataset: TransferStreamingDataset):
        self.dataset = dataset
        self.read: list[int] = []

    @property
    def num_samples(self) -> int:
        return self.dataset.num_samples

    def __getitem__(self, index: int):
        self.read.append(index)
        return self.dataset[index]

    def reference_video(self, index: int) -> torch.Tensor:
        return self.dataset.reference_video(index)


class NoNetworkModel:
    """``encode_batch`` puts the item's number into its control latents; the sampler below returns them."""

    def __init__(self, names: list[str]):
        self.names = names
        self.net = torch.nn.Module()  # a rig without mapped cameras; its patch embedding is what the callback counts
        self.net.config = SimpleNamespace(camera_origins=(), num_heads=2, patch_temporal=1)
        self.net.context_parallel = None
        self.net.x_embedder = torch.nn.Identity()
        self.encoders = SimpleNamespace(vae=object(), text_embedder=None)

    def encode_batch(self, batch: dict) -> dict:
        assert "video_latent" in batch or "video" in batch
        num_views = int(batch["sample_n_views"][0])
        latents = torch.full(
            (1, 16, num_views * LATENT_T, LATENT_H, LATENT_W), float(self.names.index(batch["sample_name"][0]))
        )
        return dict(
            x0=latents,
            control=latents,
            context=torch.zeros(1, num_views * 512, 8),
            view_indices_B_T=None,
            padding_mask=torch.zeros(1, 1, H, W),
            num_views=num_views,
        )


def dataset(folder: Path, decode_video: bool) -> RecordingDataset:
    return RecordingDataset(
        TransferStreamingDataset(local=str(folder), num_frames=F, height=H, width=W, decode_video=decode_video)
    )


def run_callback(
    data, monkeypatch, tmp_path, *, with_eval: bool, decode_video: bool = False, batches=(20, 40), **kwargs
):
    """Run the callback at `batches` on a fake trainer state; returns what it read, logged and drew."""
    train = dataset(data.root / "train_mds", decode_video)
    evaluation = dataset(data.root / "eval_mds", decode_video) if with_eval else None
    raw = data.raw["eval" if with_eval else "train"]
    names = [f"demo_{i:04d}" for i in range(SAMPLES)]
    truth = {i: source_frames(raw, name) for i, name in enumerate(names)}

    def sample(net, conditioning, **_):
        return conditioning.control  # the item's number

    def decode(vae, latents, num_views):
        return truth[int(latents.flatten()[0])].copy()  # the item's own frames: a perfect sample

    monkeypatch.setattr(sample_videos.sampler, "sample", sample)
    monkeypatch.setattr(sample_videos, "decode_sample", decode)
    monkeypatch.setattr(
        sample_videos, "negative_context", lambda net, embedder, context, *_, **__: torch.zeros_like(context)
    )

    metrics_file = tmp_path / "metrics.jsonl"
    jsonl = JSONLinesLogger(str(metrics_file))
    logged = []

    def log_metrics(metrics, step=None):
        logged.append((step, dict(metrics)))
        jsonl.log_metrics(metrics, step=step)

    logger = SimpleNamespace(destinations=[jsonl], log_metrics=log_metrics)
    plot = LossPlot(str(tmp_path / "loss.png"))
    evaluators = [SimpleNamespace(dataloader=SimpleNamespace(dataloader=SimpleNamespace(dataset=evaluation)))]
    state = SimpleNamespace(
        model=NoNetworkModel(names),
        train_dataloader=SimpleNamespace(dataset=train),
        evaluators=evaluators if with_eval else [],
        device=DeviceCPU(),
        precision="fp32",
        callbacks=[plot],
        run_name="test",
        timestamp=None,
    )
    kwargs = {"num_samples": 2, "seeds": [0], **kwargs}
    callback = SampleVideos(every_n_batches=20, output_dir=str(tmp_path / "samples"), **kwargs)
    callback.fit_start(state, logger)
    reads = []
    for batch in batches:
        state.timestamp = SimpleNamespace(batch=batch)
        before = (len(train.read), len(evaluation.read) if evaluation else 0)
        callback.batch_end(state, logger)
        reads.append({"train": train.read[before[0] :], "eval": evaluation.read[before[1] :] if evaluation else []})
    return SimpleNamespace(callback=callback, reads=reads, logged=logged, plot=plot, metrics_file=metrics_file)


# ----------------------------------------------------------------------------- scoring
def test_a_sample_identical_to_its_ground_truth_scores_one(data):
    clip = source_frames(data.raw["train"], "demo_0000")
    scores = score_sample(clip, clip, len(DEFAULT_CAMERAS), cameras=list(DEFAULT_CAMERAS))
    assert list(scores) == [*SCORES, "tse", "cse"]  # multiview: the Sampson errors too
    for name in SCORES:
        assert scores[name] == pytest.approx(1.0, abs=1e-12), name
    single = score_sample(clip[:F], clip[:F], 1)
    assert list(single) == list(SCORES) and single["blur_ssim"] == pytest.approx(1.0, abs=1e-12)
    # Another clip (or the clip's own control drawing) does not: the scores can tell samples apart.
    other = source_frames(data.raw["train"], "demo_0001")
    assert score_sample(other, clip, len(DEFAULT_CAMERAS), names=SCORES)["blur_ssim"] < 0.9
    # Views are scored against their own view: the views in another order score below 1.
    swapped = np.concatenate(np.split(clip, 7)[::-1])
    assert score_sample(swapped, clip, 7, names=["edge_f1"])["edge_f1"] < 0.9


@pytest.mark.parametrize("decode_video", [False, True], ids=["cached_latents", "decoded_video"])
def test_the_callback_scores_each_sample_against_its_clips_own_frames(data, monkeypatch, tmp_path, decode_video):
    run = run_callback(data, monkeypatch, tmp_path, with_eval=False, decode_video=decode_video, seeds=[0, 1])
    assert [step for step, _ in run.logged] == [20, 40]
    for _, metrics in run.logged:
        for name in SCORES:
            assert metrics[f"metrics/samples/{name}"] == pytest.approx(1.0, abs=1e-12), name
            assert metrics[f"metrics/samples/{name}_std"] == pytest.approx(0.0, abs=1e-12), name
        assert "metrics/samples/tse" in metrics and "metrics/samples/cse" in metrics  # multiview
    # Every call wrote its 2 items x 2 seeds: 7 views and the overview each.
    assert len(list((tmp_path / "samples" / "ba40").glob("*.mp4"))) == 2 * 2 * 8


def test_the_reference_is_the_items_video_decoded_even_from_cached_latents(data):
    cached = TransferStreamingDataset(
        local=str(data.root / "train_mds"), num_frames=F, height=H, width=W, decode_video=False
    )
    item = cached[1]
    assert "video" not in item  # the training item has latents only
    reference = sample_videos.reference_frames(cached, 1, item)
    assert reference.dtype == np.uint8 and reference.shape == (7 * F, H, W, 3)
    np.testing.assert_array_equal(reference, source_frames(data.raw["train"], "demo_0001"))


# ----------------------------------------------------------------------------- the held-out set
def test_every_call_samples_the_same_held_out_items(data, monkeypatch, tmp_path):
    run = run_callback(data, monkeypatch, tmp_path, with_eval=False, batches=(20, 40, 60))
    assert [reads["train"] for reads in run.reads] == [[0, 1]] * 3  # num_samples=2 of the 3 items, every call
    assert [len(metrics) for _, metrics in run.logged] == [2 * 6] * 3  # mean and std of 6 metrics per call
    callback = SampleVideos(num_samples=5)
    assert callback.held_out_items(3) == [0, 1, 2]  # a smaller dataset: all of it


def test_the_eval_loaders_items_are_sampled_when_the_run_has_one(data, monkeypatch, tmp_path):
    run = run_callback(data, monkeypatch, tmp_path, with_eval=True)
    assert [reads["eval"] for reads in run.reads] == [[0, 1], [0, 1]]
    assert [reads["train"] for reads in run.reads] == [[], []]
    # The eval clips are the ground truth (run_callback's perfect samples are the eval clips): all 1.
    assert run.logged[-1][1]["metrics/samples/edge_f1"] == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- logging and plotting
def test_metrics_reach_the_jsonl_once_per_call_and_loss_png_gets_a_panel(data, monkeypatch, tmp_path):
    run = run_callback(data, monkeypatch, tmp_path, with_eval=False, metrics=["blur_ssim", "edge_f1"])
    records = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [record["step"] for record in records] == [20, 40]
    assert set(records[0]) == {
        "step",
        "metrics/samples/blur_ssim",
        "metrics/samples/blur_ssim_std",
        "metrics/samples/edge_f1",
        "metrics/samples/edge_f1_std",
    }
    # The plot was redrawn after the sample call: one panel (no loss in this file), the two scores.
    assert run.plot.panels == [["metrics/samples/blur_ssim", "metrics/samples/edge_f1"]]
    assert run.plot.written is not None and imread(run.plot.written).shape[0] == 350


def test_no_metrics_means_samples_without_scores(data, monkeypatch, tmp_path):
    run = run_callback(data, monkeypatch, tmp_path, with_eval=False, metrics=[], batches=(20,))
    assert run.logged == [] and not run.metrics_file.exists() and run.plot.written is None
    assert len(list((tmp_path / "samples" / "ba20").glob("*.mp4"))) == 2 * 8  # the videos are still written


def test_loss_png_has_a_loss_panel_and_a_panel_per_metric_direction(tmp_path):
    metrics_file = tmp_path / "metrics.jsonl"
    lines = [{"step": step, "loss/train/total": 0.1} for step in range(4)]
    plot = LossPlot(str(tmp_path / "loss.png"))
    metrics_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot.draw_file(metrics_file)
    assert plot.panels == [["loss/train/total"]] and imread(plot.path).shape[0] == 450  # as before
    lines += [
        {"step": 2, "metrics/samples/edge_f1": 0.4, "metrics/samples/edge_f1_std": 0.1, "metrics/samples/tse": 1.5},
        {"step": 4, "metrics/samples/edge_f1": 0.5, "metrics/samples/edge_f1_std": 0.1, "metrics/samples/tse": "nan"},
    ]
    metrics_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot.draw_file(metrics_file)
    assert plot.panels == [["loss/train/total"], ["metrics/samples/edge_f1"], ["metrics/samples/tse"]]
    assert imread(plot.path).shape[0] == 450 + 2 * 350


def test_a_nonfinite_score_is_logged_as_is_and_warned_about_once(caplog):
    callback = SampleVideos()
    logged = []
    logger = SimpleNamespace(destinations=[], log_metrics=lambda metrics, step=None: logged.append((step, metrics)))
    state = SimpleNamespace(callbacks=[])
    scores = {
        "item 0 (demo_0000) seed 0": {"edge_f1": 0.5, "tse": 2.0},
        "item 1 (demo_0001) seed 0": {"edge_f1": 0.7, "tse": float("nan")},
    }
    with caplog.at_level(logging.WARNING, logger=sample_videos.__name__):
        callback._log_scores(state, logger, 20, scores)
        callback._log_scores(state, logger, 40, scores)
    (step, metrics), _ = logged
    assert step == 20 and metrics["metrics/samples/edge_f1"] == pytest.approx(0.6)
    assert metrics["metrics/samples/edge_f1_std"] == pytest.approx(0.1)
    assert math.isnan(metrics["metrics/samples/tse"]) and math.isnan(metrics["metrics/samples/tse_std"])
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert "tse of item 1 (demo_0001) seed 0 at batch 20 is nan" in warnings[0]


def test_metric_names_the_callback_cannot_compute_are_refused():
    with pytest.raises(ValueError, match=r"callbacks.sample_videos.metrics.*fid.*need a model.*scripts/evaluate.py"):
        SampleVideos(metrics=["edge_f1", "fid"])
    with pytest.raises(ValueError, match=r"callbacks.sample_videos.metrics: unknown metric\(s\) ssim"):
        SampleVideos(metrics=["ssim"])
    assert SampleVideos(metrics=[]).metrics == [] and SampleVideos().metrics is None
    assert SampleVideos(metrics="edge_f1").metrics == ["edge_f1"]
