"""The training dataset: MDS shards -> the sample dict of the official loaders (upstream
``_src/predict2_multiview/datasets/multiview.py`` and ``transfer2_multiview/configs/vid2vid_transfer/defaults/dataloader_local.py``).

:class:`TransferStreamingDataset` is a ``streaming.StreamingDataset``, so shards can live in a local
folder or behind any ``remote`` Streaming supports (``s3://``, ``gs://``, ``oci://``, another folder,
...), are shared by ranks and workers, and the position in the epoch is saved and restored through
``StreamingDataLoader.state_dict()`` / ``load_state_dict()``.

Each sample (V views of F frames, resized to H x W; V = the run's cameras for multiview, 1 for single view):

=====================================  ==========================  =====================================
key                                    type                        content
=====================================  ==========================  =====================================
``sample_name``                        str                         the source file stem
``video``                              uint8 ``[3, V*F, H, W]``    views concatenated along time
``control_input_<key>``                uint8 ``[3, V*F, H, W]``    e.g. ``control_input_hdmap_bbox``
``ai_caption``                         list of V str               with the camera prefixes (multiview)
``view_indices``                       int64 ``[V*F]``             view id of each frame
``view_indices_selection``             int64 ``[V]``               view id of each view
``camera_keys_selection``              list of V str               camera names (``[]`` single view)
``sample_n_views``                     int64 scalar                V
``num_video_frames_per_view``          int64 scalar                F
``fps``                                float64 scalar              the frame rate served (``--fps``)
``frame_indices``                      int64 ``[F]``               source frames used (in the mp4)
``chunk_index``                        int64 scalar                0
``padding_mask``                       float32 ``[1, H, W]``       zeros (no padding)
``image_size``                         int64 ``[4]``               ``[H, W, H, W]``
``original_hw``                        int64 ``[V, 2]``            source size of each view
``ref_cam_view_idx_sample_position``   int64 scalar                -1
``front_cam_view_idx_sample_position`` int64 scalar                0
=====================================  ==========================  =====================================

``video``, ``control_input_<key>`` and ``original_hw`` are present only with ``decode_video=True``.
A row serves ``num_frames`` frames at ``fps``; served frame ``j`` is a source frame picked by
:func:`~cosmos_composer.data.clip.source_frame_indices` (every ``frame_step``-th from ``frame_start``,
see :mod:`~cosmos_composer.data.mds`). A clip cut into windows (``--window-stride``) is one row per window.
The view id of a camera is its position in the run's camera list (``cameras``; default the 7 official
``DEFAULT_CAMERAS``, so the official ids). The views are served in that order; the shards may hold more
cameras (or hold them in another order), but must hold every listed one.

When the shards hold cached columns (``convert_to_mds.py --precompute``) these are added:
``video_latent`` / ``control_latent`` float16 ``[16, V*t, h, w]``, ``text_embedding`` float16
``[V*512, D]``, ``text_embedding_kind`` (str) and ``crossattn_proj_fingerprint`` (str).
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from streaming import StreamingDataset
from streaming.base.dataloader import StreamingDataLoader
from streaming.base.format import Reader
from streaming.base.format.base.reader import FileInfo
from streaming.base.hashing import get_hash

from cosmos_composer.data import mds
from cosmos_composer.data.cameras import caption_camera, parse_cameras, view_captions
from cosmos_composer.data.clip import load_clip, row_cameras, source_frame_indices
from cosmos_composer.data.layouts import (
    DEFAULT_MIN_FRAMES,
    MULTIVIEW_HDMAP,
    ON_THE_FLY_CONTROLS,
    SINGLEVIEW,
    normalize_control_key,
)

# Training resolution of the official recipes (reference 4.6): multiview 720 x 1280, single view 704 x 1280.
DEFAULT_RESOLUTION = {MULTIVIEW_HDMAP: (720, 1280), SINGLEVIEW: (704, 1280)}
SHARD_FIX = "convert the dataset again with scripts/convert_to_mds.py, or download (copy) the shard again"

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A shard file is truncated or corrupt; the message names the file, what is wrong and the fix."""


def _shard_files(shard: Reader) -> list[tuple[str, FileInfo]]:
    """Local path and index.json record of each file of ``shard`` (the raw file and, if compressed, the zip)."""
    return [
        (os.path.join(shard.dirname, shard.split, info.basename), info)
        for pair in shard.file_pairs
        for info in pair
        if info is not None
    ]


def _file_stat(path: str) -> tuple:
    """What changes when a file is rewritten or replaced: (size, mtime in ns, inode); None when it is absent."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return (None,)
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class TransferStreamingDataset(StreamingDataset):
    """Cosmos-Transfer2.5 training samples from MDS shards written by ``scripts/convert_to_mds.py``.

    Args:
        remote: where the shards are (``s3://bucket/path``, ``gs://...``, a folder); None if ``local`` has them.
        local: local folder for the shards (the dataset itself, or the download cache of ``remote``).
        num_frames: frames per view F (default: 29 multiview, 93 single view, as the recipes).
        height, width: training resolution (default: 720 x 1280 multiview, 704 x 1280 single view).
        control_key: ``hdmap_bbox`` | ``depth`` | ``seg`` | ``edge`` | ``vis`` (``blur``); default: the
            stored control video of the shards, else ``edge`` (so ask for ``vis`` explicitly).
        random_start: start each clip at a random served frame of its row instead of frame 0 (decoded
            video only; a window row of exactly ``num_frames`` frames always starts at 0).
        decode_video: decode the mp4s; set False to train from cached latents only.
        use_cached_latents, use_cached_text: serve the cached columns when the shards have them.
        random_control_params: random edge thresholds / blur parameters as in upstream training;
            False uses upstream's fixed "medium" preset.
        augment_seed: seeds the per-sample random choices (start frame, control parameters), which
            depend only on (augment_seed, epoch, sample index), so a resumed run sees the same ones.
        cameras: multiview: the run's cameras in view order (None: the 7 official ones); the shards must hold
            each (``ValueError`` naming the shards, the listed and the held cameras otherwise). An entry
            ``name=official`` gives camera ``name`` the caption prefix of that official camera
            (``cameras.parse_cameras``).
            Training sets each of these from the keys of the same names under ``<loader>.dataset`` (``DatasetConfig``).
        **streaming_kwargs: passed to ``StreamingDataset`` (``shuffle``, ``shuffle_seed``,
            ``batch_size``, ``predownload``, ``cache_limit``, ``split``, ...).

    Shard files are checked against their index.json: local files' sizes when the dataset is built
    (:class:`ShardError` for a truncated one), their xxh64 hash on the first read of each shard in each
    process (and again when a shard file's size, mtime or inode has changed since it was hashed: replaced or
    rewritten meanwhile), and downloaded files by Streaming's ``validate_hash``. Datasets converted before
    hashes were written are read unverified.
    """

    def __init__(
        self,
        *,
        remote: str | None = None,
        local: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        control_key: str | None = None,
        random_start: bool = False,
        decode_video: bool = True,
        use_cached_latents: bool = True,
        use_cached_text: bool = True,
        random_control_params: bool = True,
        augment_seed: int = 0,
        cameras: Sequence[str] | None = None,
        **streaming_kwargs: Any,
    ) -> None:
        super().__init__(remote=remote, local=local, **streaming_kwargs)
        self._unverified_shards = self._check_shard_files(remote or local)
        self._verified_stats: dict[int, list[tuple]] = {}  # shard id -> its files' `_file_stat` when hashed
        columns = set(self.shards[0].column_names)
        for shard in self.shards[1:]:
            if set(shard.column_names) != columns:
                raise ValueError(
                    f"the shards of {remote or local} do not all have the same columns; they come from different "
                    f"conversions. Fix: convert the dataset again into one output folder"
                )
        if mds.SAMPLE_NAME not in columns or mds.CAMERA_NAMES not in columns:
            raise ValueError(
                f"{remote or local} was not written by scripts/convert_to_mds.py (columns: {sorted(columns)}). "
                f"Fix: convert the official folder layout with scripts/convert_to_mds.py"
            )
        self.layout = SINGLEVIEW if mds.video_column(None) in columns else MULTIVIEW_HDMAP
        self.columns = columns
        # camera_origins: {mapped camera: the official camera whose caption prefix it gets}
        self.cameras, self.camera_origins = self._served_cameras(cameras, remote or local)
        self.num_frames = num_frames or DEFAULT_MIN_FRAMES[self.layout]
        default_h, default_w = DEFAULT_RESOLUTION[self.layout]
        self.height, self.width = height or default_h, width or default_w
        stored_controls = sorted(
            c for c in columns if c.startswith("control_") and c not in (mds.CONTROL_KEY, mds.CONTROL_LATENT)
        )
        self.control_key = normalize_control_key(control_key or self._stored_control_key(stored_controls), self.layout)
        self.random_start = random_start
        self.decode_video = decode_video
        self.use_cached_latents = use_cached_latents and mds.VIDEO_LATENT in columns
        self.use_cached_text = use_cached_text and mds.TEXT_EMBEDDING in columns
        self.random_control_params = random_control_params
        self.augment_seed = augment_seed
        if not decode_video and not self.use_cached_latents:
            raise ValueError(
                f"decode_video=False needs cached latents, but {remote or local} has no {mds.VIDEO_LATENT!r} column. "
                f"Fix: convert with `--precompute latents`, or set decode_video=True"
            )
        if self.use_cached_latents and random_start:
            raise ValueError(
                "random_start=True cannot be used with cached latents (they encode each row's served frames "
                "0..F-1). Fix: set random_start=False (convert with --window-stride to train on every part of "
                "long clips), or use_cached_latents=False to encode online"
            )
        if self.control_key not in ON_THE_FLY_CONTROLS and decode_video:
            missing = [c for c in self._control_columns() if c not in columns]
            if missing:
                raise ValueError(
                    f"control_key={self.control_key!r} needs the columns {missing}, which {remote or local} lacks "
                    f"(it stores: {stored_controls or 'no control videos'}). Fix: pick the control the dataset was "
                    f"converted with, edge or vis, or convert again with --control-key {self.control_key}"
                )

    def _check_shard_files(self, where: str | None) -> set[int]:
        """Check the size of each local shard file against index.json (cheap: no hashing up front).

        Returns the ids of the local shards to hash on their first read: Streaming checks
        ``validate_hash`` only on files it downloads or decompresses, never on files already local.
        """
        files = [
            (shard_id, path, info) for shard_id, shard in enumerate(self.shards) for path, info in _shard_files(shard)
        ]
        local = set()
        for shard_id, path, info in files:
            if not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if size != info.bytes:
                raise ShardError(
                    f"shard file {path} is {size} bytes, but its index.json records {info.bytes} bytes (truncated "
                    f"or overwritten). Fix: {SHARD_FIX}"
                )
            local.add(shard_id)
        self.shard_hash = next((a for a in mds.SHARD_HASHES if all(a in info.hashes for *_, info in files)), None)
        if self.shard_hash is None:
            log.info(
                "the shards of %s record no hash (converted before hashes were written), so they are not verified; "
                "convert again to have them verified",
                where,
            )
            return set()
        for stream in self.streams:
            stream.validate_hash = stream.validate_hash or self.shard_hash
        return local

    def _shard_stats(self, shard_id: int) -> list[tuple]:
        return [_file_stat(path) for path, _ in _shard_files(self.shards[shard_id])]

    def _needs_hashing(self, shard_id: int) -> bool:
        """Not hashed yet in this process, or changed on disk since (a stat per file: cheap beside a read)."""
        if shard_id in self._unverified_shards:
            return True
        hashed = self._verified_stats.get(shard_id)
        return hashed is not None and hashed != self._shard_stats(shard_id)

    def _verify_shard(self, shard_id: int) -> None:
        """Compare the hash of each local file of a shard with index.json's (once per shard and process, and
        again after the files change)."""
        stats = self._shard_stats(shard_id)  # before hashing: a change during the hash is seen at the next read
        for path, info in _shard_files(self.shards[shard_id]):
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                actual = get_hash(self.shard_hash, data)
            if actual != info.hashes[self.shard_hash]:
                raise ShardError(
                    f"shard file {path} is corrupt: its {self.shard_hash} hash is {actual}, but its index.json records "
                    f"{info.hashes[self.shard_hash]}. Fix: {SHARD_FIX}"
                )
        self._unverified_shards.discard(shard_id)
        self._verified_stats[shard_id] = stats

    def _served_cameras(
        self, cameras: Sequence[str] | None, where: str | None
    ) -> tuple[tuple[str | None, ...], dict[str, str]]:
        """The cameras to serve, in view order, each held by the shards (one ``video_<camera>`` column), and the
        official camera each mapped one starts from."""
        if self.layout == SINGLEVIEW:
            if cameras:
                raise ValueError(
                    f"cameras={list(cameras)} is for multiview shards, but {where} holds single-view samples. "
                    f"Fix: set cameras to null"
                )
            return (None,), {}
        rig = parse_cameras(cameras, "dataset.cameras")
        listed, cameras = cameras or rig.names, rig.names
        held = sorted(c[len("video_") :] for c in self.columns if c.startswith("video_") and c != mds.VIDEO_LATENT)
        missing = [camera for camera in cameras if camera not in held]
        if missing:
            raise ValueError(
                f"the run's cameras {list(cameras)} include {missing}, which the shards of {where} do not hold "
                f"(their index.json columns hold the cameras {held}). Fix: set train_loader.dataset.cameras (and "
                f"eval_loader's) to cameras the shards hold, or convert with --cameras {','.join(listed)}"
            )
        return cameras, rig.origins

    def _select_views(self, row: dict, caption: str) -> tuple[list[int], list[str]]:
        """Positions of the served cameras among the row's stored ones, and the served views' captions.

        Captions follow the stored list's caption camera (the one whose caption file was converted), so
        decoded and cached text agree whatever subset is served.
        """
        stored = list(row_cameras(row))
        positions = [stored.index(camera) for camera in self.cameras]
        captions = view_captions(caption, stored, self.camera_origins)
        return positions, [captions[p] for p in positions]

    @staticmethod
    def _take_views(array: np.ndarray, positions: list[int], num_stored: int, axis: int) -> torch.Tensor:
        """Cached ``array`` with views concatenated along ``axis`` -> the views at ``positions``, in that order."""
        if positions == list(range(num_stored)):
            return torch.from_numpy(array.copy())
        views = np.split(array, num_stored, axis=axis)
        return torch.from_numpy(np.concatenate([views[p] for p in positions], axis=axis))

    def _stored_control_key(self, stored_controls: list[str]) -> str:
        for key in ("hdmap_bbox", "depth", "seg"):
            if any(c == f"control_{key}" or c.startswith(f"control_{key}_") for c in stored_controls):
                return key
        return "edge"  # no stored control video: the shards were converted for edge or vis

    def _control_columns(self) -> list[str]:
        return [mds.control_column(self.control_key, camera) for camera in self.cameras]

    def _rng(self, index: int) -> np.random.Generator:
        epoch = max(self.next_epoch - 1, 0)
        return np.random.default_rng([self.augment_seed, epoch, index])

    def _check_cached_latents(self, row: dict) -> None:
        cached = (row[mds.LATENT_NUM_FRAMES], row[mds.LATENT_HEIGHT], row[mds.LATENT_WIDTH])
        wanted = (self.num_frames, self.height, self.width)
        if cached != wanted:
            raise ValueError(
                f"sample '{row[mds.SAMPLE_NAME]}' caches latents of {cached[0]} frames at {cached[1]}x{cached[2]}, "
                f"but the dataset is configured for {wanted[0]} frames at {wanted[1]}x{wanted[2]}. Fix: set "
                f"num_frames/height/width to the cached values, convert again with matching --num-frames/--height/"
                f"--width, or set use_cached_latents=False"
            )
        if row[mds.CONTROL_KEY] != self.control_key:
            raise ValueError(
                f"sample '{row[mds.SAMPLE_NAME]}' caches the latent of control {row[mds.CONTROL_KEY]!r}, but "
                f"control_key={self.control_key!r}. Fix: set control_key={row[mds.CONTROL_KEY]!r} or "
                f"use_cached_latents=False"
            )

    def state_dict(self, num_samples: int, from_beginning: bool) -> dict[str, Any]:
        """Streaming's resume state. Composer counts the samples of every rank, so under context parallelism
        (`replication`: consecutive ranks share each sample) it counts each sample `replication` times."""
        return super().state_dict(num_samples // (self.replication or 1), from_beginning)

    def _read_row(self, index: int) -> dict[str, Any]:
        """The MDS row of ``index`` (its shard verified on first read), with enough frames for ``num_frames``."""
        shard_id, _ = self.spanner[index]
        if self._needs_hashing(shard_id):
            self._verify_shard(shard_id)
        row = super().get_item(index)
        available = row[mds.NUM_FRAMES]
        if available < self.num_frames:
            raise ValueError(
                f"sample '{row[mds.SAMPLE_NAME]}' has {available} frames per view, fewer than num_frames="
                f"{self.num_frames}. Fix: lower num_frames, or convert again with --min-frames {self.num_frames} to "
                f"leave out short clips"
            )
        return row

    def _start_frame(self, row: dict[str, Any], rng: np.random.Generator) -> int:
        """The clip's first served frame: 0, or random with ``random_start`` (the first draw of the item's
        ``rng``)."""
        return int(rng.integers(0, row[mds.NUM_FRAMES] - self.num_frames + 1)) if self.random_start else 0

    def _served_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with the run's cameras as its views, for :func:`load_clip`."""
        return row if self.cameras == (None,) else {**row, mds.CAMERA_NAMES: list(self.cameras)}

    def reference_video(self, index: int) -> torch.Tensor:
        """The frames of item ``index`` as ``get_item`` serves them with ``decode_video=True``: uint8
        ``[3, V*F, H, W]``, the served views at the training size, decoded from the shard's mp4 even when the
        dataset serves cached latents (those encode exactly these frames). The sample-video callback scores
        its samples against them."""
        row = self._read_row(index)
        start = self._start_frame(row, self._rng(index))
        clip = load_clip(
            self._served_row(row),
            control_key=None,
            frame_indices=source_frame_indices(row, start, self.num_frames),
            height=self.height,
            width=self.width,
        )
        return clip.video_3_VF_H_W

    def get_item(self, index: int) -> dict[str, Any]:
        row = self._read_row(index)
        cameras = self.cameras
        num_views, F, H, W = len(cameras), self.num_frames, self.height, self.width
        rng = self._rng(index)
        start = self._start_frame(row, rng)  # a served frame of the row
        frame_indices = source_frame_indices(row, start, F)
        view_ids = list(range(num_views))  # view id = position in the run's camera list
        caption = row[mds.CAPTION]
        if cameras != (None,):
            positions, captions = self._select_views(row, caption)
        else:
            positions, captions = [0], [caption]
        num_stored = len(row_cameras(row))
        sample: dict[str, Any] = {"sample_name": row[mds.SAMPLE_NAME]}
        if self.decode_video:
            clip = load_clip(
                self._served_row(row),
                control_key=self.control_key,
                frame_indices=frame_indices,
                height=H,
                width=W,
                rng=rng if self.random_control_params else None,
            )
            sample["video"] = clip.video_3_VF_H_W
            sample[f"control_input_{self.control_key}"] = clip.control_3_VF_H_W
            sample["original_hw"] = clip.original_hw_V_2
        sample.update(
            {
                "ai_caption": captions,
                "view_indices": torch.tensor(view_ids, dtype=torch.int64).repeat_interleave(F),
                "view_indices_selection": torch.tensor(view_ids, dtype=torch.int64),
                "camera_keys_selection": [camera for camera in cameras if camera is not None],
                "sample_n_views": torch.tensor(num_views, dtype=torch.int64),
                "num_video_frames_per_view": torch.tensor(F, dtype=torch.int64),
                "fps": torch.tensor(row[mds.FPS], dtype=torch.float64),
                "frame_indices": torch.tensor(frame_indices, dtype=torch.int64),
                "chunk_index": torch.tensor(0, dtype=torch.int64),
                "padding_mask": torch.zeros(1, H, W, dtype=torch.float32),
                "image_size": torch.tensor([H, W, H, W], dtype=torch.int64),
                "ref_cam_view_idx_sample_position": torch.tensor(-1, dtype=torch.int64),
                "front_cam_view_idx_sample_position": torch.tensor(
                    cameras.index(caption_camera(cameras, self.camera_origins)) if cameras != (None,) else 0,
                    dtype=torch.int64,
                ),
            }
        )
        if self.use_cached_latents:
            self._check_cached_latents(row)
            sample[mds.VIDEO_LATENT] = self._take_views(row[mds.VIDEO_LATENT], positions, num_stored, axis=1)
            sample[mds.CONTROL_LATENT] = self._take_views(row[mds.CONTROL_LATENT], positions, num_stored, axis=1)
        if self.use_cached_text:
            sample[mds.TEXT_EMBEDDING] = self._take_views(row[mds.TEXT_EMBEDDING], positions, num_stored, axis=0)
            sample[mds.TEXT_EMBEDDING_KIND] = row[mds.TEXT_EMBEDDING_KIND]
            sample[mds.CROSSATTN_PROJ_FINGERPRINT] = row[mds.CROSSATTN_PROJ_FINGERPRINT]
        return sample


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors are stacked, numbers become tensors, everything else becomes a list.

    So ``video`` is ``[B, 3, V*F, H, W]``, ``ai_caption`` is a list of B lists of V strings and
    ``sample_name`` a list of B strings.
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class TransferDataLoader(StreamingDataLoader):
    """Streaming's resumable loader; with ``defer_shard_errors`` set (training sets it: callbacks/shard_errors.py),
    a :class:`ShardError` ends this rank's pass instead of raising, its one line kept in ``shard_error``.

    One rank raising alone would leave the others waiting in a collective until gloo or NCCL fails them
    ("Connection closed by peer"), and that error, not the shard, is what the user would read. Composer
    all-reduces after every fetch whether any rank's pass has ended, so all ranks leave the pass together, and
    the callback then raises the shard's line on every rank.
    """

    defer_shard_errors = False
    shard_error: Optional[str] = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.defer_shard_errors:
            yield from super().__iter__()
            return
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except ShardError as error:
                self.shard_error = shard_error_line(error)
                return
            yield batch


def shard_error_line(error: ShardError) -> str:
    """The message of a ShardError; raised in a DataLoader worker, torch re-raises it with the worker's traceback
    in the message, whose last line is the original one."""
    last = str(error).strip().splitlines()[-1]
    return last.split("ShardError: ", 1)[1] if "ShardError: " in last else last


def build_dataloader(
    dataset: TransferStreamingDataset,
    batch_size: int,
    num_workers: int = 0,
    **dataloader_kwargs: Any,
) -> TransferDataLoader:
    """A ``TransferDataLoader`` (resumable) over ``dataset`` with :func:`collate_samples`.

    Streaming needs the per-device batch size on the dataset too; it is set here when missing.
    """
    if dataset.batch_size is None:
        dataset.batch_size = batch_size
    elif dataset.batch_size != batch_size:
        raise ValueError(
            f"the dataset was built with batch_size={dataset.batch_size} but the loader uses {batch_size}; "
            f"Streaming needs both equal for deterministic resumption"
        )
    return TransferDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
        persistent_workers=num_workers > 0,
        **dataloader_kwargs,
    )
