"""`convert_to_mds.py --precompute`: the encoders and the text projection load as training loads them.

- `--vae` / `--text-encoder` / `--crossattn-proj` take hf:// URIs, resolved from a hand-built local Hugging Face
  cache with HF_HUB_OFFLINE=1; a URI missing from it is refused in one line with the `hf download` command.
- Text is cached projected by the crossattn_proj of `--crossattn-proj`, else of the `--config` YAML's load_path;
  raw text needs `--raw-text`, and without either the conversion is refused with the size raw text would take.
- The size line printed before writing adds up the mp4 files and the cached columns; the cached bytes are
  checked against arithmetic written here and against what the shards hold.

Nothing is downloaded: tiny encoders, a tiny checkpoint and 2-sample demo datasets at 32x48, 5 frames (the
encoders run on the single-view one: the tiny VAE and text encoder take about a second per view on a loaded
CPU).
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import QUICKSTART, load_script, use_offline_hf_cache, write_hf_cache
from omegaconf import OmegaConf
from streaming import StreamingDataset
from torch import nn

from cosmos_composer.data import mds
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.output import human_size
from cosmos_composer.data.precompute import Precomputer, crossattn_proj_fingerprint, latent_bytes, text_bytes
from cosmos_composer.encoders.vae import WanVAE

H, W, F, SAMPLES, VIEWS = 32, 48, 5, 2, 7
COMMIT = "c" * 40
TINY_TEXT_DIM, PROJECTED_DIM = 96, 32  # Reason1TextEmbedder.tiny(): 3 layers x 32; the tiny presets' 32


convert = load_script("convert_to_mds")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    for layout in ("multiview-hdmap", "singleview"):
        make_demo_dataset(root / layout, layout, samples=SAMPLES, frames=F, height=H, width=W, seed=0, progress=False)
    return {layout: root / layout for layout in ("multiview-hdmap", "singleview")}


@pytest.fixture(scope="module")
def tiny_vae_folder(tmp_path_factory) -> Path:
    """A tiny VAE in diffusers format (other weights than build_encoders' `tiny`)."""
    folder = tmp_path_factory.mktemp("vae") / "vae"
    WanVAE.tiny(seed=3).vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def projection_file(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A tiny Transfer checkpoint file (bf16, as released) and the projection its crossattn_proj makes."""
    torch.manual_seed(1)
    weight, bias = torch.randn(PROJECTED_DIM, TINY_TEXT_DIM).bfloat16(), torch.randn(PROJECTED_DIM).bfloat16()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_ema_bf16.pt"
    torch.save({"net.crossattn_proj.0.weight": weight, "net.crossattn_proj.0.bias": bias, "net.x": torch.ones(2)}, path)
    projection = nn.Sequential(nn.Linear(TINY_TEXT_DIM, PROJECTED_DIM), nn.GELU())
    projection[0].load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return path, projection


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_vae_folder, projection_file):
    """HF_HUB_OFFLINE=1 on a local cache holding acme/tiny-vae (a diffusers folder) and acme/transfer (a
    checkpoint); any network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    cache = use_offline_hf_cache(monkeypatch, tmp_path / "hf_home")
    vae_files = {f"vae/{path.name}": path.read_bytes() for path in tiny_vae_folder.iterdir()}
    write_hf_cache(cache, "acme/tiny-vae", {COMMIT: vae_files}, {"main": COMMIT})
    checkpoint = {"auto/tiny_ema_bf16.pt": projection_file[0].read_bytes()}
    write_hf_cache(cache, "acme/transfer", {COMMIT: checkpoint}, {"main": COMMIT})
    return cache


def argv(source: Path, output: Path, *extra: str) -> list[str]:
    """The converter's arguments for the demo dataset ``source`` (single view: with its depth videos)."""
    layout = source.name
    control = ["--control-key", "depth"] if layout == "singleview" else []
    return [
        "--layout", layout, "--input", str(source), "--output", str(output), "--min-frames", str(F), *control,
        "--num-frames", str(F), "--height", str(H), "--width", str(W), "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip


def mp4_bytes_per_sample(source: Path) -> float:
    """What the converted sample's mp4 files take: the videos and the controls (hdmap or depth) of ``source``."""
    folders = ("videos", "control_input_hdmap_bbox", "depth")
    return sum(path.stat().st_size for folder in folders for path in (source / folder).rglob("*.mp4")) / SAMPLES


def samples(folder: Path) -> list[dict]:
    """Every sample, read with Streaming's own dataset."""
    dataset = StreamingDataset(local=str(folder), batch_size=1)
    return [dataset[index] for index in range(len(dataset))]


def size_line(caplog) -> str:
    lines = [message for message in caplog.messages if message.startswith("dataset size:")]
    assert len(lines) == 1, caplog.messages
    return lines[0]


def test_vae_from_an_hf_uri_offline_equals_the_local_folder(sources, tiny_vae_folder, hf_cache, tmp_path):
    source = sources["singleview"]
    hf_uri = "hf://acme/tiny-vae/vae"  # a folder of the repo: a diffusers VAE
    assert convert.main(argv(source, tmp_path / "hf", "--precompute", "latents", "--vae", hf_uri)) == 0
    assert convert.main(argv(source, tmp_path / "local", "--precompute", "latents", "--vae", str(tiny_vae_folder))) == 0
    assert convert.main(argv(source, tmp_path / "tiny", "--precompute", "latents", "--vae", "tiny")) == 0
    from_hf, from_local, from_tiny = samples(tmp_path / "hf"), samples(tmp_path / "local"), samples(tmp_path / "tiny")
    assert len(from_hf) == SAMPLES
    for hf_row, local_row, tiny_row in zip(from_hf, from_local, from_tiny):
        latent = hf_row[mds.VIDEO_LATENT]
        assert latent.shape == (16, 2, H // 8, W // 8) and np.abs(latent).max() > 0
        for column in (mds.VIDEO_LATENT, mds.CONTROL_LATENT):
            np.testing.assert_array_equal(hf_row[column], local_row[column])
        assert not np.array_equal(latent, tiny_row[mds.VIDEO_LATENT])  # the cache's weights, not `tiny`'s


@pytest.mark.parametrize(
    "flags, uri",
    [
        (["--precompute", "latents", "--vae"], "hf://acme/tiny-vae/tokenizer.pth"),
        (["--precompute", "text", "--raw-text", "--text-encoder"], "hf://acme/reason1"),
        (["--precompute", "text", "--text-encoder", "tiny", "--crossattn-proj"], "hf://acme/transfer/other.pt"),
    ],
)
def test_an_uncached_uri_is_one_line_with_the_download_command(sources, hf_cache, tmp_path, capsys, flags, uri):
    output = tmp_path / "mds"
    assert convert.main(argv(sources["multiview-hdmap"], output, *flags, uri)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    repo, _, filename = uri.removeprefix("hf://acme/").partition("/")
    assert err.startswith(f"error: {flags[-1]}: {uri} is not in the local Hugging Face cache")
    assert f"`hf download acme/{repo}{' ' + filename if filename else ''}`" in err and "HF_HUB_OFFLINE=1" in err
    assert not output.exists()


def test_cached_sizes_match_the_arithmetic_and_the_shards(sources, projection_file, tmp_path, caplog):
    # The 2B at 720p, 29 frames: latents [16, 7*8, 90, 160], text [7*512, 1024] projected, [7*512, 100352] raw.
    assert latent_bytes(7, 29, 720, 1280) == 16 * 7 * 8 * 90 * 160 * 2
    assert text_bytes(7, 1024) == 7 * 512 * 1024 * 2
    assert text_bytes(7, 100352) == 7 * 512 * 100352 * 2

    source = sources["singleview"]
    mp4 = mp4_bytes_per_sample(source)
    latents = 2 * 16 * 2 * (H // 8) * (W // 8) * 2  # video and control, 1 view, t = 1 + (5-1)//4 = 2
    text = 512 * PROJECTED_DIM * 2  # (raw text: test_crossattn_proj_from_an_hf_uri_and_from_the_yaml_load_path)
    flags = ["--precompute", "latents,text", "--vae", "tiny", "--text-encoder", "tiny"]
    assert convert.main(argv(source, tmp_path / "mds", *flags, "--crossattn-proj", str(projection_file[0]))) == 0
    per_sample = mp4 + latents + text
    assert size_line(caplog) == (
        f"dataset size: about {human_size(per_sample)} per sample (mp4 {human_size(mp4)}, latents "
        f"{human_size(latents)}, text {human_size(text)} projected) x {SAMPLES} samples = "
        f"{human_size(per_sample * SAMPLES)}"
    )
    for row in samples(tmp_path / "mds"):
        assert row[mds.VIDEO_LATENT].nbytes + row[mds.CONTROL_LATENT].nbytes == latents
        assert row[mds.TEXT_EMBEDDING].nbytes == text and row[mds.TEXT_EMBEDDING_KIND] == "projected"


@pytest.mark.parametrize("text_encoder, dim", [("tiny", TINY_TEXT_DIM), ("hf://nvidia/Cosmos-Reason1-7B", 100352)])
def test_text_without_a_projection_is_refused_with_its_size(sources, hf_cache, tmp_path, capsys, text_encoder, dim):
    # A training YAML without load_path (so no default projection); the text encoder is not loaded (nor resolved).
    config = OmegaConf.load(QUICKSTART)
    config.load_path = None
    OmegaConf.save(config, tmp_path / "no_load_path.yaml")
    output = tmp_path / "mds"
    flags = ["--precompute", "text", "--text-encoder", text_encoder, "--config", str(tmp_path / "no_load_path.yaml")]
    assert convert.main(argv(sources["multiview-hdmap"], output, *flags)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    size = VIEWS * 512 * dim * 2
    assert f"cached raw: {human_size(size)} per sample ({VIEWS} views x 512 tokens x {dim} values x 2 bytes)" in err
    assert "--crossattn-proj" in err and "--raw-text" in err
    assert not output.exists()


def test_crossattn_proj_from_an_hf_uri_and_from_the_yaml_load_path(
    sources, projection_file, hf_cache, tmp_path, caplog
):
    source = sources["singleview"]
    path, projection = projection_file
    config = OmegaConf.load(QUICKSTART)
    config.load_path = str(path)
    OmegaConf.save(config, tmp_path / "train.yaml")
    runs = {
        "hf": ["--crossattn-proj", "hf://acme/transfer/auto/tiny_ema_bf16.pt"],
        "yaml": ["--config", str(tmp_path / "train.yaml")],
        "raw": ["--raw-text"],
    }
    mp4, rows = mp4_bytes_per_sample(source), {}
    for name, flags in runs.items():
        caplog.clear()
        assert (
            convert.main(argv(source, tmp_path / name, "--precompute", "text", "--text-encoder", "tiny", *flags)) == 0
        )
        kind, dim = ("raw", TINY_TEXT_DIM) if name == "raw" else ("projected", PROJECTED_DIM)
        text = 512 * dim * 2  # one view
        assert size_line(caplog) == (
            f"dataset size: about {human_size(mp4 + text)} per sample (mp4 {human_size(mp4)}, text "
            f"{human_size(text)} {kind}) x {SAMPLES} samples = {human_size((mp4 + text) * SAMPLES)}"
        )
        rows[name] = samples(tmp_path / name)
        assert all(row[mds.TEXT_EMBEDDING].nbytes == text for row in rows[name])
    for hf_row, yaml_row, raw_row in zip(rows["hf"], rows["yaml"], rows["raw"]):
        for row in (hf_row, yaml_row):
            assert row[mds.TEXT_EMBEDDING_KIND] == "projected"
            assert row[mds.CROSSATTN_PROJ_FINGERPRINT] == crossattn_proj_fingerprint(projection)
        np.testing.assert_array_equal(hf_row[mds.TEXT_EMBEDDING], yaml_row[mds.TEXT_EMBEDDING])
        # The stored embedding is the checkpoint's projection of the raw one (float16 round-offs apart).
        raw = torch.tensor(raw_row[mds.TEXT_EMBEDDING], dtype=torch.float32)
        expected = projection(raw).detach().numpy()
        np.testing.assert_allclose(hf_row[mds.TEXT_EMBEDDING].astype(np.float32), expected, atol=0.05, rtol=0.02)
        assert hf_row[mds.TEXT_EMBEDDING].shape == (512, PROJECTED_DIM)


def test_a_yaml_that_trains_the_base_asks_for_raw_text(sources, projection_file, tmp_path, capsys):
    config = OmegaConf.load(QUICKSTART)
    config.load_path = str(projection_file[0])
    config.model.train_base = True
    OmegaConf.save(config, tmp_path / "full.yaml")
    flags = ["--precompute", "text", "--text-encoder", "tiny", "--config", str(tmp_path / "full.yaml")]
    assert convert.main(argv(sources["multiview-hdmap"], tmp_path / "mds", *flags)) == 1
    err = capsys.readouterr().err
    assert "model.train_base=true" in err and "Fix: pass --raw-text" in err and not (tmp_path / "mds").exists()


def test_the_precomputer_api_asks_for_raw_text_and_refuses_a_foreign_projection():
    text_embedder = SimpleNamespace(embed_dim=TINY_TEXT_DIM)  # only its width is read before encoding
    with pytest.raises(ValueError, match=r"cached raw: 96.0 KiB per view .* Precomputer\(raw_text=True\)"):
        Precomputer(height=H, width=W, num_frames=F, text_embedder=text_embedder)
    assert Precomputer(height=H, width=W, num_frames=F, text_embedder=text_embedder, raw_text=True).text_kind == "raw"
    foreign = nn.Sequential(nn.Linear(100352, 1, device="meta"), nn.GELU())  # the 2B's width, never allocated
    with pytest.raises(ValueError, match="gives 96-d embeddings but the crossattn_proj takes 100352-d"):
        Precomputer(height=H, width=W, num_frames=F, text_embedder=text_embedder, crossattn_proj=foreign)
    with pytest.raises(ValueError, match="contradict"):
        Precomputer(height=H, width=W, num_frames=F, crossattn_proj=foreign, raw_text=True)
