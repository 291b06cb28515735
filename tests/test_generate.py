"""Generation: the sampler against its definition, scripts/generate.py end to end on tiny models, and the
sample-video callback in a 2-process FSDP2 quickstart run. CPU only, tiny encoders, 32x48 videos."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from torch import nn

from cosmos_composer import generate as gen
from cosmos_composer.callbacks.sample_videos import (
    FramesRun,
    SampleVideos,
    sampling_context_parallel_size,
    sampling_layout,
)
from cosmos_composer.data.cameras import DEFAULT_CAMERAS
from cosmos_composer.data.video import write_mp4
from cosmos_composer.diffusion import sampler
from cosmos_composer.generation import GenerationError
from cosmos_composer.generation.outputs import view_output_path
from cosmos_composer.generation.prompts import load_text_embedding, negative_view_prompts, view_prompts
from cosmos_composer.models import build_network
from cosmos_composer.models.context_parallel import ContextParallel
from cosmos_composer.models.parallelize import apply_context_parallel

REPO = Path(__file__).resolve().parents[1]
GENERATE = REPO / "scripts" / "generate.py"
QUICKSTART = REPO / "yamls" / "quickstart.yaml"
TINY = ["--vae", "tiny", "--text-encoder", "tiny", "--no-progress"]


def _load_script():
    spec = importlib.util.spec_from_file_location("generate_script", GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _load_script()


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """All frames [T, H, W, 3] and the fps of an mp4, read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def _moving_bar(num_frames: int, seed: int, height: int = 32, width: int = 48) -> np.ndarray:
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, None]
    for t in range(num_frames):
        x = (4 * t + 5 * seed) % (width - 8)
        frames[t, height // 4 : height // 2, x : x + 8] = 255
    return frames


def _perturbed_state(preset: str, seed: int) -> dict[str, torch.Tensor]:
    """A tiny network's weights with every parameter perturbed (the zero-initialised control projections
    would otherwise make the control branch a no-op)."""
    torch.manual_seed(seed)
    net = build_network(preset)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return net.state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    paths = SimpleNamespace(root=root)
    for preset in ("tiny-singleview", "tiny-multiview"):
        state = _perturbed_state(preset, seed=0)
        path = root / f"{preset}_ema_bf16.pt"  # EMA-only format: one set of weights under net.*
        torch.save({f"net.{k}": v for k, v in state.items()}, path)
        setattr(paths, preset.replace("-", "_"), path)
    # model.pt format: net.* and a different net_ema.*
    net_state, ema_state = _perturbed_state("tiny-singleview", 1), _perturbed_state("tiny-singleview", 2)
    paths.model_pt = root / "model.pt"
    torch.save(
        {**{f"net.{k}": v for k, v in net_state.items()}, **{f"net_ema.{k}": v for k, v in ema_state.items()}},
        paths.model_pt,
    )
    paths.ema_state = ema_state

    paths.control = root / "control.mp4"
    write_mp4(paths.control, _moving_bar(9, seed=0), fps=12)
    paths.views = root / "views"
    # File names: the camera key, except one official folder name and one official short name.
    names = {camera: camera for camera in DEFAULT_CAMERAS}
    names["camera_cross_right_120fov"] = "ftheta_camera_cross_right_120fov"
    names["camera_rear_right_70fov"] = "rear_right"
    for index, camera in enumerate(DEFAULT_CAMERAS):
        write_mp4(paths.views / f"{names[camera]}.mp4", _moving_bar(5, seed=index), fps=10)
    return paths


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = SCRIPT.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ----------------------------------------------------------------------------- scheduler and guidance
def test_scheduler_is_flow_matching_unipc_with_shift_5():
    steps, shift = 35, 5.0
    scheduler = sampler.make_scheduler(steps, shift)
    assert scheduler.config.prediction_type == "flow_prediction" and scheduler.config.use_flow_sigmas
    assert scheduler.config.flow_shift == 5.0 and scheduler.config.solver_order == 2
    # Independently: linspace from 1 - 1/1000 towards 0 in `steps` steps, shifted by 5s / (1 + 4s), then 0.
    unshifted = np.array([(1 - 1 / 1000) * (1 - i / steps) for i in range(steps)])
    expected = shift * unshifted / (1 + (shift - 1) * unshifted)
    sigmas = scheduler.sigmas.numpy()
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0.0
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=0, atol=1e-6)
    assert np.all(np.diff(sigmas) < 0)
    # The network timesteps are 1000 * sigma, truncated to integers as upstream's scheduler does.
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), np.floor(1000 * sigmas[:-1] + 1e-4).astype(np.int64))
    assert scheduler.timesteps[0] == 999


def test_cfg_formula_matches_the_transfer_models():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    # v = cond + g * (cond - uncond): by hand, g = 3 gives [2 + 3 * 1.5, -1 + 3 * (-2)] = [6.5, -7.0].
    assert torch.equal(sampler.guided_velocity(cond, uncond, 3.0), torch.tensor([6.5, -7.0]))
    # guidance 0 is the conditional prediction alone (in this formula guidance 1 already extrapolates).
    assert torch.equal(sampler.guided_velocity(cond, uncond, 0.0), cond)
    assert torch.equal(sampler.guided_velocity(cond, uncond, 1.0), 2 * cond - uncond)


def test_unconditional_context_is_trainings_dropped_text():
    net = build_network("tiny-singleview")
    raw = torch.randn(1, 8, net.config.crossattn_proj_in_channels)
    assert torch.equal(sampler.unconditional_context(net, raw), torch.zeros_like(raw))
    projected = torch.randn(1, 8, net.config.crossattn_emb_channels)
    expected = net.crossattn_proj(torch.zeros_like(raw))  # what the network makes of zeros
    torch.testing.assert_close(sampler.unconditional_context(net, projected), expected.detach())


class _StubNet(nn.Module):
    """Velocity = the context's first value broadcast (so cond and uncond contexts give known velocities)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(
            out_channels=16, use_crossattn_projection=True, crossattn_proj_in_channels=4, crossattn_emb_channels=4
        )
        self.calls = []

    def forward(self, x_B_C_T_H_W, timesteps_B_T, crossattn_emb, **kwargs):
        self.calls.append((timesteps_B_T.clone(), kwargs["condition_video_input_mask_B_C_T_H_W"].clone()))
        return torch.full_like(x_B_C_T_H_W, float(crossattn_emb.flatten()[0]))


def _stub_conditioning(cond_value=2.0, uncond_value=0.5, T=3, **kwargs):
    return sampler.Conditioning(
        control=torch.zeros(1, 16, T, 2, 2),
        context=torch.full((1, 8, 4), cond_value),
        uncond_context=torch.full((1, 8, 4), uncond_value),
        **kwargs,
    )


def test_sampler_applies_guidance_to_the_two_network_passes():
    net = _StubNet()
    out = sampler.sample(net, _stub_conditioning(), guidance=3.0, num_steps=1, seed=7, progress=False)
    noise = torch.from_numpy(np.random.RandomState(7).standard_normal((1, 16, 3, 2, 2)).astype(np.float32))
    # One flow step from sigma_0 to 0 predicts x0 = x - sigma_0 * v with v = 2 + 3 * (2 - 0.5) = 6.5.
    sigma_0 = sampler.make_scheduler(1).sigmas[0]
    torch.testing.assert_close(out, noise - sigma_0 * 6.5)
    assert len(net.calls) == 2  # conditional and unconditional
    assert float(net.calls[0][0].flatten()[0]) == 999.0  # timesteps on the 0..1000 scale
    # guidance 0 skips the unconditional pass
    net.calls.clear()
    sampler.sample(net, _stub_conditioning(), guidance=0.0, num_steps=2, seed=7, progress=False)
    assert len(net.calls) == 2


def test_conditioning_frames_enter_clean_and_stay_on_their_latents():
    net = _StubNet()
    x0 = torch.randn(1, 16, 6, 2, 2)
    conditioning = _stub_conditioning(T=6, num_views=2, condition_latents=x0, num_conditional_frames=1)
    out = sampler.sample(net, conditioning, guidance=2.0, num_steps=6, seed=1, progress=False)
    mask = net.calls[0][1]
    assert mask[0, 0, :, 0, 0].tolist() == [1, 0, 0, 1, 0, 0]  # first latent frame of each view
    # The conditioning frames follow their true velocity (noise - x0) and end at x0 (up to 1 - sigma_max).
    torch.testing.assert_close(out[:, :, [0, 3]], x0[:, :, [0, 3]], atol=5e-3, rtol=0)


# ----------------------------------------------------------------------------- scripts/generate.py
def test_generate_script_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        SCRIPT.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--checkpoint",
        "--preset",
        "--control",
        "--prompt",
        "--text-embedding",
        "--guidance",
        "--steps",
        "--seed",
        "--num-frames",
        "--height",
        "--width",
        "--fps",
        "--weights",
        "--vae",
        "--text-encoder",
    ):
        assert flag in help_text


# The flags of scripts/generate.py: a fixed interface (README, the official inference's habits).
FLAGS = (
    "--checkpoint",
    "--preset",
    "--set",
    "--weights",
    "--allow-partial-load",
    "--vae",
    "--text-encoder",
    "--control",
    "--sample",
    "--prompt",
    "--text-embedding",
    "--negative-prompt",
    "--negative-text-embedding",
    "--no-negative-prompt",
    "--cameras",
    "--caption-mode",
    "--num-conditional-frames",
    "--input",
    "--control-weight",
    "--seed",
    "--guidance",
    "--steps",
    "--shift",
    "--device",
    "--dtype",
    "--no-progress",
    "--output",
    "--num-frames",
    "--height",
    "--width",
    "--fps",
)


def test_every_option_has_one_flag_with_the_default_of_the_library():
    parser = SCRIPT.build_parser()
    actions = [action for action in parser._actions if action.dest != "help"]
    options = dataclasses.fields(gen.GenerateOptions)
    # One flag per option, and no flag without an option.
    assert sorted(action.dest for action in actions) == sorted(option.name for option in options)
    assert all(len(action.option_strings) == 1 for action in actions)
    assert sorted(flag for action in actions for flag in action.option_strings) == sorted(FLAGS)
    # The command line with only what is required means the library's defaults.
    required = dict(checkpoint="c.pt", control="c.mp4", prompt="p", output="o.mp4")
    args = SCRIPT.parse_args([f"--{key}={value}" for key, value in required.items()])
    assert SCRIPT.options_from_args(args) == gen.GenerateOptions(**required)
    assert parser.get_default("guidance") == sampler.DEFAULT_GUIDANCE == 3.0  # the official inference's guidance
    # The flags fill the fields they name.
    args = SCRIPT.parse_args(
        [
            *(f"--{key}={value}" for key, value in required.items()),
            "--cameras",
            "rear, front_wide",
            "--no-negative-prompt",
            "--no-progress",
            "--vae",
            "none",
            "--set",
            "num_blocks=6",
            "--steps",
            "4",
            "--fps",
            "7.5",
        ]
    )
    options = SCRIPT.options_from_args(args)
    assert options.cameras == ["rear", "front_wide"] and not options.use_negative_prompt and not options.progress
    assert options.vae is None and options.overrides == {"num_blocks": 6} and options.steps == 4 and options.fps == 7.5


def test_the_library_refuses_what_the_command_line_refuses(tmp_path):
    required = dict(checkpoint="c.pt", control="c.mp4", output=str(tmp_path / "o.mp4"))
    with pytest.raises(GenerationError, match="exactly one of --prompt, --text-embedding"):
        gen.generate(gen.GenerateOptions(**required))
    with pytest.raises(GenerationError, match="given: --prompt, --text-embedding"):
        gen.generate(gen.GenerateOptions(**required, prompt="p", text_embedding="e.pt"))
    with pytest.raises(GenerationError, match="given: --negative-prompt, --no-negative-prompt"):
        gen.generate(gen.GenerateOptions(**required, prompt="p", negative_prompt="n", use_negative_prompt=False))


def test_singleview_frames_size_and_seed_determinism(files, tmp_path, capsys):
    common = [
        "--checkpoint",
        files.tiny_singleview,
        "--preset",
        "tiny-singleview",
        "--control",
        files.control,
        "--prompt",
        "a red car drives on the road",
        "--steps",
        "3",
        "--guidance",
        "3",
        "--num-frames",
        "5",
        "--height",
        "16",
        "--width",
        "32",
        "--fps",
        "8",
        *TINY,
    ]
    code, out = _run([*common, "--seed", "1", "--output", tmp_path / "a.mp4"], capsys)
    assert code == 0, out
    frames_a, fps = _decode(tmp_path / "a.mp4")
    assert frames_a.shape == (5, 16, 32, 3) and fps == 8  # the requested length, size and fps
    # Same seed, same video; another seed, another video.
    assert _run([*common, "--seed", "1", "--output", tmp_path / "b.mp4"], capsys)[0] == 0
    assert _run([*common, "--seed", "2", "--output", tmp_path / "c.mp4"], capsys)[0] == 0
    assert np.array_equal(frames_a, _decode(tmp_path / "b.mp4")[0])
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert np.abs(frames_a.astype(int) - _decode(tmp_path / "c.mp4")[0].astype(int)).mean() > 1.0


def test_multiview_writes_seven_views_and_the_overview(files, tmp_path, capsys):
    output = tmp_path / "mv.mp4"
    code, out = _run(
        [
            "--checkpoint",
            files.tiny_multiview,
            "--preset",
            "tiny-multiview",
            "--control",
            files.views,
            "--prompt",
            "a sunny day on a highway",
            "--steps",
            "2",
            "--output",
            output,
            *TINY,
        ],
        capsys,
    )
    assert code == 0, out
    for camera in DEFAULT_CAMERAS:
        frames, fps = _decode(view_output_path(output, camera))
        assert frames.shape == (5, 32, 48, 3) and fps == 10
    overview, _ = _decode(output)
    assert overview.shape == (5, 3 * 32, 3 * 48, 3)
    assert overview[:, 64:, :48].max() == 0  # the empty corner tiles of the 3x3 layout
    assert len(list(tmp_path.glob("*.mp4"))) == 8


def test_input_errors_name_the_file_and_the_fix(files, tmp_path, capsys):
    multiview = [
        "--checkpoint",
        files.tiny_multiview,
        "--preset",
        "tiny-multiview",
        "--prompt",
        "x",
        "--output",
        tmp_path / "o.mp4",
        *TINY,
    ]
    # A missing camera.
    partial = tmp_path / "partial"
    partial.mkdir()
    for camera in DEFAULT_CAMERAS[:5]:
        (partial / f"{camera}.mp4").write_bytes((files.views / f"{DEFAULT_CAMERAS[0]}.mp4").read_bytes())
    code, out = _run([*multiview, "--control", partial], capsys)
    assert code == 2 and "camera_cross_left_120fov" in out and "--cameras" in out
    # Views with different frame rates.
    write_mp4(partial / f"{DEFAULT_CAMERAS[5]}.mp4", _moving_bar(5, 0), fps=15)
    write_mp4(partial / f"{DEFAULT_CAMERAS[6]}.mp4", _moving_bar(5, 0), fps=10)
    code, out = _run([*multiview, "--control", partial], capsys)
    assert code == 2 and "different frame rates" in out and "15 fps" in out
    # The multiview network's fixed length.
    code, out = _run([*multiview, "--control", files.views, "--num-frames", "9"], capsys)
    assert code == 2 and "--num-frames 5" in out
    # Too few frames.
    single = [
        "--checkpoint",
        files.tiny_singleview,
        "--preset",
        "tiny-singleview",
        "--control",
        files.control,
        "--prompt",
        "x",
        "--output",
        tmp_path / "s.mp4",
        *TINY,
    ]
    code, out = _run([*single, "--num-frames", "13"], capsys)
    assert code == 2 and str(files.control) in out and "9 frames" in out and "--num-frames 9" in out
    # A size the network cannot take.
    code, out = _run([*single, "--height", "24"], capsys)
    assert code == 2 and "multiples of 16" in out
    # A checkpoint of another preset.
    code, out = _run(["--checkpoint", files.tiny_multiview, *single[2:]], capsys)
    assert code == 2 and "--preset" in out and "shape mismatch" in out


def test_weights_choose_ema_or_net_of_model_pt(files):
    net, _ = gen.load_network(files.model_pt, "tiny-singleview", weights="ema")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in files.ema_state.items())
    net, _ = gen.load_network(files.model_pt, "tiny-singleview", weights="net")
    assert not torch.equal(
        net.state_dict()["blocks.0.self_attn.q_proj.weight"], files.ema_state["blocks.0.self_attn.q_proj.weight"]
    )


def test_view_prompts_as_training_and_as_official_inference():
    cameras = list(DEFAULT_CAMERAS)
    prefixed = view_prompts("a truck", cameras)
    assert prefixed[0].endswith("facing forward. a truck") and prefixed[1].endswith("to the right. ")
    front_only = view_prompts("a truck", cameras, "front-only")
    assert front_only[0] == "a truck" and set(front_only[1:]) == {" "}
    assert negative_view_prompts("bad", cameras) == ["bad"] * 7
    assert view_prompts("a truck", None) == ["a truck"]


# ----------------------------------------------------------------------------- the training callback
def test_callback_logs_its_videos_to_wandb(tmp_path, monkeypatch):
    # Which items each call samples (the same ones every call) is tested in test_sample_metrics.py.
    callback = SampleVideos(every_n_batches=20, num_samples=2)

    from composer.loggers import WandBLogger

    logged = []
    destination = WandBLogger(project="unused")
    monkeypatch.setattr(destination, "log_metrics", lambda metrics, step=None: logged.append((metrics, step)))
    video = tmp_path / "v.mp4"
    write_mp4(video, _moving_bar(5, 0), fps=10)
    callback._log_to_wandb(SimpleNamespace(destinations=[destination]), video, 40, 0, 3)
    ((metrics, step),) = logged
    assert step == 40 and type(metrics["samples/item0_seed3"]).__name__ == "Video"


# Each video over the ranks: the split without a launch (the launch: the two-process quickstart below).
@pytest.mark.parametrize(
    "world_size, num_heads, num_frames, group",
    [
        (1, 16, 56, 1),  # one process samples alone
        (8, 16, 56, 8),  # the 2B recipe's 7 views x 8 latent frames over a node of 8: every rank
        (16, 16, 56, 8),  # 56 frames do not split in 16: groups of 8 (the two groups sample the same video)
        (2, 2, 14, 2),  # the quickstart: 7 views x 2 latent frames over 2 processes, the tiny network's 2 heads
        (4, 2, 14, 2),  # 2 heads: pairs
        (3, 16, 56, 1),  # 3 processes split neither: each rank samples the whole video
    ],
)
def test_each_video_is_sampled_by_the_largest_group_of_ranks_that_splits_it(world_size, num_heads, num_frames, group):
    assert sampling_context_parallel_size(world_size, num_heads, num_frames) == group
    # The group's ranks take equal, adjacent shares of the frames that together are the whole video.
    shares = [ContextParallel(group=None, size=group, rank=rank).frame_range(num_frames) for rank in range(group)]
    assert [frame for first, end in shares for frame in range(first, end)] == list(range(num_frames))


def test_the_callback_makes_each_sampling_group_once_and_reuses_the_training_one(monkeypatch):
    from cosmos_composer.callbacks import sample_videos

    made = []
    monkeypatch.setattr(sample_videos.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(sample_videos, "context_parallel_groups", lambda size: made.append(size) or f"group of {size}")
    callback = SampleVideos()
    net = SimpleNamespace(config=SimpleNamespace(num_heads=2), context_parallel=None)
    assert callback._context_parallel(net, 14) == callback._context_parallel(net, 14) == "group of 2"
    assert made == [2]  # a collective: made once, at the first call
    assert callback._context_parallel(net, 7) is None and made == [2]  # 7 frames do not split: each rank alone
    net.context_parallel = training = ContextParallel(group=None, size=2, rank=1)
    assert SampleVideos()._context_parallel(net, 14) is training and made == [2]  # training's group, as it is


def test_the_sampling_layout_is_undone_and_each_ranks_frames_are_counted():
    net = build_network("tiny-singleview")
    training = ContextParallel(group=None, size=2, rank=1)  # the training layout a CP run sets
    apply_context_parallel(net, training)
    with pytest.raises(RuntimeError, match="sampling failed"), sampling_layout(net, None):
        assert net.context_parallel is None
        raise RuntimeError("sampling failed")
    assert net.context_parallel is training  # back, also after an error

    apply_context_parallel(net, None)
    config = net.config
    x = torch.randn(1, config.in_channels, config.state_t, 2 * config.patch_spatial, 3 * config.patch_spatial)
    inputs = dict(
        x_B_C_T_H_W=x,
        timesteps_B_T=torch.full((1, 1), 500.0),
        crossattn_emb=torch.randn(1, 4, config.crossattn_proj_in_channels),
        latent_control_input=torch.randn_like(x),
    )
    with torch.no_grad(), FramesRun(net) as run:
        net(**inputs)
        net(**inputs)
    assert (run.forwards, run.frames) == (2, 2 * config.state_t)  # one process: every frame of every forward
    with torch.no_grad():
        net(**inputs)
    assert run.forwards == 2  # counted only inside the block


def test_the_callback_registry_imports_no_callback():
    # The config checks callback names through the registry; the callbacks import code that reads the config.
    code = "import sys; from cosmos_composer.callbacks.registry import CALLBACKS; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "cosmos_composer.callbacks.sample_videos" not in loaded and "cosmos_composer.callbacks.registry" in loaded

    from composer.core import Callback

    from cosmos_composer.callbacks.registry import CALLBACKS, build_callback

    assert isinstance(build_callback("sample_videos", every_n_batches=3), SampleVideos)
    for name, where in CALLBACKS.items():
        module, _, class_name = where.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), class_name), Callback), name


def test_a_training_run_writes_its_samples_into_the_run_folder(tmp_path, monkeypatch):
    from cosmos_composer.config import load_config, run_folder
    from cosmos_composer.loggers_and_callbacks import build_callbacks
    from cosmos_composer.run_plan import plan_run

    monkeypatch.setenv("COSMOS_OUTPUT_ROOT", str(tmp_path))
    for overrides in ([], ["save_folder=s3://bucket/run"]):  # the samples stay local when the checkpoints are not
        cfg = load_config(QUICKSTART, overrides)
        plan = plan_run(cfg, world_size=1, has_gpu=False)
        (callback,) = [c for c in build_callbacks(cfg, plan) if isinstance(c, SampleVideos)]
        assert callback.output_dir == str(run_folder(cfg) / "samples")
    cfg = load_config(QUICKSTART, ["callbacks.sample_videos.output_dir=/elsewhere"])
    plan = plan_run(cfg, world_size=1, has_gpu=False)
    (callback,) = [c for c in build_callbacks(cfg, plan) if isinstance(c, SampleVideos)]
    assert callback.output_dir == "/elsewhere"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """`composer -n 2 train.py yamls/quickstart.yaml` for 2 batches with a sample every 2 batches."""
    root = tmp_path_factory.mktemp("quickstart")
    # The quickstart converts (and caches latents of) data/quickstart_mds_raw when data/quickstart_mds is
    # missing; a 2-sample raw set at the training size keeps that short.
    from cosmos_composer.data.demo import make_demo_dataset

    make_demo_dataset(root / "data" / "quickstart_mds_raw", samples=2, frames=5, height=32, width=48, progress=False)
    env = dict(os.environ, COSMOS_OUTPUT_ROOT=str(root / "out"), PYTHONUNBUFFERED="1")
    env.pop("WANDB_MODE", None)
    composer = Path(sys.executable).with_name("composer")
    result = subprocess.run(
        [
            str(composer),
            "-n",
            "2",
            str(REPO / "train.py"),
            str(QUICKSTART),
            "max_duration=2ba",
            "eval_loader=null",
            "save_interval=2ba",
            "callbacks.sample_videos.every_n_batches=2",
            "callbacks.sample_videos.steps=2",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return SimpleNamespace(
        root=root, run=root / "out" / "cosmos_composer" / "quickstart" / "quickstart", stdout=result.stdout
    )


def _one_process_samples(run: SimpleNamespace, output: Path) -> None:
    """The fixture's ba2 samples as one process makes them: the callback without a launch (no context
    parallelism), on the run's ba2 EMA weights in one process's training layout (frozen weights in bf16)."""
    from composer.devices import DeviceCPU

    from cosmos_composer.checkpoint.keys import EMA_WEIGHTS
    from cosmos_composer.checkpoint.network_weights import load_network
    from cosmos_composer.config import load_config
    from cosmos_composer.data.dataset import TransferStreamingDataset
    from cosmos_composer.encoders import build_encoders
    from cosmos_composer.models.composer_model import CosmosTransferModel
    from cosmos_composer.models.prepare import WeightSource, prepare_training_network

    cfg = load_config(QUICKSTART)
    ema, _ = load_network(run.run / "checkpoints", cfg.model.preset, weights=EMA_WEIGHTS)
    net = prepare_training_network(
        ema.config, lora=None, train_base=False, precision="fp32", fsdp=None, weights=WeightSource(), device="cpu"
    )
    net.load_state_dict(ema.state_dict())
    vae, text = build_encoders("tiny", "tiny", torch.device("cpu"))
    model = CosmosTransferModel(net, use_ema=False, control_key="hdmap_bbox", vae=vae, text_embedder=text)
    data = cfg.train_loader.dataset
    dataset = TransferStreamingDataset(
        local=str(run.root / data.local), num_frames=data.num_frames, height=data.height, width=data.width,
        decode_video=data.decode_video,
    )  # fmt: skip
    overrides = {"every_n_batches": 2, "steps": 2, "metrics": [], "output_dir": str(output)}  # the fixture's
    callback = SampleVideos(**{**cfg.callbacks.sample_videos, **overrides})
    state = SimpleNamespace(
        model=model, train_dataloader=SimpleNamespace(dataset=dataset), evaluators=[], device=DeviceCPU(),
        precision="fp32", callbacks=[], run_name="quickstart", timestamp=SimpleNamespace(batch=2),
    )  # fmt: skip
    callback.batch_end(state, SimpleNamespace(destinations=[], log_metrics=lambda *args, **kwargs: None))


def test_callback_writes_samples_in_a_two_process_fsdp2_quickstart(quickstart_run):
    samples = quickstart_run.run / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["ba2"]  # every 2 batches over 2 batches
    files = sorted((samples / "ba2").glob("*.mp4"))
    assert len(files) == 2 * 8  # 7 views + the overview of each of the quickstart's 2 items (one seed)
    overview = next(p for p in files if not any(c in p.name for c in DEFAULT_CAMERAS))
    frames, _ = _decode(overview)
    assert frames.shape == (5, 96, 144, 3)
    view, _ = _decode(next(p for p in files if DEFAULT_CAMERAS[0] in p.name))
    assert view.shape == (5, 32, 48, 3)

    # Both ranks sampled each video together, each running half of its latent frames (7 views x 2 each).
    line = next(line for line in quickstart_run.stdout.splitlines() if line.startswith("sample_videos: wrote 16"))
    assert "each video over 2 rank(s) (context parallelism)" in line, line
    assert "latent frames run per rank [56, 56], one process runs 112" in line, line  # 2 items x 2 steps x 2 passes
    # And wrote the videos that one process writes.
    _one_process_samples(quickstart_run, quickstart_run.root / "one_process")
    expected = sorted((quickstart_run.root / "one_process" / "ba2").glob("*.mp4"))
    assert [p.name for p in expected] == [p.name for p in files]
    for launched, alone in zip(files, expected):
        difference = np.abs(_decode(launched)[0].astype(int) - _decode(alone)[0].astype(int))
        assert difference.max() <= 1, (launched.name, difference.max())


def test_generate_from_the_quickstart_composer_checkpoint(quickstart_run, tmp_path, capsys):
    # The official layout of one sample's controls: ftheta_<camera>/<name>.mp4.
    raw = quickstart_run.root / "data" / "quickstart_mds_raw" / "control_input_hdmap_bbox"
    control = tmp_path / "control"
    for folder in raw.iterdir():
        (control / folder.name).mkdir(parents=True)
        source = sorted(folder.glob("*.mp4"))[0]
        (control / folder.name / source.name).write_bytes(source.read_bytes())
    output = tmp_path / "sample.mp4"
    # Three of the cameras (short names as in the official inference), from the run's newest checkpoint.
    code, out = _run(
        [
            "--checkpoint",
            quickstart_run.run / "checkpoints",
            "--preset",
            "tiny-multiview",
            "--control",
            control,
            "--cameras",
            "rear,front_wide,cross_left",
            "--prompt",
            "a car at night",
            "--steps",
            "2",
            "--output",
            output,
            *TINY,
        ],
        capsys,
    )
    assert code == 0, out
    assert _decode(output)[0].shape == (5, 96, 144, 3)
    cameras = ["camera_front_wide_120fov", "camera_rear_tele_30fov", "camera_cross_left_120fov"]
    for camera in cameras:
        assert _decode(view_output_path(output, camera))[0].shape == (5, 32, 48, 3)
    assert len(list(tmp_path.glob("*.mp4"))) == 4


def test_text_embedding_files(tmp_path):
    one = torch.randn(512, 8)
    torch.save(one, tmp_path / "one.pt")
    assert torch.equal(load_text_embedding(tmp_path / "one.pt", 1), one[None])
    assert torch.equal(load_text_embedding(tmp_path / "one.pt", 7), one[None].repeat(1, 7, 1))
    per_view = torch.randn(7, 512, 8)
    torch.save({"text_embedding": per_view}, tmp_path / "views.pt")
    assert torch.equal(load_text_embedding(tmp_path / "views.pt", 7), per_view.reshape(1, 7 * 512, 8))
    torch.save(per_view.reshape(7 * 512, 8).half(), tmp_path / "cached.pt")  # the shards' text_embedding column
    assert load_text_embedding(tmp_path / "cached.pt", 7).shape == (1, 7 * 512, 8)
    torch.save(torch.randn(3, 512, 8), tmp_path / "bad.pt")
    with pytest.raises(GenerationError, match="bad.pt"):
        load_text_embedding(tmp_path / "bad.pt", 7)
