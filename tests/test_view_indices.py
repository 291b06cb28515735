"""The camera id of every latent frame, against its definition, in the three places that need it.

A multiview latent holds its views one after another along time, `B C (V T) H W`: frame v * T + t belongs
to view v, so it carries view v's camera id. `latent_view_indices` builds that; the training batches
(`encode_batch`), generation (`generate.view_indices`) and the network's default (no ids given) use it.
The expected ids below are written out frame by frame, not built with the function.
"""

import torch

from cosmos_composer import generate as gen
from cosmos_composer.data.cameras import CAMERA_TO_VIEW_INDEX, DEFAULT_CAMERAS
from cosmos_composer.models import build_network
from cosmos_composer.models.composer_model import CosmosTransferModel
from cosmos_composer.models.network import latent_view_indices

# Two samples of three views with different, unordered camera ids (no id equals its view's position).
CAMERA_IDS_B_V = [[4, 0, 6], [2, 5, 1]]


def _view_after_view(camera_ids_B_V: list[list[int]], frames_per_view: int) -> torch.Tensor:
    """Frame v * frames_per_view + t of sample b carries camera_ids_B_V[b][v]."""
    return torch.tensor([[ids[v] for v in range(len(ids)) for _ in range(frames_per_view)] for ids in camera_ids_B_V])


def test_latent_view_indices_lay_the_views_out_one_after_another():
    frames_per_view = 3
    got = latent_view_indices(torch.tensor(CAMERA_IDS_B_V), frames_per_view)
    assert got.shape == (2, 3 * frames_per_view)
    for b, ids in enumerate(CAMERA_IDS_B_V):
        for v, camera_id in enumerate(ids):
            for t in range(frames_per_view):
                assert got[b, v * frames_per_view + t] == camera_id, (b, v, t)


def test_training_batches_give_each_latent_frame_its_views_camera_id():
    torch.manual_seed(0)
    net = build_network("tiny-multiview")
    model = CosmosTransferModel(net, use_ema=False)
    B, V, t, pixel_frames_per_view = 2, 3, net.config.state_t, 5
    batch = {
        "video_latent": torch.randn(B, 16, V * t, 4, 6),
        "control_latent": torch.randn(B, 16, V * t, 4, 6),
        "text_embedding": torch.randn(B, V * 8, net.config.crossattn_proj_in_channels),
        "sample_n_views": torch.full((B,), V),
        # As the dataset serves it: one camera id per pixel frame, views one after another.
        "view_indices": _view_after_view(CAMERA_IDS_B_V, pixel_frames_per_view),
    }
    inputs = model.encode_batch(batch)
    assert torch.equal(inputs["view_indices_B_T"], _view_after_view(CAMERA_IDS_B_V, t))


def test_generation_gives_each_latent_frame_its_cameras_id():
    cameras = [DEFAULT_CAMERAS[5], DEFAULT_CAMERAS[1], DEFAULT_CAMERAS[3]]
    ids = [CAMERA_TO_VIEW_INDEX[camera] for camera in cameras]
    got = gen.view_indices(cameras, latent_frames_per_view=4, batch_size=2)
    assert torch.equal(got, _view_after_view([ids, ids], 4))
    assert gen.view_indices(None, 4) is None  # single view


@torch.no_grad()
def test_the_networks_default_view_ids_are_the_view_positions():
    torch.manual_seed(0)
    net = build_network("tiny-multiview").eval()
    with torch.no_grad():
        for param in net.parameters():  # the zero-initialised control projections would hide the control input
            param.add_(0.05 * torch.randn_like(param))
    B, V, t = 2, 3, net.config.state_t
    inputs = dict(
        x_B_C_T_H_W=torch.randn(B, 16, V * t, 4, 4),
        timesteps_B_T=torch.tensor([[300.0], [700.0]]),
        crossattn_emb=torch.randn(B, V * 8, net.config.crossattn_proj_in_channels),
        latent_control_input=torch.randn(B, 16, V * t, 4, 4),
    )
    default = net(**inputs)
    positions = net(**inputs, view_indices_B_T=_view_after_view([[0, 1, 2]] * B, t))
    torch.testing.assert_close(default, positions, rtol=0, atol=0)
    assert not torch.allclose(default, net(**inputs, view_indices_B_T=_view_after_view(CAMERA_IDS_B_V, t)))
