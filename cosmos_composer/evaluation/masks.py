"""Mask mIoU: whether a generated video keeps the objects of its reference where they were, as PAI-Bench-Transfer
scores it.

The benchmark (SHI-Labs/physical-ai-bench, `sam_single_task` and `mask_iou_single_task` in
`transfer/compute_metrics.py`, `calculate_mask_iou_and_recall` in
`transfer/benchmark_pipelines/scores/transfer_bench/segmentation_metrics.py`) segments each video on its own:

1. Grounded SAM 2 on the video, with the caption as the text prompt: GroundingDINO (`IDEA-Research/grounding-dino-tiny`)
   finds the caption's objects in the video's first frame, and SAM 2 (`sam2_hiera_large.pt` in
   `transfer/get_checkpoint.sh`) propagates a mask for each box through the video. The prediction is segmented from
   its own first frame, not from the reference's boxes, which is why the objects are matched afterwards. (The
   benchmark's wrapper, `models/grounded_sam_v2`, is not in its repository; frame 0 and box prompts are what the
   Grounded-SAM-2 tracking demos it vendors do.)
2. Instance map: the object masks are painted in detection order, a later object covering an earlier one.
3. One mask per phrase: the instances with the same detected phrase are united.
4. IoU of every reference phrase mask with every prediction phrase mask, over the whole `[T, H, W]` volume.
5. Hungarian matching on the IoU (scipy's `linear_sum_assignment` on 1 - IoU). Of the min(M, N) matched pairs, those
   with IoU > 0.1 count: mIoU is their mean IoU (0 when none), recall is their number over the number of matched
   pairs (the benchmark's denominator: min(M, N), not M). A video pair where either side found nothing scores 0 and 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .depth import check_same_video_shape

# GroundingDINO thresholds (those of Grounded-Segment-Anything's demos; the benchmark's own are in its missing
# wrapper): a box is kept when its best text token scores above BOX_THRESHOLD; its tokens above TEXT_THRESHOLD make
# its phrase.
BOX_THRESHOLD = 0.3
TEXT_THRESHOLD = 0.25
# A matched pair counts when its IoU is above this.
MIN_MATCH_IOU = 0.1


@dataclass
class MaskModels:
    """GroundingDINO and SAM 2 (video) with their processors, ready to run on `device`."""

    grounding_model: Any  # transformers GroundingDinoForObjectDetection, eval mode on `device`
    grounding_processor: Any  # GroundingDinoProcessor
    sam2_model: Any  # transformers Sam2VideoModel, eval mode on `device`
    sam2_processor: Any  # Sam2VideoProcessor
    device: str = "cpu"
    box_threshold: float = BOX_THRESHOLD
    text_threshold: float = TEXT_THRESHOLD


def grounding_prompt(caption: str) -> str:
    """GroundingDINO's text: lower case, ending with a period (its phrase separator), as its own inference does."""
    prompt = caption.strip().lower()
    return prompt if prompt.endswith(".") else prompt + "."


@torch.inference_mode()
def detect_objects(frame_H_W_3: np.ndarray, caption: str, models: MaskModels) -> tuple[np.ndarray, list[str]]:
    """GroundingDINO's boxes `[N, 4]` (x0, y0, x1, y1 in pixels) for the caption's objects, and their phrases."""
    processor, model = models.grounding_processor, models.grounding_model
    # The text is cut at the model's text length (256 tokens for the released models), as the model would cut it.
    inputs = processor(
        images=frame_H_W_3,
        text=grounding_prompt(caption),
        truncation=True,
        max_length=model.config.max_text_len,
        return_tensors="pt",
    ).to(models.device)
    outputs = model(**inputs)
    (result,) = processor.post_process_grounded_object_detection(
        outputs,
        inputs["input_ids"],
        threshold=models.box_threshold,
        text_threshold=models.text_threshold,
        target_sizes=[frame_H_W_3.shape[:2]],
    )
    phrases = [label.strip() for label in result["text_labels"]]
    return result["boxes"].float().cpu().numpy().reshape(-1, 4), phrases


@torch.inference_mode()
def track_objects(video_T_H_W_3: np.ndarray, boxes_N_4: np.ndarray, models: MaskModels) -> np.ndarray:
    """SAM 2's masks of the boxed objects (boxes on frame 0) through the video, as an instance map `[T, H, W]`.

    0 is background and i + 1 is object i; where masks overlap, the later object wins (the benchmark's painting).
    """
    num_frames, height, width = video_T_H_W_3.shape[:3]
    instance_map_T_H_W = np.zeros((num_frames, height, width), np.uint16)
    if len(boxes_N_4) == 0:
        return instance_map_T_H_W
    processor, model = models.sam2_processor, models.sam2_model
    session = processor.init_video_session(video=video_T_H_W_3, inference_device=models.device, dtype=torch.float32)
    object_ids = list(range(1, len(boxes_N_4) + 1))
    # A copy: the session keeps the list it is given and empties it as the objects are tracked.
    processor.add_inputs_to_inference_session(
        inference_session=session, frame_idx=0, obj_ids=list(object_ids), input_boxes=[boxes_N_4.tolist()]
    )
    for output in model.propagate_in_video_iterator(inference_session=session, start_frame_idx=0):
        (masks_N_1_H_W,) = processor.post_process_masks(
            [output.pred_masks], original_sizes=[[height, width]], binarize=True
        )
        frame_map = instance_map_T_H_W[output.frame_idx]
        for object_id, mask_H_W in zip(object_ids, masks_N_1_H_W[:, 0].cpu().numpy()):
            frame_map[mask_H_W] = object_id
    return instance_map_T_H_W


def phrase_map(instance_map_T_H_W: np.ndarray, instance_phrases: list[str]) -> tuple[np.ndarray, list[str]]:
    """The instance map relabelled by phrase: 0 background, k + 1 for `phrases[k]` (phrases in first-seen order)."""
    phrases = list(dict.fromkeys(instance_phrases))
    phrase_of_instance = np.zeros(len(instance_phrases) + 1, np.uint16)
    phrase_of_instance[1:] = [phrases.index(phrase) + 1 for phrase in instance_phrases]
    return phrase_of_instance[instance_map_T_H_W], phrases


def segment_phrases(video_T_H_W_3: np.ndarray, caption: str, models: MaskModels) -> tuple[np.ndarray, list[str]]:
    """Grounded SAM 2 on one video: its phrase map `[T, H, W]` (see `phrase_map`) and the phrases found."""
    boxes_N_4, instance_phrases = detect_objects(video_T_H_W_3[0], caption, models)
    return phrase_map(track_objects(video_T_H_W_3, boxes_N_4, models), instance_phrases)


def phrase_map_iou(ref_map: np.ndarray, num_ref: int, pred_map: np.ndarray, num_pred: int) -> np.ndarray:
    """IoU `[num_ref, num_pred]` of the label masks of two label maps (labels 1..num; 0 is background).

    A label map's masks are disjoint, so one joint histogram of the label pairs gives every intersection.
    """
    joint = np.bincount(
        ref_map.ravel().astype(np.int64) * (num_pred + 1) + pred_map.ravel(), minlength=(num_ref + 1) * (num_pred + 1)
    ).reshape(num_ref + 1, num_pred + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    union = joint[1:, :].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def mask_iou(ref_masks_M_T_H_W: np.ndarray, pred_masks_N_T_H_W: np.ndarray) -> np.ndarray:
    """IoU `[M, N]` of every reference mask with every predicted mask (boolean, possibly overlapping), 0 if both empty."""
    voxels = int(np.prod(ref_masks_M_T_H_W.shape[1:]))
    ref_flat = ref_masks_M_T_H_W.reshape(len(ref_masks_M_T_H_W), voxels).astype(np.float64)
    pred_flat = pred_masks_N_T_H_W.reshape(len(pred_masks_N_T_H_W), voxels).astype(np.float64)
    intersection = ref_flat @ pred_flat.T
    union = ref_flat.sum(1)[:, None] + pred_flat.sum(1)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def match_iou(iou_M_N: np.ndarray, min_iou: float = MIN_MATCH_IOU) -> dict:
    """Hungarian matching of references (rows) to predictions (columns) maximising IoU, scored as the benchmark does.

    Returns `mask_miou` (mean IoU of the matched pairs above `min_iou`, 0 if none), `mask_recall` (their number over
    the number of matched pairs, min(M, N)) and `pairs`: `(reference, prediction, iou)` of every matched pair.
    """
    if iou_M_N.size == 0:
        return {"mask_miou": 0.0, "mask_recall": 0.0, "pairs": []}
    ref_rows, pred_cols = linear_sum_assignment(1.0 - iou_M_N)
    matched = iou_M_N[ref_rows, pred_cols]
    counted = matched[matched > min_iou]
    return {
        "mask_miou": float(counted.mean()) if counted.size else 0.0,
        "mask_recall": counted.size / matched.size,
        "pairs": [(int(r), int(c), float(v)) for r, c, v in zip(ref_rows, pred_cols, matched)],
    }


def match_masks(pred_masks_N_T_H_W: np.ndarray, ref_masks_M_T_H_W: np.ndarray, min_iou: float = MIN_MATCH_IOU) -> dict:
    """`match_iou` of the IoU of boolean mask stacks `[N, T, H, W]` (prediction) and `[M, T, H, W]` (reference)."""
    if pred_masks_N_T_H_W.shape[1:] != ref_masks_M_T_H_W.shape[1:]:
        raise ValueError(
            f"match_masks: prediction masks {pred_masks_N_T_H_W.shape} and reference masks {ref_masks_M_T_H_W.shape} "
            "must cover the same [T, H, W]"
        )
    return match_iou(mask_iou(ref_masks_M_T_H_W, pred_masks_N_T_H_W), min_iou)


def mask_miou(
    prediction_T_H_W_3: np.ndarray, reference_T_H_W_3: np.ndarray, caption: str, mask_models: MaskModels
) -> dict:
    """Mask mIoU and recall (higher is better) of a generated video against its reference, objects from `caption`."""
    check_same_video_shape(prediction_T_H_W_3, reference_T_H_W_3, "mask_miou")
    ref_map, ref_phrases = segment_phrases(reference_T_H_W_3, caption, mask_models)
    pred_map, pred_phrases = segment_phrases(prediction_T_H_W_3, caption, mask_models)
    iou_M_N = phrase_map_iou(ref_map, len(ref_phrases), pred_map, len(pred_phrases))
    matched = match_iou(iou_M_N)
    return {"mask_miou": matched["mask_miou"], "mask_recall": matched["mask_recall"]}
