"""Start another camera rig from multiview weights of other cameras: the view-embedding rows, matched by name.

`view_embeddings.weight` is `[n_cameras_emb, view_condition_dim]`: one row per camera, in view-id order. Every
other multiview weight is shared by all views (the x and control patch embeds take `view_condition_dim`
view channels, which stays 7 for any rig), so a rig of N cameras keeps every released weight but these rows.

The rows of the network are built from the file's rows, camera by camera (`NetworkConfig.view_cameras` names
them on both sides; the released 7-view file holds the 7 `DEFAULT_CAMERAS`, in their order):
- a camera the file has: its row is copied (`kept`), so a rig's own checkpoint loads by the rig's names;
- a camera the file lacks that starts from an official camera the file has (`NetworkConfig.camera_origins`,
  `CAM_FRONT=camera_front_wide_120fov` in the dataset's cameras): that camera's row is copied (`copied`), as
  upstream's maintainers advise for a new camera (start it from the nearest official one);
- any other camera the file lacks: the mean of the file's rows (`added`): an embedding that sits among the
  known cameras and favours none, where a random row would be an input the network has never seen;
- a file row that no network camera took: left out (`dropped`).
Unnamed rows (a network of n != 7 cameras built without `camera_names`) cannot be matched and are an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..models.official_cameras import DEFAULT_CAMERAS

VIEW_EMBEDDING_KEY = "view_embeddings.weight"
# Fields that say which cameras the rows are: they may differ between the file's network.json and the network.
VIEW_ROW_FIELDS = ("n_cameras_emb", "camera_names", "camera_origins")


class ViewRowError(ValueError):
    """The file's view-embedding rows cannot be matched to the network's cameras."""


@dataclass(frozen=True)
class ViewRowReport:
    kept: tuple[str, ...]
    added: tuple[str, ...]  # initialised to the mean of the file's rows
    dropped: tuple[str, ...]
    file_rows: int
    copied: tuple[tuple[str, str], ...] = ()  # (camera, the official camera whose row it took)

    def summary(self) -> str:
        parts = []
        if self.kept or not self.copied:
            parts.append(f"kept the rows of {len(self.kept)} cameras ({', '.join(self.kept) or 'none'})")
        if self.copied:
            pairs = ", ".join(f"{camera} <- {official}" for camera, official in self.copied)
            parts.append(f"copied {pairs} (the official cameras they start from)")
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
    network_origins: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], ViewRowReport | None]:
    """`weights` with the view-embedding rows rebuilt for `network_cameras` (see the module docstring);
    `network_origins`: {camera: the official camera it starts from} (`NetworkConfig.camera_origins`).

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
    origins = network_origins or {}
    # The file camera whose row each network camera starts from: its own, else its official one's; None: the mean.
    source_of = {
        camera: next((c for c in (camera, origins.get(camera)) if c in index), None) for camera in network_cameras
    }
    rows = file_rows.float()
    mean_row = rows.mean(dim=0)
    new_rows = torch.stack([mean_row if source_of[c] is None else rows[index[source_of[c]]] for c in network_cameras])
    report = ViewRowReport(
        kept=tuple(c for c in network_cameras if source_of[c] == c),
        added=tuple(c for c in network_cameras if source_of[c] is None),
        dropped=tuple(c for c in file_cameras if c not in set(source_of.values())),  # rows no camera took
        file_rows=file_rows.shape[0],
        copied=tuple((c, source_of[c]) for c in network_cameras if source_of[c] not in (None, c)),
    )
    return {**weights, VIEW_EMBEDDING_KEY: new_rows.to(file_rows.dtype)}, report


def changed_origins(
    file_origins: Mapping[str, str],
    network_origins: Mapping[str, str],
    file_cameras: Sequence[str],
    network_cameras: Sequence[str],
) -> list[str]:
    """`["CAM_FRONT: camera_front_wide_120fov in the file, none in the network", ...]`: each camera whose row the
    file holds by name but which starts from another official camera in the network, so its row was trained
    with one caption prefix and now gets another."""
    return [
        f"{c}: {file_origins.get(c) or 'none'} in the file, {network_origins.get(c) or 'none'} in the network"
        for c in network_cameras
        if c in file_cameras and file_origins.get(c) != network_origins.get(c)
    ]
