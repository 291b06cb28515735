"""cosmos-composer: post-train NVIDIA Cosmos-Transfer2.5 on MosaicML Composer."""

__version__ = "0.1.0"
