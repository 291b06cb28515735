"""Sample videos during training, as the official recipe's sample callbacks do (upstream's experiment config
``transfer2_auto_multiview_post_train_example`` samples every 200 iterations, 35 steps, guidance 7).

Every ``every_n_batches`` batches the EMA network (``model.net_ema``; ``model.net`` when the EMA is off)
generates videos for a few training items with fixed prompts and seeds, with the prompts, sampler and video
writer of ``scripts/generate.py`` (:mod:`cosmos_composer.generation`). Each call takes different dataset items
(call k uses items ``k * num_samples ... k * num_samples + num_samples - 1``, modulo the dataset size),
so over a run the samples cover the data while prompts and seeds stay fixed. The files go to
``<output_dir>/ba<batch>/`` (a training run sets ``<run folder>/samples``), one mp4 per item and seed
(multiview: one per view plus the tiled overview), and to W&B when a W&B logger is configured.

Under FSDP2 every rank runs the same sampling (each network forward gathers the sharded parameters,
a collective); only rank 0 decodes, writes and logs.

YAML::

    callbacks:
      power_ema: {sigma_rel: 0.1}
      sample_videos:            # after power_ema, so samples see this batch's EMA update
        every_n_batches: 200
        guidance: 7.0
        steps: 35
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from composer.core import Callback, State
from composer.core.precision import get_precision_context
from composer.loggers import Logger, WandBLogger
from composer.utils import dist
from torch.nn.parallel import DistributedDataParallel

from ..diffusion import sampler
from ..generation.outputs import write_sample
from ..generation.prompts import negative_context, prompt_context
from ..models.parallelize import ema_weights

log = logging.getLogger(__name__)


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class SampleVideos(Callback):
    """Write sample videos every ``every_n_batches`` batches.

    Args:
        every_n_batches: sampling interval in batches (the official recipe: 200).
        prompts: fixed prompts, used in turn for the items of a call; None uses each item's own caption
            (or its cached text embedding). Prompts need ``encoders.text``.
        seeds: one video per seed and item (the initial noise depends on the seed only).
        guidance: classifier-free guidance, ``cond + guidance * (cond - uncond)`` (the recipe: 7).
        steps: UniPC steps (the recipe: 35).
        shift: sigma shift of the schedule (5).
        num_samples: dataset items per call.
        negative_prompt: text of the unconditional branch; None uses training's dropped text (zeros), as
            the official sample callbacks do by default. Needs ``encoders.text``.
        num_conditional_frames: latent frames per view taken from the item's own video (0: pure transfer).
        control_weight: control strength (1.0 as in training).
        use_ema: sample with ``net_ema`` when the model has one.
        fps: frame rate of the written files (default: the item's fps).
        output_dir: where ``ba<batch>/`` folders go; None: ``samples/`` beside a local checkpoint folder
            (``train.py`` sets ``<run folder>/samples``).
        log_to_wandb: also log the videos to W&B when a W&B logger is configured.
        progress: show a progress bar over the sampling steps (rank 0).
    """

    def __init__(
        self,
        every_n_batches: int = 200,
        prompts: Optional[Sequence[str]] = None,
        seeds: Sequence[int] = (0,),
        guidance: float = sampler.CALLBACK_GUIDANCE,
        steps: int = sampler.DEFAULT_NUM_STEPS,
        shift: float = sampler.DEFAULT_SHIFT,
        num_samples: int = 1,
        negative_prompt: Optional[str] = None,
        num_conditional_frames: int = 0,
        control_weight: float = 1.0,
        use_ema: bool = True,
        fps: Optional[float] = None,
        output_dir: Optional[str] = None,
        log_to_wandb: bool = True,
        progress: bool = False,
    ):
        if every_n_batches < 1:
            raise ValueError(f"callbacks.sample_videos.every_n_batches must be >= 1, got {every_n_batches}")
        if steps < 1:
            raise ValueError(f"callbacks.sample_videos.steps must be >= 1, got {steps}")
        if num_samples < 1:
            raise ValueError(f"callbacks.sample_videos.num_samples must be >= 1, got {num_samples}")
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(seeds, int):
            seeds = [seeds]
        if not seeds:
            raise ValueError("callbacks.sample_videos.seeds must list at least one seed")
        self.every_n_batches = every_n_batches
        self.prompts = list(prompts) if prompts else None
        self.seeds = [int(seed) for seed in seeds]
        self.guidance = float(guidance)
        self.steps = int(steps)
        self.shift = float(shift)
        self.num_samples = int(num_samples)
        self.negative_prompt = negative_prompt
        self.num_conditional_frames = int(num_conditional_frames)
        self.control_weight = float(control_weight)
        self.use_ema = use_ema
        self.fps = fps
        self.output_dir = output_dir
        self.log_to_wandb = log_to_wandb
        self.progress = progress
        self.written: list[Path] = []  # every file this callback wrote (rank 0)

    # ------------------------------------------------------------------ checks
    def fit_start(self, state: State, logger: Logger) -> None:
        model = _unwrap(state.model)
        encoders = getattr(model, "encoders", None)
        if encoders is None or encoders.vae is None:
            raise ValueError(
                "callbacks.sample_videos needs a VAE to decode the samples: set `encoders.vae` in the config "
                "(tiny, a path or an hf:// URI), or remove the sample_videos callback"
            )
        if (self.prompts or self.negative_prompt is not None) and encoders.text_embedder is None:
            raise ValueError(
                "callbacks.sample_videos.prompts / negative_prompt need a text encoder: set `encoders.text`, or "
                "drop them to sample with each item's own (cached) caption embedding and zero negative text"
            )
        dataset = getattr(state.train_dataloader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__getitem__"):
            raise ValueError(
                "callbacks.sample_videos takes its control videos from the train dataset, which has no items"
            )

    # ------------------------------------------------------------------ where files go
    def _output_dir(self, state: State) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        from composer.callbacks import CheckpointSaver
        from composer.utils.file_helpers import format_name_with_dist

        for callback in state.callbacks:
            if isinstance(callback, CheckpointSaver) and "://" not in str(callback.folder):
                return Path(format_name_with_dist(str(callback.folder), state.run_name)).parent / "samples"
        raise ValueError(
            "callbacks.sample_videos has no folder to write to: set its output_dir, or save checkpoints to a local "
            "folder (the samples then go beside it)"
        )

    # ------------------------------------------------------------------ sampling
    def batch_end(self, state: State, logger: Logger) -> None:
        batch_index = int(state.timestamp.batch)
        if batch_index % self.every_n_batches:
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        # Sampling must not move the training RNG streams (a resumed run would draw differently).
        with torch.random.fork_rng(devices=devices):
            self._sample(state, logger, batch_index)

    def _item_indices(self, batch_index: int, dataset_size: int) -> list[int]:
        call = batch_index // self.every_n_batches - 1
        return [(call * self.num_samples + i) % dataset_size for i in range(self.num_samples)]

    @torch.no_grad()
    def _sample(self, state: State, logger: Logger, batch_index: int) -> None:
        model = _unwrap(state.model)
        # The EMA's trainable weights are swapped into `net`, which runs through its FSDP2 units.
        with ema_weights(model.net, getattr(model, "net_ema", None) if self.use_ema else None) as net:
            self._sample_items(state, logger, batch_index, model, net)

    def _sample_items(self, state: State, logger: Logger, batch_index: int, model, net) -> None:
        from ..data.dataset import collate_samples

        vae, text_embedder = model.encoders.vae, model.encoders.text_embedder
        dataset = state.train_dataloader.dataset
        dataset_size = int(getattr(dataset, "num_samples", None) or len(dataset))
        is_rank_zero = dist.get_global_rank() == 0
        folder = self._output_dir(state) / f"ba{batch_index}"
        written: list[Path] = []
        camera_origins = dict(model.net.config.camera_origins)  # the caption prefixes of the rig's cameras

        for sample_number, index in enumerate(self._item_indices(batch_index, dataset_size)):
            item = dataset[index]
            batch = state.device.batch_to_device(collate_samples([item]))
            inputs = model.encode_batch(batch)
            num_views = inputs["num_views"]
            cameras = list(item.get("camera_keys_selection") or []) or None
            context = inputs["context"]
            if self.prompts:
                prompt = self.prompts[sample_number % len(self.prompts)]
                context = prompt_context(text_embedder, prompt, cameras, camera_origins=camera_origins)
            uncond = negative_context(
                net, text_embedder, context, self.negative_prompt, cameras, camera_origins=camera_origins
            )
            conditioning = sampler.Conditioning(
                control=inputs["control"],
                context=context.to(inputs["control"].device),
                uncond_context=uncond.to(inputs["control"].device),
                num_views=num_views,
                view_indices_B_T=inputs["view_indices_B_T"],
                padding_mask=inputs["padding_mask"],
                condition_latents=inputs["x0"] if self.num_conditional_frames else None,
                num_conditional_frames=self.num_conditional_frames,
                control_weight=self.control_weight,
            )
            fps = self.fps or float(item["fps"])
            name = str(item.get("sample_name", f"item{index}"))
            for seed in self.seeds:
                with get_precision_context(state.precision):
                    latents = sampler.sample(
                        net,
                        conditioning,
                        guidance=self.guidance,
                        num_steps=self.steps,
                        shift=self.shift,
                        seed=seed,
                        progress=self.progress and is_rank_zero,
                    )
                if not is_rank_zero:
                    continue
                output = folder / f"{index:05d}_{_safe(name)}_seed{seed}.mp4"
                written += write_sample(vae, latents, num_views, output, fps, cameras)
                self._log_to_wandb(logger, output, batch_index, sample_number, seed)
        if is_rank_zero:
            self.written += written
            log.info("sample_videos: wrote %d files to %s", len(written), folder)
        dist.barrier()

    def _log_to_wandb(self, logger: Logger, video_path: Path, batch_index: int, sample_number: int, seed: int) -> None:
        if not self.log_to_wandb:
            return
        for destination in logger.destinations:
            if isinstance(destination, WandBLogger):
                import wandb

                destination.log_metrics(
                    {f"samples/item{sample_number}_seed{seed}": wandb.Video(str(video_path), format="mp4")},
                    step=batch_index,
                )


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]
