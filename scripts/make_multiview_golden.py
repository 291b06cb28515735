#!/usr/bin/env python
"""Make the multiview golden fixture: the official `MultiViewControlDiT` run on a tiny seeded network.

Run by hand, never in CI. It needs a checkout of cosmos-transfer2.5 (the network) and one of
TransformerEngine (the RoPE function the network calls), plus three pure-Python packages the upstream
import chain needs:

    pip install --target /tmp/golden-deps einops loguru iopath
    PYTHONPATH=/tmp/golden-deps python scripts/make_multiview_golden.py \\
        --upstream /path/to/cosmos-transfer2.5 --transformer-engine /path/to/TransformerEngine

It writes
- `tests/fixtures/multiview_golden.safetensors`: the upstream state dict under `net.` (upstream's key
  names, parameters in bf16 as in a released `*_ema_bf16.pt`, RoPE and counter buffers as upstream saves
  them), the inputs (`input.*`) and the velocities (`output.*`, fp32) of two forward calls: one with
  explicit `view_indices_B_T` and one without (upstream then numbers the views 0..V-1);
- `tests/fixtures/multiview_golden.json`: the upstream constructor arguments, our preset and overrides
  for the same network, the forward arguments, both commits and this command.

`tests/test_multiview_golden.py` loads the weights through our checkpoint loader and compares our
forward with the stored velocities. Nothing of upstream is copied into this repository: the script
imports it from the checkouts. On a CPU the upstream network imports only with the stubs below, one per
GPU-only or I/O-only package; each comment says why it leaves the math unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures"
UPSTREAM_MODULE = "cosmos_transfer2._src.transfer2_multiview.networks.multiview_dit_control"
UPSTREAM_CLASS = f"{UPSTREAM_MODULE}.MultiViewControlDiT"

# The released auto-multiview config (CT `_src/transfer2_multiview/configs/vid2vid_transfer/defaults/net.py:
# COSMOS_V2_CONTROL_VACE_2B_MV` with the overrides of experiment `buttercup_transfer2p5_2b_mv_7views_...`),
# shrunk to the size of our `tiny-multiview` preset (text width halved, see OUR_OVERRIDES). Only the sizes
# differ from the 2B file:
# model_channels, num_blocks, num_heads, adaln_lora_dim, crossattn_emb_channels, crossattn_proj_in_channels,
# max_img_h/w, max_frames, vace_block_every_n, num_max_modalities, state_t.
UPSTREAM_KWARGS = dict(
    max_img_h=64,
    max_img_w=64,
    max_frames=16,
    in_channels=16,
    out_channels=16,
    patch_spatial=2,
    patch_temporal=1,
    concat_padding_mask=True,
    model_channels=64,
    num_blocks=4,
    num_heads=2,
    mlp_ratio=4.0,
    # The released "minimal_a2a" runs the same SDPA but casts q, k, v to bf16 (CT
    # `_src/predict2/networks/attention.py: attention(dtype=torch.bfloat16)`); "torch" is that SDPA in fp32.
    atten_backend="torch",
    crossattn_emb_channels=32,
    use_crossattn_projection=True,
    crossattn_proj_in_channels=48,  # the preset has 96; halved to keep the V x 512 text tokens small
    pos_emb_cls="rope3d",
    pos_emb_learnable=True,
    pos_emb_interpolation="crop",
    use_adaln_lora=True,
    adaln_lora_dim=16,
    rope_h_extrapolation_ratio=3.0,
    rope_w_extrapolation_ratio=3.0,
    rope_t_extrapolation_ratio=8.0 / 24.0,
    rope_enable_fps_modulation=False,
    extra_per_block_abs_pos_emb=False,
    use_wan_fp32_strategy=True,
    timestep_scale=0.001,
    state_t=2,
    n_cameras_emb=7,
    view_condition_dim=7,
    concat_view_embedding=True,
    vace_has_mask=False,
    vace_block_every_n=2,
    condition_strategy="spaced",
    num_max_modalities=2,
    use_input_hint_block=True,
)
# Our network with the same config (cosmos_composer/models/presets.py); the narrower raw text embedding
# keeps the fixture under 2 MB (the context is B x V*512 tokens whatever the network size).
OUR_PRESET = "tiny-multiview"
OUR_OVERRIDES: dict = {"crossattn_proj_in_channels": 48}

# Inputs: 2 samples of 3 views x state_t=2 latent frames, 8 x 12 latent pixels (H != W catches a swap).
BATCH, VIEWS, LATENT_H, LATENT_W = 2, 3, 8, 12
# Hard-coded in CT `_src/predict2_multiview/networks/multiview_dit.py: MultiViewCrossAttention` (len // 512).
TEXT_TOKENS_PER_VIEW = 512
VIEW_IDS_OF_SAMPLE = ([0, 1, 2], [4, 2, 6])  # sample 1: a camera subset, out of order
CONDITIONING_FRAMES_OF_SAMPLE = (1, 0)  # latent frames given as condition, in every view
CONTROL_CONTEXT_SCALE = 0.75
# q_proj / k_proj are drawn this much smaller than 1/sqrt(fan_in), so that q and k reach the q/k RMSNorm
# with a mean square of about 1e-4, where eps is not negligible: eps 1e-6 -> 1e-5 moves the velocity by 6 %.
QK_WEIGHT_SCALE = 0.01


# ----------------------------------------------------------------------------- stubs
class _AnyAttribute(types.ModuleType):
    """A module whose every attribute is an inert class: for packages imported only to register I/O handlers."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


def _module(name: str, cls=types.ModuleType, **attributes) -> types.ModuleType:
    module = cls(name)
    module.__path__ = []  # a package, so that submodules can be registered under it
    module.__dict__.update(attributes)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _load_file_as(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def install_stubs(upstream: Path, transformer_engine: Path) -> None:
    # torch._dynamo is imported by upstream (torch.compiler.disable) while the stubs exist; importing it
    # first keeps its scan of installed packages away from the inert modules below.
    import torch._dynamo  # noqa: F401

    # cosmos_cuda: the CUDA-kernel extra of cosmos-transfer2.5; `cosmos_transfer2/__init__.py` only checks
    # that its version equals the package's. No kernel of it runs in this forward.
    about: dict = {}
    exec((upstream / "cosmos_transfer2" / "__about__.py").read_text(), about)
    _module("cosmos_cuda", __version__=about["__version__"])

    # transformer_engine (CUDA only). The network uses three things of it:
    # - te.pytorch.RMSNorm (q/k norms, t_embedding_norm): replaced by upstream's own torch `RMSNorm` of
    #   CT `_src/predict2/networks/minimal_v4_dit.py` (set in `import_upstream`), the formula of TE's
    #   docstring y = x / sqrt(mean(x^2) + eps) * gamma, eps passed through (1e-6);
    # - te.pytorch.attention.apply_rotary_pos_emb(fused=True): TE's own unfused implementation, loaded
    #   from the TransformerEngine checkout (fused and unfused are the same math; TE's fused kernel is CUDA);
    # - te.pytorch.attention.DotProductAttention (the cross-attention, built with the default backend):
    #   replaced by upstream's `torch_attention_op` (SDPA, scale 1/sqrt(head_dim), no mask), which is what
    #   TE computes with attn_mask_type="no_mask" and its default softmax_scale.
    # - graph.py imports get_all_rng_states / graph_safe_rng_available / TransformerEngineBaseModule for
    #   CUDA graphs, which stay off (use_cuda_graphs=False).
    _module("transformer_engine")
    _module("transformer_engine.pytorch")
    _module("transformer_engine.pytorch.distributed", get_all_rng_states=None, graph_safe_rng_available=None)
    _module("transformer_engine.pytorch.module")
    _module("transformer_engine.pytorch.module.base", TransformerEngineBaseModule=type("TEBaseModule", (), {}))
    # rope.py imports TE's C++ extension and its QKVFormat table; only the fused (CUDA) path uses them.
    _module("transformer_engine.pytorch.cpp_extensions")
    _module("transformer_engine.pytorch.cpp_extensions.fused_attn", QKVFormat={})
    _module("transformer_engine_torch")
    te_attention = _module("transformer_engine.pytorch.attention")
    te_rope = _load_file_as(
        "transformer_engine.pytorch.attention.rope",
        transformer_engine / "transformer_engine" / "pytorch" / "attention" / "rope.py",
    )

    te_apply_rotary_pos_emb = te_rope.apply_rotary_pos_emb

    def apply_rotary_pos_emb(t, freqs, *args, fused: bool = False, **kwargs):
        del fused  # the unfused path of the same function: TE's fused kernel needs CUDA
        return te_apply_rotary_pos_emb(t, freqs, *args, fused=False, **kwargs)

    # upstream imports it from `.attention.rope` (newer TE) or `.attention` (older TE)
    te_attention.apply_rotary_pos_emb = te_rope.apply_rotary_pos_emb = apply_rotary_pos_emb

    # megatron.core.parallel_state: the multiview forward asks it for the context-parallel group to count
    # the views (n_cameras = T * cp_size / state_t). A single-rank gloo group is "no context parallelism".
    _module("megatron")
    _module("megatron.core")
    _module(
        "megatron.core.parallel_state",
        get_context_parallel_group=lambda: dist.group.WORLD,
        is_initialized=lambda: True,
    )

    # I/O-only imports of `imaginaire.utils` (GPU monitoring, object storage, video/CSV file handlers that
    # easy_io registers at import); the network never calls them.
    for name in ("pynvml", "multistorageclient", "multistorageclient.types", "imageio", "imageio.v3", "pandas"):
        _module(name, cls=_AnyAttribute)


def import_upstream(upstream: Path, transformer_engine: Path):
    sys.path.insert(0, str(upstream))
    install_stubs(upstream, transformer_engine)
    minimal_v4_dit = importlib.import_module("cosmos_transfer2._src.predict2.networks.minimal_v4_dit")
    sys.modules["transformer_engine.pytorch"].RMSNorm = minimal_v4_dit.RMSNorm

    class DotProductAttention(torch.nn.Module):
        def __init__(self, num_heads, head_dim, *, qkv_format="bshd", attn_mask_type="no_mask", **kwargs):
            super().__init__()
            if qkv_format != "bshd" or attn_mask_type != "no_mask":
                raise NotImplementedError(f"stub covers bshd / no_mask only, got {qkv_format} / {attn_mask_type}")

        def forward(self, q_B_S_H_D, k_B_S_H_D, v_B_S_H_D):
            return minimal_v4_dit.torch_attention_op(q_B_S_H_D, k_B_S_H_D, v_B_S_H_D)

    sys.modules["transformer_engine.pytorch.attention"].DotProductAttention = DotProductAttention
    return importlib.import_module(UPSTREAM_MODULE).MultiViewControlDiT, minimal_v4_dit


# ----------------------------------------------------------------------------- weights and inputs
def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    """Values a bf16 file holds exactly, as fp32: the fixture stores bf16 and loses nothing."""
    return t.to(torch.bfloat16).float()


@torch.no_grad()
def seed_weights(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random, the zero-initialised ones (adaLN second layers, before/after_proj) too.

    Linear weights N(0, 1/fan_in), biases N(0, 0.1^2), norm weights 1 + N(0, 0.2^2), view embeddings N(0, 1);
    attention q/k projections QK_WEIGHT_SCALE smaller. Drawn in sorted-name order, rounded to bf16.
    """
    for name, param in sorted(net.named_parameters()):
        if name.endswith("view_embeddings.weight"):
            value = torch.randn(param.shape, generator=generator)
        elif param.ndim == 2:
            value = torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5
            if name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
                value *= QK_WEIGHT_SCALE
        elif name.endswith("norm.weight"):
            value = 1.0 + 0.2 * torch.randn(param.shape, generator=generator)
        elif name.endswith(".bias"):
            value = 0.1 * torch.randn(param.shape, generator=generator)
        else:
            raise ValueError(f"no seeding rule for parameter {name} of shape {tuple(param.shape)}")
        param.copy_(_bf16_exact(value))


BF16_INPUTS = ("x_B_C_T_H_W", "crossattn_emb", "latent_control_input")


def make_inputs(generator: torch.Generator, state_t: int, proj_in_channels: int) -> dict[str, torch.Tensor]:
    T = VIEWS * state_t
    cond_mask = torch.zeros(BATCH, 1, VIEWS, state_t, LATENT_H, LATENT_W)
    for b, n in enumerate(CONDITIONING_FRAMES_OF_SAMPLE):
        cond_mask[b, :, :, :n] = 1.0
    view_indices = torch.tensor(VIEW_IDS_OF_SAMPLE).repeat_interleave(state_t, dim=1)  # B (V T), view-major
    return {
        "x_B_C_T_H_W": _bf16_exact(torch.randn(BATCH, 16, T, LATENT_H, LATENT_W, generator=generator)),
        "timesteps_B_T": torch.rand(BATCH, T, generator=generator) * 1000,  # one per latent frame
        "crossattn_emb": _bf16_exact(
            torch.randn(BATCH, VIEWS * TEXT_TOKENS_PER_VIEW, proj_in_channels, generator=generator)
        ),
        "latent_control_input": _bf16_exact(torch.randn(BATCH, 16, T, LATENT_H, LATENT_W, generator=generator)),
        "condition_video_input_mask_B_C_T_H_W": cond_mask.reshape(BATCH, 1, T, LATENT_H, LATENT_W),
        # Pixel resolution (8x the latent), random bits: checks the nearest-neighbour resize exactly.
        "padding_mask": (torch.rand(BATCH, 1, 8 * LATENT_H, 8 * LATENT_W, generator=generator) < 0.3).float(),
        "view_indices_B_T": view_indices,
    }


def _git_commit(path: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path, help="checkout of nvidia-cosmos/cosmos-transfer2.5")
    parser.add_argument("--transformer-engine", required=True, type=Path, help="checkout of NVIDIA/TransformerEngine")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path, marker in ((args.upstream, "cosmos_transfer2"), (args.transformer_engine, "transformer_engine")):
        if not (path / marker).is_dir():
            parser.error(f"{path} has no {marker}/ folder: pass the root of the checkout")

    torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        try:
            MultiViewControlDiT, minimal_v4_dit = import_upstream(args.upstream, args.transformer_engine)
            torch.manual_seed(args.seed)  # upstream's own init, overwritten below
            net = MultiViewControlDiT(**UPSTREAM_KWARGS, sac_config=minimal_v4_dit.SACConfig(mode="none")).eval()
            generator = torch.Generator().manual_seed(args.seed)
            seed_weights(net, generator)
            inputs = make_inputs(generator, UPSTREAM_KWARGS["state_t"], UPSTREAM_KWARGS["crossattn_proj_in_channels"])
            common = dict(
                x_B_C_T_H_W=inputs["x_B_C_T_H_W"],
                timesteps_B_T=inputs["timesteps_B_T"],
                crossattn_emb=inputs["crossattn_emb"],
                latent_control_input=inputs["latent_control_input"],
                condition_video_input_mask_B_C_T_H_W=inputs["condition_video_input_mask_B_C_T_H_W"],
                padding_mask=inputs["padding_mask"],
                control_context_scale=CONTROL_CONTEXT_SCALE,
            )
            with torch.no_grad():
                velocity_views = net(**common, view_indices_B_T=inputs["view_indices_B_T"])
                velocity_default = net(**common)
                velocity_no_control = net(**{**common, "control_context_scale": 0.0})
        finally:
            dist.destroy_process_group()

    scale = velocity_views.abs().mean().item()
    control_effect = (velocity_views - velocity_no_control).abs().mean().item() / scale
    if not (torch.isfinite(velocity_views).all() and control_effect > 0.05):
        raise RuntimeError(f"degenerate golden: velocity scale {scale}, control branch effect {control_effect:.3f}")

    parameter_names = {name for name, _ in net.named_parameters()}
    tensors = {}
    for key, value in net.state_dict().items():  # parameters in bf16 as in a released file, buffers as saved
        value = value.detach().contiguous()
        tensors[f"net.{key}"] = value.to(torch.bfloat16) if key in parameter_names else value
    for key in BF16_INPUTS:  # drawn bf16-exact: stored in bf16, read back as the same fp32 values
        inputs[key] = inputs[key].to(torch.bfloat16)
    tensors.update({f"input.{k}": v.contiguous() for k, v in inputs.items()})
    tensors["output.velocity_view_indices"] = velocity_views.contiguous()
    tensors["output.velocity_default_views"] = velocity_default.contiguous()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / "multiview_golden.safetensors"
    save_file(tensors, str(weights_path))
    command = "python scripts/make_multiview_golden.py --upstream <cosmos-transfer2.5> --transformer-engine <TE>"
    description = {
        "what": "Velocity of the official MultiViewControlDiT (fp32, CPU) on a tiny seeded network; see the script.",
        "made_by": "scripts/make_multiview_golden.py",
        "command": command,
        "upstream_class": UPSTREAM_CLASS,
        "upstream_repository": "nvidia-cosmos/cosmos-transfer2.5",
        "upstream_commit": _git_commit(args.upstream),
        "transformer_engine_repository": "NVIDIA/TransformerEngine",
        "transformer_engine_commit": _git_commit(args.transformer_engine),
        "torch_version": torch.__version__,
        "seed": args.seed,
        "upstream_kwargs": {**UPSTREAM_KWARGS, "sac_config": {"mode": "none"}},
        "our_preset": OUR_PRESET,
        "our_overrides": OUR_OVERRIDES,
        "forward": {
            "control_context_scale": CONTROL_CONTEXT_SCALE,
            "fps": None,
            "calls": {
                "output.velocity_view_indices": "all inputs, view_indices_B_T = input.view_indices_B_T",
                "output.velocity_default_views": "all inputs but view_indices_B_T (upstream numbers views 0..V-1)",
            },
        },
        "measured": {"velocity_mean_abs": scale, "control_branch_effect_relative": control_effect},
        "weights": "net.* = upstream state_dict(): parameters in bf16 (fp32 in the forward, exact), buffers as saved",
    }
    (args.out_dir / "multiview_golden.json").write_text(json.dumps(description, indent=2) + "\n")
    print(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB) and multiview_golden.json")
    print(f"velocity mean |v| {scale:.4f}; control branch moves it by {control_effect:.1%}")


if __name__ == "__main__":
    main()
