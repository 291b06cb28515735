"""Sample videos during training, as the official recipe's sample callbacks do (upstream's experiment config
``transfer2_auto_multiview_post_train_example`` samples every 200 iterations, 35 steps, guidance 7), and score
them against their clips, so a run shows whether post-training makes the model follow its controls.

Every ``every_n_batches`` batches the EMA network (``model.net_ema``; ``model.net`` when the EMA is off)
generates videos for a FIXED held-out set, ``num_samples`` items x ``seeds``, with the prompts, sampler and
video writer of ``scripts/generate.py`` (:mod:`cosmos_composer.generation`). The items are the first
``num_samples`` items of the eval loader's dataset when the run has one, else of the train dataset; every call
samples the same items with the same seeds and prompts, so the numbers of one call compare with the next. The
files go to ``<output_dir>/ba<batch>/`` (a training run sets ``<run folder>/samples``), one mp4 per item and
seed (multiview: one per view plus the tiled overview), and to W&B when a W&B logger is configured.

Each sample is scored against its clip's ground truth with the metrics that need no model
(:mod:`cosmos_composer.evaluation`): Blur SSIM and Edge F1 / precision / recall for every control, and for
multiview TSE and CSE (Sampson errors in pixels, measured on the generated views). The ground truth is the
item's own video at the sampled resolution and length, decoded from the shard's mp4 also when training reads
cached latents (:meth:`TransferStreamingDataset.reference_video`); the sample is the VAE-decoded frames as
written to the mp4 (before its lossy encoding). Both are uint8 RGB ``[T, H, W, 3]`` per view. The mean over
the held-out items and seeds is logged as ``metrics/samples/<name>`` and their standard deviation as
``metrics/samples/<name>_std``, at the batch of the call, to every logger (``metrics.jsonl``, W&B), and
``loss.png`` is redrawn with them. A non-finite value (TSE / CSE when no frame pair has enough keypoint
matches) is logged as it is, so the mean is non-finite too, and warned about once per metric, naming the item.

Each video is sampled by all the launch's ranks together, with context parallelism as ``scripts/generate.py``
under a launcher: every rank runs the network on its share of the video's latent frames and heads
(:mod:`cosmos_composer.models.context_parallel`), so a call costs each of N ranks about 1/N of one process's
network work, whatever the training layout (data parallel, or context parallel over fewer ranks). The group is
the largest size that splits the network's heads, the ranks and the video's latent frames (all ranks when they
do; the groups beyond it then sample the same video). Every rank ends with the whole video; only rank 0 decodes,
writes, scores and logs, so the files and metrics are those of one process. Its line ``sample_videos: ...``
says the latent frames each rank's network ran, against one process's.

YAML::

    callbacks:
      power_ema: {sigma_rel: 0.1}
      sample_videos:            # after power_ema, so samples see this batch's EMA update
        every_n_batches: 200
        guidance: 7.0
        steps: 35
        num_samples: 2          # held-out items (the eval loader's when there is one)
        seeds: [0]
        metrics: null           # null: every model-free metric; [] scores nothing
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from composer.core import Callback, State
from composer.core.precision import get_precision_context
from composer.loggers import Logger, WandBLogger
from composer.utils import dist
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset import collate_samples
from ..diffusion import sampler
from ..evaluation.registry import METRICS, MODEL_FREE_METRICS, default_metrics, parse_metric_names, score_video
from ..generation.outputs import decode_sample, write_frames
from ..generation.prompts import negative_context, prompt_context
from ..models.context_parallel import ContextParallel, context_parallel_groups, valid_context_parallel_sizes
from ..models.parallelize import apply_context_parallel, ema_weights, reshard
from .loss_plot import SAMPLES_PREFIX, SPREAD_SUFFIX, LossPlot

log = logging.getLogger(__name__)


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def held_out_dataset(state: State) -> tuple[Any, str]:
    """The dataset the samples come from and which it is: the eval loader's (``"eval"``) when the run has
    one, else the train loader's (``"train"``)."""
    for evaluator in state.evaluators or []:
        dataset = getattr(evaluator.dataloader.dataloader, "dataset", None)
        if dataset is not None:
            return dataset, "eval"
    return getattr(state.train_dataloader, "dataset", None), "train"


def dataset_size(dataset) -> int:
    """Items of the whole dataset (a StreamingDataset's ``num_samples``; ``len`` is one rank's share)."""
    return int(getattr(dataset, "num_samples", None) or len(dataset))


def sampling_context_parallel_size(world_size: int, num_heads: int, num_frames: int) -> int:
    """Ranks that sample one video together: the largest group of consecutive ranks whose size splits the
    network's heads, the ranks and the video's ``num_frames`` latent frames (views x frames)."""
    return valid_context_parallel_sizes(num_heads, world_size, num_frames)[-1]


@contextlib.contextmanager
def sampling_layout(net, context_parallel: Optional[ContextParallel]):
    """Run ``net`` with ``context_parallel`` (None: each rank the whole video), the training layout back on exit."""
    training = net.context_parallel
    apply_context_parallel(net, context_parallel)
    try:
        yield net
    finally:
        apply_context_parallel(net, training)


class FramesRun:
    """Counts the latent frames this rank's network embeds (its share of each video's work) and its forwards,
    with a hook on the patch embedding while the ``with`` block runs."""

    def __init__(self, net):
        self.net = net
        self.frames = 0
        self.forwards = 0

    def _count(self, module, args, output) -> None:
        self.frames += args[0].shape[2]  # [B, C, T, H, W]: this rank's latent frames
        self.forwards += 1

    def __enter__(self) -> "FramesRun":
        self.handle = self.net.x_embedder.register_forward_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def reference_frames(dataset, index: int, item: dict[str, Any]) -> np.ndarray:
    """The ground truth of item ``index``: its own video, uint8 ``[V*F, H, W, 3]`` (views one after another).

    The item's decoded ``video`` when the dataset serves it, else the frames its cached latents encode, decoded
    from the shard's mp4 (:meth:`TransferStreamingDataset.reference_video`).
    """
    video_3_VF_H_W = item["video"] if "video" in item else dataset.reference_video(index)
    return video_3_VF_H_W.permute(1, 2, 3, 0).numpy()


def score_sample(
    generated_VT_H_W_3: np.ndarray,
    reference_VT_H_W_3: np.ndarray,
    num_views: int,
    names: Optional[Sequence[str]] = None,
    cameras: Optional[Sequence[str]] = None,
) -> dict[str, float]:
    """``{metric: value}`` of one generated sample against its ground truth, both uint8 ``[V*T, H, W, 3]`` with
    the views one after another; ``names`` None: every model-free metric for ``num_views`` (TSE and CSE only for
    multiview). ``cameras`` name the views, for CSE's neighbouring camera pairs."""
    names = names or default_metrics(multiview=num_views > 1)
    generated_views = np.split(generated_VT_H_W_3, num_views, axis=0)
    reference_views = np.split(reference_VT_H_W_3, num_views, axis=0)
    return score_video(generated_views, reference_views, names, cameras=cameras)


class SampleVideos(Callback):
    """Write and score sample videos of a fixed held-out set every ``every_n_batches`` batches.

    Args:
        every_n_batches: sampling interval in batches (the official recipe: 200).
        prompts: fixed prompts, used in turn for the items of a call; None uses each item's own caption
            (or its cached text embedding). Prompts need ``encoders.text``.
        seeds: one video per seed and item (the initial noise depends on the seed only).
        guidance: classifier-free guidance, ``cond + guidance * (cond - uncond)`` (the recipe: 7).
        steps: UniPC steps (the recipe: 35).
        shift: sigma shift of the schedule (5).
        num_samples: held-out items per call: the first ``num_samples`` items of the eval loader's dataset, else
            of the train dataset; the same items at every call.
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
        metrics: the metrics each sample is scored with, of ``MODEL_FREE_METRICS`` (``blur_ssim``, ``edge_f1``,
            ``edge_precision``, ``edge_recall``, ``tse``, ``cse``); None: all of them for the run's views (TSE
            and CSE for multiview only); an empty list scores nothing.
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
        metrics: Optional[Sequence[str]] = None,
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
        self.metrics = _check_metric_names(metrics)  # None: the defaults for the sample's views
        self.scoring = self.metrics != []
        self.written: list[Path] = []  # every file this callback wrote (rank 0)
        self.groups: dict[int, ContextParallel] = {}  # sampling groups by size, made at the first call that needs one
        # The last call's work: latent frames each rank's network ran, and what one process runs (rank 0).
        self.frames_per_rank: list[int] = []
        self.frames_one_process = 0
        self.warned_nonfinite: set[str] = set()  # metrics whose non-finite value was warned about (rank 0)

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
        if self.metrics and "cse" in self.metrics and not model.net.config.is_multiview:
            raise ValueError(
                "callbacks.sample_videos.metrics has cse, which compares cameras with each other, but the model is "
                "single view; leave cse out"
            )
        dataset, which = held_out_dataset(state)
        if dataset is None or not hasattr(dataset, "__getitem__"):
            raise ValueError(
                f"callbacks.sample_videos takes its control videos from the {which} dataset, which has no items"
            )
        size = dataset_size(dataset)
        if size < self.num_samples and dist.get_global_rank() == 0:
            log.warning(
                "sample_videos: num_samples=%d but the %s dataset has %d items; every call samples all %d",
                self.num_samples,
                which,
                size,
                size,
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

    def held_out_items(self, size: int) -> list[int]:
        """The dataset items every call samples: the first ``num_samples`` (all of them in a smaller dataset)."""
        return list(range(min(self.num_samples, size)))

    def _context_parallel(self, net, num_frames: int) -> Optional[ContextParallel]:
        """This rank's group for sampling a video of ``num_frames`` latent frames (None: one rank per video)."""
        size = sampling_context_parallel_size(dist.get_world_size(), net.config.num_heads, num_frames)
        if size == 1:
            return None
        training = net.context_parallel
        if training is not None and training.size == size:
            return training
        if size not in self.groups:
            # Collective: every rank reaches it at the same item (all ranks sample the same items in turn).
            self.groups[size] = context_parallel_groups(size)
        return self.groups[size]

    @torch.no_grad()
    def _sample(self, state: State, logger: Logger, batch_index: int) -> None:
        model = _unwrap(state.model)
        # The EMA's trainable weights are swapped into `net`, which runs through its FSDP2 units.
        with ema_weights(model.net, getattr(model, "net_ema", None) if self.use_ema else None) as net:
            self._sample_items(state, logger, batch_index, model, net)

    def _sample_items(self, state: State, logger: Logger, batch_index: int, model, net) -> None:
        vae, text_embedder = model.encoders.vae, model.encoders.text_embedder
        dataset, _ = held_out_dataset(state)
        is_rank_zero = dist.get_global_rank() == 0
        folder = self._output_dir(state) / f"ba{batch_index}"
        written: list[Path] = []
        camera_origins = dict(model.net.config.camera_origins)  # the caption prefixes of the rig's cameras
        scores: dict[str, dict[str, float]] = {}  # {sample: {metric: value}}, rank 0
        scoring_s = 0.0
        started_call = time.perf_counter()
        frames_run = FramesRun(net)
        frames_one_process = 0
        group_sizes = set()

        for sample_number, index in enumerate(self.held_out_items(dataset_size(dataset))):
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
            reference_VF_H_W_3 = None
            num_frames = inputs["control"].shape[2]
            context_parallel = self._context_parallel(net, num_frames // net.config.patch_temporal)
            group_sizes.add(1 if context_parallel is None else context_parallel.size)
            for seed in self.seeds:
                # The sampler feeds the network in its first parameter's dtype: the stored one (bf16, frozen) for
                # every video as for the first and as in one process, not the compute dtype of the root's copy
                # that FSDP2 keeps after a forward (fp32 in an fp32 run), so each video is the one of its seed.
                reshard(net)
                forwards_before = frames_run.forwards
                with get_precision_context(state.precision), sampling_layout(net, context_parallel), frames_run:
                    latents = sampler.sample(
                        net,
                        conditioning,
                        guidance=self.guidance,
                        num_steps=self.steps,
                        shift=self.shift,
                        seed=seed,
                        progress=self.progress and is_rank_zero,
                    )
                frames_one_process += (frames_run.forwards - forwards_before) * num_frames
                if not is_rank_zero:
                    continue
                output = folder / f"{index:05d}_{_safe(name)}_seed{seed}.mp4"
                generated_VT_H_W_3 = decode_sample(vae, latents, num_views)
                written += write_frames(generated_VT_H_W_3, output, fps, cameras)
                self._log_to_wandb(logger, output, batch_index, sample_number, seed)
                if not self.scoring:
                    continue
                started = time.perf_counter()
                if reference_VF_H_W_3 is None:
                    reference_VF_H_W_3 = reference_frames(dataset, index, item)
                scores[f"item {index} ({name}) seed {seed}"] = score_sample(
                    generated_VT_H_W_3, reference_VF_H_W_3, num_views, self.metrics, cameras
                )
                scoring_s += time.perf_counter() - started
        frames_per_rank = dist.all_gather_object(frames_run.frames)
        if is_rank_zero:
            self.written += written
            self.frames_per_rank, self.frames_one_process = frames_per_rank, frames_one_process
            print(
                f"sample_videos: wrote {len(written)} files to {folder} in {time.perf_counter() - started_call:.1f} s; "
                f"each video over {'/'.join(map(str, sorted(group_sizes)))} rank(s) (context parallelism): latent "
                f"frames run per rank {frames_per_rank}, one process runs {frames_one_process}",
                flush=True,
            )
            if scores:
                started = time.perf_counter()
                self._log_scores(state, logger, batch_index, scores)
                scoring_s += time.perf_counter() - started
                log.info("sample_videos: scored %d samples and redrew the plot in %.1f s", len(scores), scoring_s)
        dist.barrier()

    # ------------------------------------------------------------------ metrics
    def _log_scores(self, state: State, logger: Logger, batch_index: int, scores: dict[str, dict[str, float]]) -> None:
        """Log the mean and spread of each metric over the samples, warn once per metric about a non-finite
        value, and redraw ``loss.png`` with them."""
        names = list(dict.fromkeys(name for sample_scores in scores.values() for name in sample_scores))
        logged = {}
        for name in names:
            values = {sample: sample_scores[name] for sample, sample_scores in scores.items()}
            array = np.array(list(values.values()), dtype=np.float64)
            # As is: a non-finite value makes the mean non-finite rather than leaving the sample out, so a
            # degenerate sample (no keypoints to match) cannot make the error of the others look like the set's.
            mean, spread = float(array.mean()), float(array.std())
            logged[f"{SAMPLES_PREFIX}{name}"] = mean
            logged[f"{SAMPLES_PREFIX}{name}{SPREAD_SUFFIX}"] = spread
            self._warn_nonfinite(name, values, batch_index, mean)
        logger.log_metrics(logged, step=batch_index)
        for callback in state.callbacks:
            if isinstance(callback, LossPlot):
                callback.draw(logger)

    def _warn_nonfinite(self, name: str, values: dict[str, float], batch_index: int, mean: float) -> None:
        if name in self.warned_nonfinite:
            return
        for sample, value in values.items():
            if not math.isfinite(value):
                self.warned_nonfinite.add(name)
                log.warning(
                    "sample_videos: %s of %s at batch %d is %s%s; logged as is (%s%s = %s), and later non-finite %s "
                    "values are not warned about",
                    name,
                    sample,
                    batch_index,
                    value,
                    " (no frame pair had enough keypoint matches)" if name in ("tse", "cse") else "",
                    SAMPLES_PREFIX,
                    name,
                    mean,
                    name,
                )
                return

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


def _check_metric_names(names: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The callback's metric names, each one the callback can compute (no model, one value per video)."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    if not names:
        return []
    try:
        parsed = parse_metric_names(list(names))
    except ValueError as error:
        raise ValueError(f"callbacks.sample_videos.metrics: {error}") from None
    needs_more = [name for name in parsed if name not in MODEL_FREE_METRICS]
    if needs_more:
        raise ValueError(
            f"callbacks.sample_videos.metrics={list(names)}: {', '.join(needs_more)} "
            f"({'; '.join(METRICS[name].description for name in needs_more)}) need a model and are computed by "
            f"scripts/evaluate.py, not during training; the callback computes {', '.join(MODEL_FREE_METRICS)}"
        )
    return list(parsed)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]
