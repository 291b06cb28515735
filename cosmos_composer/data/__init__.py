"""Video data: official folder layouts -> MDS shards -> training samples.

* :mod:`~cosmos_composer.data.layouts`: the official multiview-hdmap and single-view folder layouts,
  sample discovery and validation.
* :mod:`~cosmos_composer.data.mds`: the MDS columns (documented there).
* :mod:`~cosmos_composer.data.framerate`: which source frame each served frame is (``--fps``).
* :mod:`~cosmos_composer.data.convert`: the conversion behind ``scripts/convert_to_mds.py``.
* :mod:`~cosmos_composer.data.parts`: its parts and staging folder (resume).
* :mod:`~cosmos_composer.data.launch`: the processes of a launch sharing one conversion.
* :mod:`~cosmos_composer.data.dataset`: :class:`TransferStreamingDataset` and :func:`collate_samples`.
* :mod:`~cosmos_composer.data.controls`: edge (Canny) and blur controls computed on the fly.
* :mod:`~cosmos_composer.data.precompute`: cached VAE latents and text embeddings.
* :mod:`~cosmos_composer.data.demo`: the synthetic demo data of ``scripts/make_demo_dataset.py``.
"""

from cosmos_composer.data.cameras import DEFAULT_CAMERAS, DEFAULT_CAPTION_PREFIXES, view_captions
from cosmos_composer.data.convert import ConversionError, convert_to_mds
from cosmos_composer.data.dataset import TransferStreamingDataset, build_dataloader, collate_samples
from cosmos_composer.data.demo import make_demo_dataset
from cosmos_composer.data.layouts import LAYOUTS, InvalidSampleError, LayoutError
from cosmos_composer.data.precompute import (
    Precomputer,
    check_crossattn_proj_fingerprint,
    crossattn_proj_fingerprint,
)

__all__ = [
    "DEFAULT_CAMERAS",
    "DEFAULT_CAPTION_PREFIXES",
    "LAYOUTS",
    "ConversionError",
    "InvalidSampleError",
    "LayoutError",
    "Precomputer",
    "TransferStreamingDataset",
    "build_dataloader",
    "check_crossattn_proj_fingerprint",
    "collate_samples",
    "convert_to_mds",
    "crossattn_proj_fingerprint",
    "make_demo_dataset",
    "view_captions",
]
