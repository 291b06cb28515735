"""The Cosmos-Transfer2.5 network and its presets."""

from .network import CONTROL_BRANCH_PREFIXES, CosmosTransferNet, build_network
from .presets import PRESETS, NetworkConfig, get_config

__all__ = ["CONTROL_BRANCH_PREFIXES", "CosmosTransferNet", "NetworkConfig", "PRESETS", "build_network", "get_config"]
