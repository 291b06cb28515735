"""Video files with PyAV: write mp4 (H.264), probe, decode a frame range or a list of frames, resize.

All frames handled here are RGB uint8. Decoded frames come back as ``[T, H, W, 3]`` numpy arrays (the
layout PyAV produces); :func:`resize_video` works on ``[T, 3, H, W]`` torch tensors.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Union

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

VideoSource = Union[str, os.PathLike, bytes, BinaryIO]

# H.264 quality used for the demo data: crf 10 is visually lossless, so thin control lines survive.
DEFAULT_CRF = 10


class VideoError(ValueError):
    """A video cannot be opened or decoded, or has too few frames."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found by decoding a whole file."""

    num_frames: int  # frames that actually decode
    fps: float  # average frame rate from the container
    height: int
    width: int
    header_frames: int  # frame count the container claims (0 when unknown)


def _open(source: VideoSource) -> av.container.InputContainer:
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    return av.open(source, mode="r")


def _describe(source: VideoSource) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<in-memory video>"


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("the video stream has no frame rate")
    return float(rate)


def _decode_error(error: Exception) -> VideoError:
    return VideoError(f"it cannot be decoded ({type(error).__name__}: {error})")


def read_video_size(source: VideoSource) -> tuple[int, int]:
    """``(height, width)`` of the first video stream, read from the header without decoding (cheap)."""
    try:
        with _open(source) as container:
            if not container.streams.video:
                raise VideoError("the file has no video stream")
            codec = container.streams.video[0].codec_context
            height, width = codec.height, codec.width
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:  # PyAV raises subclasses of these
        raise _decode_error(error) from error
    if not height or not width:
        raise VideoError("its header gives no frame size")
    return height, width


def probe_video(source: VideoSource) -> VideoInfo:
    """Decode every frame of ``source`` and report frame count, fps and size.

    Decoding everything (rather than trusting the header) is what catches truncated and corrupt files,
    and gives the exact number of usable frames. Raises :class:`VideoError` with the decoder's message.
    """
    try:
        with _open(source) as container:
            if not container.streams.video:
                raise VideoError("the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = _stream_fps(stream)
            header_frames = int(stream.frames or 0)
            num_frames, height, width = 0, 0, 0
            for frame in container.decode(stream):
                num_frames += 1
                height, width = frame.height, frame.width
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:  # PyAV raises subclasses of these
        raise _decode_error(error) from error
    if num_frames == 0:
        raise VideoError("it decodes to 0 frames")
    if header_frames and num_frames < header_frames:
        raise VideoError(
            f"only {num_frames} of the {header_frames} frames its header lists decode (truncated or corrupt)"
        )
    return VideoInfo(num_frames=num_frames, fps=fps, height=height, width=width, header_frames=header_frames)


def decode_frame_indices(source: VideoSource, indices: Sequence[int] | None) -> tuple[np.ndarray, float]:
    """Decode the frames at the sorted source ``indices`` of ``source`` (``None``: every frame).

    Decoding stops after the last needed frame. Returns ``(frames_T_H_W_3, fps)`` with uint8 RGB frames,
    one per index. Raises :class:`VideoError` when the video ends before the last index.
    """
    if indices is not None and (not indices or any(b < a for a, b in zip(indices, indices[1:]))):
        raise ValueError(f"frame indices must be a non-empty sorted list, got {list(indices)}")
    frames: list[np.ndarray] = []
    # One converter for the whole clip: frame.to_ndarray(format=...) would set up swscale per frame.
    to_rgb = VideoReformatter()
    num_decoded = 0
    try:
        with _open(source) as container:
            stream = container.streams.video[0]
            # Slice threading only: frame threading can deadlock when the decode loop stops early
            # (seen with two training processes decoding at once).
            stream.thread_type = "SLICE"
            fps = _stream_fps(stream)
            for index, frame in enumerate(container.decode(stream)):
                num_decoded = index + 1
                if indices is not None and index < indices[len(frames)]:
                    continue  # decoded (the codec needs it) but not converted
                rgb_H_W_3 = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                frames.append(rgb_H_W_3)
                while indices is not None and len(frames) < len(indices) and indices[len(frames)] == index:
                    frames.append(rgb_H_W_3)  # a repeated index
                if indices is not None and len(frames) == len(indices):
                    break
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoError(f"{_describe(source)} cannot be decoded ({type(error).__name__}: {error})") from error
    if not frames or (indices is not None and len(frames) < len(indices)):
        requested = "0..(end)" if indices is None else _describe_indices(indices)
        raise VideoError(f"{_describe(source)} has {num_decoded} frames; frames {requested} were requested")
    return np.stack(frames), fps


def _describe_indices(indices: Sequence[int]) -> str:
    """``3..8`` for a run of consecutive indices, else ``0, 3, 6, ..., 27`` (the first three and the last)."""
    if list(indices) == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}..{indices[-1]}"
    shown = ", ".join(str(index) for index in indices[:3])
    return shown + (f", ..., {indices[-1]}" if len(indices) > 3 else "")


def decode_frames(source: VideoSource, start: int, count: int | None) -> tuple[np.ndarray, float]:
    """Decode frames ``start .. start+count-1`` of ``source`` (``count=None``: to the end).

    Returns ``(frames_T_H_W_3, fps)`` with uint8 RGB frames. Raises :class:`VideoError` when the video
    has fewer than ``start + count`` frames.
    """
    if count is not None:
        return decode_frame_indices(source, range(start, start + count))
    frames_T_H_W_3, fps = decode_frame_indices(source, None)
    if start >= len(frames_T_H_W_3):
        raise VideoError(f"{_describe(source)} has {len(frames_T_H_W_3)} frames; frames {start}..(end) were requested")
    return frames_T_H_W_3[start:], fps


def rgb_to_yuv420p(frame_H_W_3: np.ndarray) -> np.ndarray:
    """RGB uint8 -> planar yuv420p ``[H * 3 / 2, W]`` (BT.601 limited range, 2x2 chroma average).

    Done in numpy rather than by FFmpeg's swscale so the encoder input does not depend on the FFmpeg
    build or the CPU's SIMD paths. Decoders (PyAV, decord) read untagged streams as BT.601, the matrix used here.
    """
    H, W, _ = frame_H_W_3.shape
    rgb = frame_H_W_3.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    subsample = lambda plane: plane.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))  # noqa: E731
    to_uint8 = lambda plane: np.clip(np.round(plane), 0, 255).astype(np.uint8)  # noqa: E731
    u_rows = to_uint8(subsample(cb)).reshape(H // 4, W)  # yuv420p stores each chroma plane as H/4 rows of W
    v_rows = to_uint8(subsample(cr)).reshape(H // 4, W)
    return np.concatenate([to_uint8(y), u_rows, v_rows])


def write_mp4(
    path: str | Path | BinaryIO,
    frames_T_H_W_3: np.ndarray,
    fps: float,
    crf: int = DEFAULT_CRF,
) -> None:
    """Write uint8 RGB frames as an H.264 mp4 (yuv420p, so height and width must be even) to a path or file.

    The demo data must be byte-identical for the same seed, which costs some encoding speed: x264 runs
    single-threaded and without its assembly (``asm=0``), because threaded x264 and, at some frame
    sizes (seen at 64x96 and 64x112), its SIMD code give different bytes from run to run, and the
    RGB -> yuv420p conversion is done by :func:`rgb_to_yuv420p`.
    """
    num_frames, height, width, channels = frames_T_H_W_3.shape
    if channels != 3 or frames_T_H_W_3.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames_T_H_W_3.dtype} {frames_T_H_W_3.shape}")
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even height and width, got {height}x{width}")
    if isinstance(path, (str, os.PathLike)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        path = os.fspath(path)
    with av.open(path, mode="w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "asm=0"}
        for index, frame_H_W_3 in enumerate(frames_T_H_W_3):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame_H_W_3), format="yuv420p")
            frame.pts, frame.time_base = index, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_mp4_atomic(path: str | Path, frames_T_H_W_3: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> Path:
    """:func:`write_mp4` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``: a
    killed writer leaves no half-written ``path`` (only a hidden ``.<name>.tmp-<pid>`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as file:
        write_mp4(file, frames_T_H_W_3, fps, crf)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path


def resize_video(
    frames_T_3_H_W: torch.Tensor,
    height: int,
    width: int,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> torch.Tensor:
    """Plain resize to ``(height, width)``, aspect ratio not kept, as the official multiview loader does.

    Bilinear resizes use ``antialias=True`` (torchvision ``Resize`` on the uint8 frames, as upstream).
    """
    if tuple(frames_T_3_H_W.shape[-2:]) == (height, width):
        return frames_T_3_H_W
    antialias = interpolation != InterpolationMode.NEAREST
    return TF.resize(frames_T_3_H_W, [height, width], interpolation=interpolation, antialias=antialias)


def resize_mp4(
    source: VideoSource,
    height: int,
    width: int,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> bytes:
    """Every frame of ``source`` resized to ``(height, width)``, as mp4 bytes at the same frame rate."""
    frames_T_H_W_3, fps = decode_frames(source, 0, None)
    frames_T_3_H_W = resize_video(torch.from_numpy(frames_T_H_W_3).permute(0, 3, 1, 2), height, width, interpolation)
    buffer = io.BytesIO()
    write_mp4(buffer, frames_T_3_H_W.permute(0, 2, 3, 1).contiguous().numpy(), fps)
    return buffer.getvalue()
