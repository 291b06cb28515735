"""Choose the attention kernel of training on purpose, and say which one runs.

PyTorch's SDPA picks a kernel per call from a priority list. For the whole run (forward, backward and the
recomputation of activation checkpointing, which must pick the same kernel as the forward did) this sets the
list to the chosen backend first, then the others as fallbacks, and logs the kernel that the network's
attention shape actually gets. `flash` (FlashAttention-2) is the kernel the H200 figures were measured with;
`cudnn` is cuDNN's fused attention, often faster on Hopper (measure it with `scripts/benchmark.py --section
trainer --set callbacks.attention_kernel.backend=cudnn`).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from composer.core import Callback, State
from composer.loggers import Logger
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def priority(backend: str) -> list[SDPBackend]:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is unknown; choose one of {sorted(BACKENDS)}")
    first = BACKENDS[backend]
    return [first, *(b for b in BACKENDS.values() if b != first)]


def kernel_in_use(order: list[SDPBackend], num_heads: int, head_dim: int, dtype, device) -> str:
    """The first backend of `order` that runs an attention of this head layout (what SDPA will dispatch to)."""
    q = torch.randn(1, num_heads, 256, head_dim, device=device, dtype=dtype)
    for backend in order:
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, q, q)
            return backend.name
        except RuntimeError:
            continue
    return "none"


class AttentionKernel(Callback):
    """Run training with SDPA's `backend` first (flash, cudnn, efficient or math), the others as fallbacks."""

    def __init__(self, backend: str = "flash"):
        self.order = priority(backend)
        self._context = contextlib.ExitStack()

    def fit_start(self, state: State, logger: Logger) -> None:
        self._context.enter_context(sdpa_kernel(self.order, set_priority=True))
        net = getattr(state.model, "module", state.model).net  # DDP wraps the model in `.module`
        device = next(net.parameters()).device
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        name = kernel_in_use(self.order, net.config.num_heads, net.config.head_dim, dtype, device)
        log.info("attention: SDPA runs %s on %s (%s)", name, device.type, dtype)
        logger.log_hyperparameters({"attention_kernel": name})

    def fit_end(self, state: State, logger: Logger) -> None:
        self._context.close()
