"""Preemption-safe training: a stop signal finishes the step in flight, saves a checkpoint at that batch and stops
the run with exit code 75 (`PREEMPTED_EXIT_CODE`); the same command run again resumes from that checkpoint.

The stop signals: SIGTERM (what SLURM sends every task at its time limit and Kubernetes sends a pod, and what
Composer's launcher sends its ranks when it is itself stopped), SIGUSR1 (SLURM's `--signal=USR1@<seconds>`),
SIGINT (Ctrl-C, to the whole foreground process group) and SIGHUP (the terminal went away, or the launcher died:
each rank asks the kernel for SIGHUP when its parent process dies, so a launcher killed by a signal it does not
handle, SIGUSR1 or SIGKILL, still has its ranks save).

Composer installs, when it is imported, handlers that `sys.exit(128 + signal)` at once: a rank then dies wherever
it is, losing every batch since the last checkpoint. `catch_stop_signals` replaces them. While the Trainer is
built (nothing to save yet) the first signal stops the rank at once (`Preempted`). From then on (train.py calls
`stop_signals_wait_for_the_batch`) a signal only notes itself (a handler runs in the main thread between
bytecodes: nothing may be saved from there), and the `Preemption` callback acts on it at the end of the batch:

- BATCH_END: one all-reduce of the noted signal per batch, so every rank stops at the same batch although each
  got its signal at a slightly different time; an eval due at this batch is skipped (it would spend the grace
  period);
- BATCH_CHECKPOINT: Composer's checkpoint saver saves at this batch (its `save_interval` says yes), then
  `CheckpointChecksums` writes network.json and checksums.json, then this callback (the last one) raises
  `Preempted`, which train.py reports in one line from global rank 0.

A second signal while the checkpoint is written is noted and changes nothing: only SIGKILL stops the save.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from pathlib import Path
from typing import Optional

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again", the same command resumes
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies (Linux)

_received: Optional[int] = None  # the first stop signal this process got
_stop_at_once = True  # before training starts nothing is saved: the first signal stops the rank at once


class Preempted(BaseException):
    """The run stopped on a stop signal; the message is its one line for the user.

    A BaseException, as KeyboardInterrupt is: raised from a signal handler, no `except Exception` may swallow it.
    """


def catch_stop_signals() -> None:
    """Install the stop-signal handlers (call after Composer is imported: it installs its own on import)."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _note_stop_signal)
    if sys.platform == "linux":  # a launcher killed by SIGUSR1 or SIGKILL leaves its ranks running otherwise
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)


def received_stop_signal() -> Optional[str]:
    """The name of the first stop signal this process got (`SIGTERM`), or None."""
    return None if _received is None else _signal_name(_received)


def _signal_name(signum: int) -> str:
    name = signal.Signals(signum).name
    return f"{name} (the launcher or the terminal went away)" if signum == signal.SIGHUP else name


def stopped_before_training() -> Preempted:
    """What a rank signalled before its first batch says: there was nothing to save."""
    return Preempted(
        f"preempted by {received_stop_signal()} before training started: nothing to save; "
        "run the same command again to start"
    )


def _note_stop_signal(signum: int, frame) -> None:
    global _received, _stop_at_once
    if _received is None:
        _received = signum
    if _stop_at_once:
        _stop_at_once = False  # once: a second signal must not interrupt the first one's way out
        raise stopped_before_training()


def stop_signals_wait_for_the_batch() -> None:
    """From now on a stop signal is only noted; `Preemption` stops the run at the end of the batch (call once the
    Trainer is built: a signal before the first batch ends then stops the run after that batch, saved)."""
    global _stop_at_once
    _stop_at_once = False


class Preemption(Callback):
    """Stop the run at the batch where any rank got a stop signal, after its checkpoint and checksums."""

    def __init__(self, saver: Optional[CheckpointSaver]):
        self.saver = saver
        self.stop_signal: Optional[str] = None  # set on every rank at the batch the run stops at

    @classmethod
    def attach(cls, trainer) -> Preemption:
        """Append the callback after every other one (after `CheckpointChecksums.attach`), and have the saver
        save, and the evaluators skip, the batch the run stops at."""
        savers = [cb for cb in trainer.state.callbacks if isinstance(cb, CheckpointSaver)]
        preemption = cls(savers[0] if savers else None)
        if preemption.saver is not None:
            save_interval = preemption.saver.save_interval
            preemption.saver.save_interval = lambda state, event: (
                (preemption.stop_signal is not None and event == Event.BATCH_CHECKPOINT) or save_interval(state, event)
            )
        for evaluator in trainer.state.evaluators:
            eval_interval = evaluator.eval_interval
            evaluator.eval_interval = lambda state, event, due=eval_interval: (
                preemption.stop_signal is None and due(state, event)
            )
        trainer.state.callbacks.append(preemption)
        return preemption

    def batch_end(self, state: State, logger: Logger) -> None:
        # The highest signal number any rank got (0: none): every rank learns the same one at the same batch.
        signum = state.device.tensor_to_device(torch.tensor([_received or 0], dtype=torch.int64))
        dist.all_reduce(signum, reduce_operation="MAX")
        if signum.item():
            self.stop_signal = _signal_name(int(signum.item()))

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        if self.stop_signal is None:
            return
        where = f"preempted by {self.stop_signal} at batch {int(state.timestamp.batch)}"
        if self.saver is None:
            raise Preempted(f"{where}: no checkpoint saved (save_folder is null), its batches are lost")
        saved = Path(self.saver.saved_checkpoints[-1])
        name = saved.parent.name if state.fsdp_sharded_state_dict_enabled else saved.name
        raise Preempted(f"{where}: saved {name}; run the same command again to resume")
