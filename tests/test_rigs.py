"""Other camera rigs: any number of views, named cameras, and starting a rig from the released 7-view weights.

- the network's per-view cross-attention and RoPE key on the number of views in the input (3 and 9 here),
  checked against a per-view loop and the single-view RoPE table;
- 7-view weights loaded into a 3-view and a 9-view network: kept rows equal the file's rows of the same camera
  (found by name in DEFAULT_CAMERAS, the upstream order), new rows are the mean, dropped ones are reported;
- `convert_to_mds.py --cameras` writes those views; a camera list the shards do not hold is refused;
- a 3-view and a 9-view tiny run train from the 7-view file, checkpoint, export and generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_train

from cosmos_composer import generate as gen
from cosmos_composer.checkpoint.export import export
from cosmos_composer.checkpoint.load import load_consolidated_into_network
from cosmos_composer.data.cameras import DEFAULT_CAMERAS, view_captions
from cosmos_composer.data.dataset import TransferStreamingDataset
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.generation.outputs import view_output_path
from cosmos_composer.models import build_network

REPO = Path(__file__).resolve().parents[1]
RIG_3 = ("camera_front_wide_120fov", "camera_cross_left_120fov", "camera_cross_right_120fov")
RIG_9 = (*DEFAULT_CAMERAS, "camera_side_left_90fov", "camera_side_right_90fov")  # two cameras outside the 7


def _perturbed(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():  # the zero-initialised control projections would hide the control input
            param.add_(0.05 * torch.randn_like(param))
    return net.eval()


@pytest.fixture(scope="module")
def released_7view(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 7-view tiny multiview file in the released format (net.* keys, no network.json)."""
    state = _perturbed(build_network("tiny-multiview"), seed=0).state_dict()
    path = tmp_path_factory.mktemp("released") / "tiny_multiview_ema_bf16.pt"
    torch.save({f"net.{key}": value for key, value in state.items()}, path)
    return path, state


@pytest.mark.parametrize("num_views", [3, 9])
@torch.no_grad()
def test_each_view_attends_to_its_own_caption_and_restarts_rope_time(num_views):
    net = _perturbed(build_network("tiny-multiview", n_cameras_emb=num_views), seed=1)
    t, h, w, D = net.config.state_t, 2, 3, net.config.model_channels
    assert net._num_views(num_views * t) == num_views  # the count comes from the input's latent length
    # RoPE: every view's angles are the single-view table (t restarts at 0 in each view).
    angles = net.pos_embedder(num_views, t, h, w, "cpu").view(num_views, t * h * w, -1)
    single = net.pos_embedder(1, t, h, w, "cpu")
    for view in range(num_views):
        assert torch.equal(angles[view], single)
    # Cross-attention: view v's tokens see only view v's 8 text tokens (reference: one attention per view).
    block = net.blocks[0]
    x_B_L_D = torch.randn(2, num_views * t * h * w, D)
    context_B_M_C = torch.randn(2, num_views * 8, net.config.crossattn_emb_channels)
    got = block._cross_attention(x_B_L_D, context_B_M_C, None, num_views)
    per_view = [
        block.cross_attn(x_v, c_v)
        for x_v, c_v in zip(x_B_L_D.chunk(num_views, dim=1), context_B_M_C.chunk(num_views, dim=1))
    ]
    torch.testing.assert_close(got, torch.cat(per_view, dim=1), rtol=1e-5, atol=1e-6)
    changed = context_B_M_C.clone()
    changed[:, 8:16] += 1.0  # view 1's caption only
    moved = block._cross_attention(x_B_L_D, changed, None, num_views)
    L = t * h * w
    assert torch.equal(moved[:, :L], got[:, :L]) and torch.equal(moved[:, 2 * L :], got[:, 2 * L :])
    assert not torch.allclose(moved[:, L : 2 * L], got[:, L : 2 * L])


@pytest.mark.parametrize(
    ("rig", "added", "dropped"),
    [(RIG_3, (), tuple(c for c in DEFAULT_CAMERAS if c not in RIG_3)), (RIG_9, RIG_9[7:], ())],
)
def test_7view_weights_into_another_rig_keep_rows_by_camera_and_report_the_rest(
    released_7view, rig, added, dropped, capsys
):
    path, state = released_7view
    net = build_network("tiny-multiview", n_cameras_emb=len(rig), camera_names=rig)
    report = load_consolidated_into_network(net, path)  # strict: every other key must fit
    rows_7 = state["view_embeddings.weight"]
    rows = net.view_embeddings.weight.detach()
    for view, camera in enumerate(rig):
        expected = rows_7[DEFAULT_CAMERAS.index(camera)] if camera in DEFAULT_CAMERAS else rows_7.mean(dim=0)
        torch.testing.assert_close(rows[view], expected, rtol=0, atol=1e-7)
    assert not report.partial and len(report.loaded) == len(state)
    line = report.view_rows
    assert f"kept the rows of {len(rig) - len(added)} cameras" in line
    for camera in added:
        assert camera in line.split("added ")[1].split(";")[0]
    for camera in dropped:
        assert camera in line.split("dropped ")[1]
    assert ("added " in line) == bool(added) and ("dropped " in line) == bool(dropped)
    assert line in capsys.readouterr().out  # printed with the load report
    for key, value in state.items():  # every other weight is the released one
        if key != "view_embeddings.weight":
            assert torch.equal(net.state_dict()[key], value), key


def test_cameras_conversion_writes_those_views_and_a_mismatched_list_is_refused(tmp_path):
    convert = _script("convert_to_mds")
    raw, out = tmp_path / "raw", tmp_path / "mds"
    make_demo_dataset(raw, samples=1, frames=5, height=32, width=48, cameras=RIG_3, progress=False)
    assert sorted(p.name for p in (raw / "videos").iterdir()) == sorted(f"ftheta_{c}" for c in RIG_3)
    code = convert.main(
        ["--layout", "multiview-hdmap", "--input", str(raw), "--output", str(out), "--min-frames", "5",
         "--cameras", ",".join(RIG_3), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    columns = json.loads((out / "index.json").read_text())["shards"][0]["column_names"]
    assert sorted(c for c in columns if c.startswith("video_")) == sorted(f"video_{c}" for c in RIG_3)
    # A subset in another order: views served in that order, view id = position in the run's list.
    served = ("camera_cross_right_120fov", "camera_front_wide_120fov")
    dataset = TransferStreamingDataset(local=str(out), num_frames=5, height=32, width=48, cameras=served)
    sample = dataset[0]
    assert sample["camera_keys_selection"] == list(served)
    assert sample["view_indices_selection"].tolist() == [0, 1]
    stored_captions = view_captions(json.loads(next((raw / "captions").rglob("*.json")).read_text())["caption"], RIG_3)
    assert sample["ai_caption"] == [stored_captions[2], stored_captions[0]]
    full = TransferStreamingDataset(local=str(out), num_frames=5, height=32, width=48, cameras=RIG_3)[0]
    assert torch.equal(sample["video"][:, :5], full["video"][:, 10:15])  # cross_right's frames
    with pytest.raises(ValueError) as error:
        # The 7 official cameras (edge: no control columns are needed, so only the camera check can refuse it).
        TransferStreamingDataset(local=str(out), num_frames=5, height=32, width=48, control_key="edge")
    message = str(error.value)
    assert str(out) in message and "camera_rear_tele_30fov" in message and all(c in message for c in RIG_3)


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rig", [RIG_3, RIG_9], ids=["3views", "9views"])
def test_a_rig_trains_from_7view_weights_checkpoints_exports_and_generates(released_7view, rig, tmp_path):
    path, _ = released_7view
    cameras = "[" + ",".join(rig) + "]"
    # The demo rig, small; the run converts it (with its cached latents) because rig_mds is missing.
    make_demo_dataset(tmp_path / "rig_mds_raw", samples=2, frames=5, height=32, width=48, cameras=rig, progress=False)
    result = run_train(
        [
            "max_duration=2ba",
            "save_interval=2ba",
            "eval_loader=null",
            f"load_path={path}",
            f"model.overrides.n_cameras_emb={len(rig)}",
            f"train_loader.dataset.cameras={cameras}",
            f"train_loader.dataset.local={tmp_path / 'rig_mds'}",
        ],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "view_embeddings.weight rows matched by camera name" in result.stdout
    run = tmp_path / "out" / "cosmos_composer" / "quickstart" / "quickstart"
    exported = export(run / "checkpoints", tmp_path / "export", progress=False)
    assert list(exported.network.config.camera_names) == list(rig)
    controls = tmp_path / "rig_mds_raw" / "control_input_hdmap_bbox"
    output = tmp_path / "gen.mp4"
    generate_cameras = [rig[-1], rig[0]]  # a subset, given out of view order
    gen.generate(
        gen.GenerateOptions(
            checkpoint=str(tmp_path / "export" / "model_ema_bf16.pt"),
            control=str(controls),
            sample="demo_0000",
            cameras=generate_cameras,
            prompt="a road",
            steps=2,
            output=str(output),
            vae="tiny",
            text_encoder="tiny",
            height=32,
            width=48,
            progress=False,
        )
    )
    for camera in generate_cameras:
        assert view_output_path(output, camera).is_file()
    # The generated cameras get the ids of their rows (their position in the trained rig).
    ids = gen.view_indices(generate_cameras[::-1], 1, network_cameras=exported.network.config.view_cameras)
    assert ids[0].tolist() == [0, len(rig) - 1]


def test_the_3_camera_recipe_is_the_hdmap_recipe_with_a_rig_and_keeps_the_released_shapes():
    from omegaconf import OmegaConf

    from cosmos_composer.config import load_config, network_and_overrides

    rig, released = load_config(REPO / "yamls" / "hdmap_3cam.yaml"), load_config(REPO / "yamls" / "hdmap.yaml")
    assert list(rig.train_loader.dataset.cameras) == list(RIG_3)
    overrides = network_and_overrides(rig)[1]
    assert overrides["n_cameras_emb"] == 3 and overrides["camera_names"] == list(RIG_3)
    rig_rest, released_rest = OmegaConf.to_container(rig), OmegaConf.to_container(released)
    for cfg in (rig_rest, released_rest):
        cfg.pop("run_name"), cfg["model"]["overrides"].pop("n_cameras_emb", None)
        cfg["train_loader"]["dataset"].pop("local"), cfg["train_loader"]["dataset"].pop("cameras")
    assert rig_rest == released_rest
    with torch.device("meta"):
        shapes_3 = {k: v.shape for k, v in build_network(rig.model.preset, **overrides).state_dict().items()}
        shapes_7 = {k: v.shape for k, v in build_network(released.model.preset).state_dict().items()}
    assert {k for k in shapes_7 if shapes_7[k] != shapes_3[k]} == {"view_embeddings.weight"}
    assert shapes_3["view_embeddings.weight"] == (3, 7)
