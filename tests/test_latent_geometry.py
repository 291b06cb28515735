"""The latent geometry and the --dtype names live in leaf modules that the config and the builders import at no
cost (cosmos_composer/latent_geometry.py, cosmos_composer/dtypes.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cosmos_composer.dtypes import DTYPES, default_dtype


def test_the_latent_geometry_module_imports_nothing():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, cosmos_composer.latent_geometry; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "torch" not in loaded and "numpy" not in loaded
    assert [name for name in loaded if name.startswith("cosmos_composer")] == [
        "cosmos_composer",
        "cosmos_composer.latent_geometry",
    ]


def test_the_default_dtype_is_bf16_on_a_gpu_and_fp32_elsewhere_unless_named():
    assert default_dtype("cuda:1") is torch.bfloat16 and default_dtype(torch.device("cuda")) is torch.bfloat16
    assert default_dtype("cpu") is torch.float32
    assert default_dtype("cpu", "bf16") is torch.bfloat16 and default_dtype("cuda", "fp32") is torch.float32
    assert list(DTYPES) == ["bf16", "fp32"]  # the order --dtype lists its choices in
    with pytest.raises(ValueError, match=r"dtype 'fp16' is not one of \['bf16', 'fp32'\]"):
        default_dtype("cpu", "fp16")
