"""Generation refuses garbage before anything heavy runs: numbers out of range (NaN too) as one-line errors
naming the flag (generate.py and `evaluate.py run`), views of mixed sizes, and it names the `lora_adapter/`
beside a LoRA export, which it does not load."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_composer import generate as gen
from cosmos_composer.checkpoint.export import LORA_ADAPTER_FOLDER
from cosmos_composer.data.cameras import DEFAULT_CAMERAS
from cosmos_composer.data.video import write_mp4
from cosmos_composer.models import build_network

REPO = Path(__file__).resolve().parents[1]
TINY = ["--vae", "tiny", "--text-encoder", "tiny", "--no-progress"]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _load_script("generate")
EVALUATE = _load_script("evaluate")


def _no_model(*args, **kwargs):
    raise AssertionError("the network was built before the options were checked")


def _frames(height: int, width: int, num_frames: int = 5) -> np.ndarray:
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[:, : height // 2] = 200
    return frames


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--guidance", "nan", "--guidance nan: must be a finite number in [0, 7]"),
        ("--guidance", "-1", "--guidance -1.0: must be a finite number in [0, 7]"),
        ("--guidance", "8", "--guidance 8.0: must be a finite number in [0, 7]"),
        ("--shift", "nan", "--shift nan: must be a finite number > 0"),
        ("--shift", "0", "--shift 0.0: must be a finite number > 0"),
        ("--shift", "inf", "--shift inf: must be a finite number > 0"),
        ("--control-weight", "2", "--control-weight 2.0: must be a finite number in [0, 1]"),
        ("--control-weight", "inf", "--control-weight inf: must be a finite number in [0, 1]"),
        ("--steps", "0", "--steps 0: must be a whole number >= 1"),
        ("--seed", "-1", "--seed -1: must be a whole number in [0, 4294967295]"),
        ("--fps", "nan", "--fps nan: must be a finite number > 0"),
        ("--num-frames", "0", "--num-frames 0: must be a whole number >= 1"),
        ("--height", "0", "--height 0: must be a whole number >= 1"),
        ("--width", "-16", "--width -16: must be a whole number >= 1"),
        ("--num-conditional-frames", "-1", "--num-conditional-frames -1: must be a whole number >= 0"),
    ],
)
def test_a_number_out_of_range_is_one_line_before_the_model(flag, value, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen, "load_network", _no_model)
    code = GENERATE.main(
        [
            "--checkpoint",
            "c.pt",
            "--control",
            "c.mp4",
            "--prompt",
            "p",
            "--output",
            str(tmp_path / "o.mp4"),
            flag,
            value,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {expected}. Fix: pass a value ") and err.count("\n") == 1, err


def test_every_number_option_has_a_range_and_its_bounds_are_accepted():
    hints = typing.get_type_hints(gen.GenerateOptions)
    numbers = [
        option
        for option in dataclasses.fields(gen.GenerateOptions)
        if gen._value_type(hints[option.name]) in (int, float)
    ]
    assert {option.name for option in numbers} >= {"guidance", "shift", "control_weight", "steps", "seed", "fps"}
    assert all(isinstance(option.metadata.get("valid"), gen.Interval) for option in numbers)
    required = dict(checkpoint="c.pt", control="c.mp4", output="o.mp4", prompt="p")
    for bounds in (
        dict(guidance=0.0, control_weight=0.0, steps=1, seed=0, shift=1e-3),
        dict(guidance=7.0, control_weight=1.0, seed=2**32 - 1, fps=0.5),
    ):
        gen.check_options(gen.GenerateOptions(**required, **bounds))


def test_evaluate_run_checks_the_generation_flags_before_the_data(tmp_path, capsys):
    run = ["run", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(tmp_path / "missing"), "--no-progress"]
    assert EVALUATE.main([*run, "--shift", "nan"]) == 2
    assert capsys.readouterr().err.startswith("error: --shift nan: must be a finite number > 0")
    assert EVALUATE.main([*run, "--seeds", "3,-1"]) == 2
    assert "--seeds '3,-1': [-1] out of range" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_multiview(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "tiny_ema_bf16.pt"
    torch.save({f"net.{k}": v for k, v in build_network("tiny-multiview").state_dict().items()}, path)
    return path


def test_views_of_mixed_sizes_are_refused_or_resized_to_the_size_given(
    tiny_multiview, tmp_path, monkeypatch, capsys, caplog
):
    views = tmp_path / "views"
    for camera in DEFAULT_CAMERAS[:-1]:
        write_mp4(views / f"{camera}.mp4", _frames(32, 48), fps=10)
    write_mp4(views / f"{DEFAULT_CAMERAS[-1]}.mp4", _frames(48, 48), fps=10)
    args = ["--checkpoint", tiny_multiview, "--control", views, "--prompt", "p", "--steps", "1", *TINY]
    code = GENERATE.main([str(a) for a in [*args, "--output", tmp_path / "refused.mp4"]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{DEFAULT_CAMERAS[0]}.mp4: 32 x 48" in err and f"{DEFAULT_CAMERAS[-1]}.mp4: 48 x 48" in err
    assert "pass --height and --width" in err and not (tmp_path / "refused.mp4").exists()

    # Given a size, every view is resized to it, and the stretched one is named (sampling is not this test's).
    def stop(*args, **kwargs):
        raise gen.GenerationError("stopped after the size check")

    monkeypatch.setattr(gen, "read_views", stop)
    with caplog.at_level(logging.WARNING):
        code = GENERATE.main([str(a) for a in [*args, "--height", 32, "--width", 48, "--output", tmp_path / "o.mp4"]])
    assert code == 2 and "stopped after the size check" in capsys.readouterr().err
    stretched = [r.getMessage() for r in caplog.records if "changes the aspect ratio" in r.getMessage()]
    assert stretched == [
        f"--control: resizing to 32 x 48 changes the aspect ratio of {DEFAULT_CAMERAS[-1]}.mp4: 48 x 48"
    ]


@pytest.mark.parametrize("with_adapter", [True, False])
def test_a_lora_export_names_its_adapter_folder_before_the_model(with_adapter, tmp_path, monkeypatch, caplog, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model_ema_bf16.pt").write_bytes(b"weights")
    if with_adapter:
        (export / LORA_ADAPTER_FOLDER).mkdir()
    monkeypatch.setattr(gen, "load_network", _no_model)
    args = ["--checkpoint", export / "model_ema_bf16.pt", "--control", "c.mp4", "--prompt", "p", "--output", "o.mp4"]
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="network was built"):
        GENERATE.main([str(a) for a in args])
    notes = [r.getMessage() for r in caplog.records if LORA_ADAPTER_FOLDER in r.getMessage()]
    if with_adapter:
        assert len(notes) == 1 and str(export / LORA_ADAPTER_FOLDER) in notes[0]
        assert "export the checkpoint again without --no-merge" in notes[0]
    else:
        assert notes == []
