"""The processes of one launch (``composer -n 8 scripts/convert_to_mds.py ...``) sharing one conversion.

The launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``. The processes
coordinate through torch.distributed's key-value store on that address (a ``TCPStore`` that rank 0 hosts): rank 0
shares what it decided, every rank counts its samples for rank 0's progress bar, and a failing rank leaves its
message for rank 0 while the others stop at their next sample.

No collective (process group) is used, on purpose: a resumed conversion can leave one rank hours of work and
the others none, and a rank waiting in a collective times out (30 minutes for gloo); polling the store does not.
Without a launcher an in-process ``HashStore`` stands in, so one process runs the same code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

# How often a waiting rank looks at the store again.
POLL_SECONDS = 0.2
# How long a rank tries to reach the store of rank 0 at the start.
STORE_CONNECT_TIMEOUT = timedelta(minutes=10)


class StoppedByAnotherRank(RuntimeError):
    """Raised on the ranks other than 0 when a rank failed: rank 0 raises the error itself (and the script prints it)."""


class Launch:
    """This process's rank in the launch, and the store the ranks coordinate through (one conversion per Launch).

    ``Launch()`` is a single process; :meth:`from_environment` joins the launch a launcher started.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, store: dist.Store | None = None):
        if world_size > 1 and store is None:
            raise ValueError("a launch of several processes needs the store they share")
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.store = store if store is not None else dist.HashStore()

    @classmethod
    def from_environment(cls) -> Launch:
        """The launch of this process: from the launcher's variables, or a single process when WORLD_SIZE is unset."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE={world_size} is set, but not {', '.join(missing)}. Fix: start the processes with a "
                "launcher (composer -n N ...), or unset WORLD_SIZE to run one process"
            )
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        # torchrun's agent already serves the store on MASTER_PORT; Composer's launcher leaves it to rank 0.
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=rank == 0 and not agent_store,
            timeout=STORE_CONNECT_TIMEOUT,
            wait_for_workers=False,
        )
        # Keys of their own, apart from the agent's and from those of an earlier attempt of an elastic restart.
        prefix = f"cosmos_composer.convert.{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        return cls(rank, world_size, local_rank, dist.PrefixStore(prefix, store))

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def share(self, key: str, make: Callable[[], Any]) -> Any:
        """Rank 0 computes ``make()`` (plain JSON data) and every rank returns it.

        When ``make`` raises, rank 0 re-raises it and the other ranks raise :class:`StoppedByAnotherRank`.
        JSON, not pickle, travels: the store listens on the network.
        """
        if self.is_rank_zero:
            try:
                value = make()
            except Exception as error:
                self.store.set(key, json.dumps({"error": str(error)}))
                raise
            text = json.dumps({"value": value})
            self.store.set(key, text)
        else:
            self._wait_until(lambda: self.store.check([key]))
            text = self.store.get(key).decode()
        message = json.loads(text)
        if "error" in message:
            raise StoppedByAnotherRank(f"rank 0 failed: {message['error']}")
        return message["value"]

    def add(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to the counter ``key`` (shared by all ranks) and return its new value."""
        return self.store.add(key, amount)

    def fail(self, message: str) -> None:
        """Leave this rank's error message for rank 0 and tell the other ranks to stop."""
        self.store.set(f"error/{self.rank}", message)
        self.add("failed", 1)

    def failed(self) -> bool:
        """Whether a rank has failed."""
        return self.add("failed", 0) > 0

    def errors(self) -> dict[int, str]:
        """The error message of each rank that failed."""
        return {
            rank: self.store.get(f"error/{rank}").decode()
            for rank in range(self.world_size)
            if self.store.check([f"error/{rank}"])
        }

    def wait_for_all(self, key: str, poll: Callable[[], None] = lambda: None) -> None:
        """Count this rank in at ``key`` and wait until every rank has, calling ``poll`` meanwhile."""
        self.add(key, 1)
        self._wait_until(lambda: self.add(key, 0) >= self.world_size, poll)

    def leave(self) -> None:
        """Call last on every rank: rank 0 (whose process serves the store) waits until no rank needs it any more."""
        self.add("left", 1)
        if self.is_rank_zero:
            self._wait_until(lambda: self.add("left", 0) >= self.world_size)

    def _wait_until(self, done: Callable[[], bool], poll: Callable[[], None] = lambda: None) -> None:
        while not done():
            poll()
            time.sleep(POLL_SECONDS)
