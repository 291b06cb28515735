"""How a training run stops early: one line for the user, printed once when every rank stopped alike."""

from __future__ import annotations

import sys
from typing import NoReturn

from composer.utils import dist


def stop_run(line: str, code: int = 1, every_rank_alike: bool = False) -> NoReturn:
    """Exit this rank, saying `line` (on stderr).

    `every_rank_alike`: every rank stopped at the same point for the same reason (a config error found in the
    command line or decided on global rank 0, a non-finite loss all ranks agreed on, a preemption). Then global
    rank 0 alone prints the line, and on each node the rank with local rank 0 alone exits with `code`: the others
    exit 0. Composer's launcher prints again the whole console of every rank that exits non-zero (unless a signal
    killed it) and returns the first non-zero exit code in rank order, so the launcher still exits with `code`
    and the line shows once. A stop that some ranks only reached is printed by each of them with `code`, and the
    launcher shows their consoles.
    """
    if not every_rank_alike or dist.get_global_rank() == 0:
        print(line, file=sys.stderr, flush=True)
    sys.exit(code if not every_rank_alike or dist.get_local_rank() == 0 else 0)
