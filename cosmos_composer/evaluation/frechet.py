"""FID and FVD: the Fréchet distance between the feature distributions of generated and reference videos.

Set-level metrics (lower is better): features of every frame (FID) or of every clip (FVD) of each set are fitted
with a Gaussian (mean, covariance, in float64), and the distance is
||mu_p - mu_r||^2 + Tr(S_p + S_r - 2 (S_p S_r)^(1/2)).

Feature extractors, from weights the user supplies (nothing is downloaded from anywhere but the Hugging Face Hub,
and only when the user names an hf:// URI; loading is in `models.py`):

- FID, `InceptionFrameFeatures`: Inception-v3's 2048-d pool features, frames resized to 299x299 (bilinear) and
  scaled to [-1, 1], with torchvision's architecture filled from a state dict. pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth` (1008 classes, the TF Inception that published FIDs use) gets the TF
  graph's pooling (`TfPool*` below) and gives the standard FID; torchvision's ImageNet weights (1000 classes) give a
  "torchvision FID" that is not comparable with published numbers.
- FID, `TransformersFrameFeatures`: any transformers image model folder (e.g. DINOv2: its pooled output is the
  feature of FD-DINOv2); not comparable with published FID.
- FVD, `I3DClipFeatures`: the Kinetics-400 I3D of published FVDs as the TorchScript file `i3d_torchscript.pt`
  (StyleGAN-V's port), 400-d features of 16-frame clips scaled to [-1, 1]. TorchScript can run code when loaded
  (torch.jit.load's own warning), so it is only loaded when the user says they trust the file.
- FVD, `TransformersClipFeatures`: a transformers video model folder (e.g. VideoMAE), mean of its last hidden
  state over a clip of `config.num_frames`; a stand-in, not the I3D of published FVDs.

Videos are cut into non-overlapping clips from the first frame; the frames after the last whole clip are not used,
and a video shorter than one clip is an error.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from cosmos_composer.evaluation.metrics import feature_statistics, frechet_distance

# pytorch-fid's Inception (the TF graph of published FIDs) classifies into 1008 classes; torchvision's into 1000.
TF_INCEPTION_CLASSES = 1008
INCEPTION_SIZE = 299
I3D_CLIP_FRAMES = 16
SET_METRICS = ("fid", "fvd")  # the metrics of this module, one value per set of videos


class FrameFeatures(Protocol):
    """What FID needs: a feature vector per frame."""

    name: str
    comparable: bool  # whether the numbers compare with published FIDs

    def frame_features(self, frames_N_H_W_3: np.ndarray) -> np.ndarray: ...


class ClipFeatures(Protocol):
    """What FVD needs: a feature vector per clip of `clip_frames` frames."""

    name: str
    comparable: bool
    clip_frames: int

    def clip_features(self, clips_B_T_H_W_3: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------- Fréchet distance
def frechet_distance_of_features(features_a_N_D: np.ndarray, features_b_M_D: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (at least 2 vectors each)."""
    for name, features in (("first", features_a_N_D), ("second", features_b_M_D)):
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"the {name} feature set needs at least 2 vectors [N, D], got shape {features.shape}")
    return frechet_distance(*feature_statistics(features_a_N_D), *feature_statistics(features_b_M_D))


# ----------------------------------------------------------------------------- FID and FVD
def _check_video(video: np.ndarray, what: str, metric: str) -> None:
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"{metric}: {what} must be RGB uint8 [T, H, W, 3], got {video.dtype} {video.shape}")


def _check_videos(videos: Sequence[np.ndarray], which: str, metric: str) -> None:
    if len(videos) == 0:
        raise ValueError(f"{metric}: no {which} videos")
    for index, video in enumerate(videos):
        _check_video(video, f"{which} video {index}", metric)


def video_clips(video_T_H_W_3: np.ndarray, clip_frames: int) -> np.ndarray:
    """Non-overlapping clips `[B, clip_frames, H, W, 3]` from the first frame (the remainder is not used)."""
    num_clips = len(video_T_H_W_3) // clip_frames
    if num_clips == 0:
        raise ValueError(f"a video of {len(video_T_H_W_3)} frames is shorter than one FVD clip of {clip_frames} frames")
    return video_T_H_W_3[: num_clips * clip_frames].reshape(num_clips, clip_frames, *video_T_H_W_3.shape[1:])


def _views(video: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One video's views: a single-view ``[T, H, W, 3]`` is one view."""
    return [video] if isinstance(video, np.ndarray) and video.ndim == 4 else list(video)


class FeatureSet:
    """The FID frame features and FVD clip features of a set of videos, gathered one video at a time.

    ``extractors`` maps ``"fid"`` to a :class:`FrameFeatures` and/or ``"fvd"`` to a :class:`ClipFeatures`. Only the
    feature vectors are kept, never the frames. Every view of a multiview video counts: its frames (FID) and its
    clips (FVD) join the set like those of another video.
    """

    def __init__(self, extractors: Mapping[str, FrameFeatures | ClipFeatures], which: str) -> None:
        unknown = sorted(set(extractors) - set(SET_METRICS))
        if unknown:
            raise ValueError(f"no feature set for {unknown}; the set-level metrics are {', '.join(SET_METRICS)}")
        self.extractors, self.which = dict(extractors), which  # which: "prediction" or "reference", for messages
        self.videos = 0
        self._features: dict[str, list[np.ndarray]] = {metric: [] for metric in self.extractors}

    def add(self, video: np.ndarray | Sequence[np.ndarray]) -> None:
        """Add the features of one video: RGB uint8 ``[T, H, W, 3]``, or a list of them (its views)."""
        views = _views(video)
        for metric in self.extractors:
            for index, view in enumerate(views):
                where = f" view {index}" if len(views) > 1 else ""
                _check_video(view, f"{self.which} video {self.videos}{where}", metric)
        for metric, extractor in self.extractors.items():
            for view_T_H_W_3 in views:
                if metric == "fid":
                    features_N_D = extractor.frame_features(view_T_H_W_3)
                else:
                    features_N_D = extractor.clip_features(video_clips(view_T_H_W_3, extractor.clip_frames))
                self._features[metric].append(features_N_D)
        self.videos += 1

    def features(self, metric: str) -> np.ndarray:
        """All feature vectors of ``metric`` gathered so far, ``[N, D]``."""
        if not self._features[metric]:
            raise ValueError(f"{metric}: no {self.which} videos")
        return np.concatenate(self._features[metric])


def frechet_distances(predictions: FeatureSet, references: FeatureSet) -> dict[str, float]:
    """``{metric: distance}`` between the generated and the reference feature sets, for each metric of
    ``predictions`` (lower is better)."""
    distances = {}
    for metric in predictions.extractors:
        try:
            distances[metric] = frechet_distance_of_features(predictions.features(metric), references.features(metric))
        except ValueError as error:  # too few frames or clips: say which metric and how many videos
            raise ValueError(
                f"{metric} of {predictions.videos} prediction and {references.videos} reference videos: {error}"
            ) from None
    return distances


class FrechetFeatures:
    """FID and/or FVD of pairs of videos given one pair at a time: ``add(prediction_views, reference_views)`` for
    each, then ``distances()`` -> ``{"fid": ..., "fvd": ...}`` (the metrics of ``extractors``)."""

    def __init__(self, extractors: Mapping[str, FrameFeatures | ClipFeatures]) -> None:
        self.predictions = FeatureSet(extractors, "prediction")
        self.references = FeatureSet(extractors, "reference")

    def add(
        self, prediction_views: np.ndarray | Sequence[np.ndarray], reference_views: np.ndarray | Sequence[np.ndarray]
    ) -> None:
        self.predictions.add(prediction_views)
        self.references.add(reference_views)

    def distances(self) -> dict[str, float]:
        return frechet_distances(self.predictions, self.references)


def _set_distance(
    metric: str,
    prediction_videos: Sequence[np.ndarray],
    reference_videos: Sequence[np.ndarray],
    extractor: FrameFeatures | ClipFeatures,
) -> float:
    _check_videos(prediction_videos, "prediction", metric)
    _check_videos(reference_videos, "reference", metric)
    predictions, references = (
        FeatureSet({metric: extractor}, "prediction"),
        FeatureSet({metric: extractor}, "reference"),
    )
    for video in prediction_videos:
        predictions.add(video)
    for video in reference_videos:
        references.add(video)
    return frechet_distances(predictions, references)[metric]


def fid(
    prediction_videos: Sequence[np.ndarray], reference_videos: Sequence[np.ndarray], extractor: FrameFeatures
) -> float:
    """FID between all frames of the generated videos and all frames of the reference videos."""
    return _set_distance("fid", prediction_videos, reference_videos, extractor)


def fvd(
    prediction_videos: Sequence[np.ndarray], reference_videos: Sequence[np.ndarray], extractor: ClipFeatures
) -> float:
    """FVD between the clips of the generated videos and the clips of the reference videos."""
    return _set_distance("fvd", prediction_videos, reference_videos, extractor)


# ----------------------------------------------------------------------------- Inception-v3 (FID)
class _TfAveragePool:
    """The TF Inception graph's pool branch (pytorch-fid's FID Inception): average pooling without the padding."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = super()._forward(x)  # its last output, the pool branch, counted the padding: recomputed here
        outputs[-1] = self.branch_pool(self._pool(x))
        return outputs

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class TfPoolInceptionA(_TfAveragePool, InceptionA):
    pass


class TfPoolInceptionC(_TfAveragePool, InceptionC):
    pass


class TfPoolInceptionE(_TfAveragePool, InceptionE):
    pass


class TfMaxPoolInceptionE(_TfAveragePool, InceptionE):
    """The TF graph's last block pools with a max (a quirk published FIDs keep)."""

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def build_inception(state_dict: dict[str, torch.Tensor]) -> Inception3:
    """torchvision's Inception-v3 holding `state_dict` (strict), with the TF graph's pooling for the 1008-class TF port."""
    num_classes = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 0
    has_aux = any(key.startswith("AuxLogits.") for key in state_dict)
    with torch.device("meta"):  # no initialisation: every tensor comes from the state dict
        model = Inception3(num_classes=max(num_classes, 1), aux_logits=has_aux, init_weights=False)
        if num_classes == TF_INCEPTION_CLASSES:
            model.Mixed_5b = TfPoolInceptionA(192, pool_features=32)
            model.Mixed_5c = TfPoolInceptionA(256, pool_features=64)
            model.Mixed_5d = TfPoolInceptionA(288, pool_features=64)
            model.Mixed_6b = TfPoolInceptionC(768, channels_7x7=128)
            model.Mixed_6c = TfPoolInceptionC(768, channels_7x7=160)
            model.Mixed_6d = TfPoolInceptionC(768, channels_7x7=160)
            model.Mixed_6e = TfPoolInceptionC(768, channels_7x7=192)
            model.Mixed_7b = TfPoolInceptionE(1280)
            model.Mixed_7c = TfMaxPoolInceptionE(2048)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.fc = torch.nn.Identity()  # the 2048-d pool features are the output
    return model.eval()


class InceptionFrameFeatures:
    """Inception-v3 pool features of frames (see the module docstring)."""

    def __init__(self, model: Inception3, tf_port: bool, device: str = "cpu", batch_frames: int = 32):
        self.model, self.device, self.batch_frames = model.to(device), device, batch_frames
        self.comparable = tf_port
        self.name = "Inception-v3, TF port (pytorch-fid)" if tf_port else "Inception-v3, torchvision weights"

    @torch.inference_mode()
    def frame_features(self, frames_N_H_W_3: np.ndarray) -> np.ndarray:
        features = []
        for start in range(0, len(frames_N_H_W_3), self.batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(frames_N_H_W_3[start : start + self.batch_frames]))
            x = x.to(self.device).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            features.append(self.model(2.0 * x - 1.0).double().cpu().numpy())
        return np.concatenate(features)


# ----------------------------------------------------------------------------- transformers models
class TransformersFrameFeatures:
    """A transformers image model's pooled output (or mean last hidden state) per frame."""

    comparable = False

    def __init__(self, model: Any, processor: Any, name: str, device: str = "cpu", batch_frames: int = 32):
        self.model, self.processor, self.name, self.device, self.batch_frames = (
            model,
            processor,
            name,
            device,
            batch_frames,
        )

    @torch.inference_mode()
    def frame_features(self, frames_N_H_W_3: np.ndarray) -> np.ndarray:
        features = []
        for start in range(0, len(frames_N_H_W_3), self.batch_frames):
            inputs = self.processor(images=list(frames_N_H_W_3[start : start + self.batch_frames]), return_tensors="pt")
            features.append(_pooled(self.model(**inputs.to(self.device))))
        return np.concatenate(features)


class TransformersClipFeatures:
    """A transformers video model's mean last hidden state per clip of `config.num_frames` frames."""

    comparable = False

    def __init__(self, model: Any, processor: Any, name: str, device: str = "cpu", batch_clips: int = 4):
        self.model, self.processor, self.name, self.device, self.batch_clips = (
            model,
            processor,
            name,
            device,
            batch_clips,
        )
        self.clip_frames = int(model.config.num_frames)

    @torch.inference_mode()
    def clip_features(self, clips_B_T_H_W_3: np.ndarray) -> np.ndarray:
        features = []
        for start in range(0, len(clips_B_T_H_W_3), self.batch_clips):
            clips = [list(clip) for clip in clips_B_T_H_W_3[start : start + self.batch_clips]]
            inputs = self.processor(clips, return_tensors="pt")
            features.append(_pooled(self.model(**inputs.to(self.device))))
        return np.concatenate(features)


def _pooled(outputs: Any) -> np.ndarray:
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        pooled = outputs.last_hidden_state.mean(dim=1)
    return pooled.flatten(1).double().cpu().numpy()


# ----------------------------------------------------------------------------- I3D (FVD)
class I3DClipFeatures:
    """The TorchScript Kinetics-400 I3D of published FVDs: 400-d features of clips scaled to [-1, 1]."""

    comparable = True
    name = "I3D Kinetics-400 (TorchScript)"
    clip_frames = I3D_CLIP_FRAMES

    def __init__(self, model: torch.jit.ScriptModule, device: str = "cpu", batch_clips: int = 4):
        self.model, self.device, self.batch_clips = model, device, batch_clips

    @torch.inference_mode()
    def clip_features(self, clips_B_T_H_W_3: np.ndarray) -> np.ndarray:
        features = []
        for start in range(0, len(clips_B_T_H_W_3), self.batch_clips):
            x = torch.from_numpy(np.ascontiguousarray(clips_B_T_H_W_3[start : start + self.batch_clips]))
            x_B_3_T_H_W = (x.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5) - 1.0
            # The port resizes to 224x224 itself (resize=True) and returns the pre-logit features.
            out = self.model(x_B_3_T_H_W, rescale=False, resize=True, return_features=True)
            features.append(out.double().cpu().numpy())
        return np.concatenate(features)
