"""Start another camera rig from multiview weights of other cameras: the view-embedding rows, matched by name.

`view_embeddings.weight` is `[n_cameras_emb, view_condition_dim]`: one row per camera, in view-id order. Every
other multiview weight is shared by all views (the x and control patch embeds take `view_condition_dim`
view channels, which stays 7 for any rig), so a rig of N cameras keeps every released weight but these rows.

The rows of the network are built from the file's rows, camera by camera (`NetworkConfig.view_cameras` names
them on both sides; the released 7-view file holds the 7 `DEFAULT_CAMERAS`, in their order):
- a camera the file has: its row is copied (`kept`);
- a camera the file lacks: the mean of the file's rows (`added`): an embedding that sits among the known
  cameras and favours none, where a random row would be an input the network has never seen;
- a file camera the network lacks: left out (`dropped`).
Unnamed rows (a network of n != 7 cameras built without `camera_names`) cannot be matched and are an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.cameras import DEFAULT_CAMERAS

VIEW_EMBEDDING_KEY = "view_embeddings.weight"
# Fields that say which cameras the rows are: they may differ between the file's network.json and the network.
VIEW_ROW_FIELDS = ("n_cameras_emb", "camera_names")


class ViewRowError(ValueError):
    """The file's view-embedding rows cannot be matched to the network's cameras."""


@dataclass(frozen=True)
class ViewRowReport:
    kept: tuple[str, ...]
    added: tuple[str, ...]  # initialised to the mean of the file's rows
    dropped: tuple[str, ...]
    file_rows: int

    def summary(self) -> str:
        parts = [f"kept the rows of {len(self.kept)} cameras ({', '.join(self.kept) or 'none'})"]
        if self.added:
            parts.append(f"added {', '.join(self.added)} as the mean of the file's {self.file_rows} rows")
        if self.dropped:
            parts.append(f"dropped {', '.join(self.dropped)}")
        return f"{VIEW_EMBEDDING_KEY} rows matched by camera name: " + "; ".join(parts)


def file_view_cameras(weights: dict[str, torch.Tensor], recorded_cameras: Sequence[str] | None) -> tuple[str, ...]:
    """The camera of each view-embedding row of the file: from its network.json, else the released 7."""
    if recorded_cameras:
        return tuple(recorded_cameras)
    rows = weights[VIEW_EMBEDDING_KEY].shape[0]
    return DEFAULT_CAMERAS if rows == len(DEFAULT_CAMERAS) else ()


def match_view_rows(
    weights: dict[str, torch.Tensor],
    file_cameras: Sequence[str],
    network_cameras: Sequence[str],
    network_shape: Sequence[int],
    source: str,
) -> tuple[dict[str, torch.Tensor], ViewRowReport | None]:
    """`weights` with the view-embedding rows rebuilt for `network_cameras` (see the module docstring).

    Returns the weights unchanged and None when the file's cameras are the network's, or when either side is
    not multiview (then the ordinary load rules apply).
    """
    file_rows = weights.get(VIEW_EMBEDDING_KEY)
    if (
        file_rows is None
        or tuple(file_cameras) == tuple(network_cameras)
        and tuple(file_rows.shape) == tuple(network_shape)
    ):
        return weights, None
    if file_rows.shape[1:] != tuple(network_shape[1:]):
        return weights, None  # another view_condition_dim: a shape mismatch, reported by the ordinary rules
    if not file_cameras or not network_cameras:
        side = "the file's" if not file_cameras else "the network's"
        raise ViewRowError(
            f"{source}: {VIEW_EMBEDDING_KEY} has {file_rows.shape[0]} rows in the file and {network_shape[0]} in "
            f"the network, and {side} rows name no cameras, so they cannot be matched. Fix: set "
            "train_loader.dataset.cameras (the network's rows take those names)"
        )
    index = {camera: row for row, camera in enumerate(file_cameras)}
    rows = file_rows.float()
    mean_row = rows.mean(dim=0)
    new_rows = torch.stack([rows[index[camera]] if camera in index else mean_row for camera in network_cameras])
    report = ViewRowReport(
        kept=tuple(c for c in network_cameras if c in index),
        added=tuple(c for c in network_cameras if c not in index),
        dropped=tuple(c for c in file_cameras if c not in set(network_cameras)),
        file_rows=file_rows.shape[0],
    )
    return {**weights, VIEW_EMBEDDING_KEY: new_rows.to(file_rows.dtype)}, report
