"""Post-train Cosmos-Transfer2.5: `composer train.py yamls/hdmap.yaml [key=value ...]`.

One process: `python train.py yamls/quickstart.yaml`. Overrides are omegaconf dot-lists
(`max_duration=10ba model.train_base=true loggers=null`); unknown keys are rejected.
`--help` (also after the YAML) lists every key with its default.
"""

import sys

from composer.utils import dist, get_device
from torch.distributed.checkpoint.api import CheckpointException

from cosmos_composer.builders import build_trainer
from cosmos_composer.callbacks.nonfinite_loss import TrainingDiverged
from cosmos_composer.callbacks.preemption import (
    PREEMPTED_EXIT_CODE,
    Preempted,
    catch_stop_signals,
    received_stop_signal,
    stop_signals_wait_for_the_batch,
    stopped_before_training,
)
from cosmos_composer.checkpoint.autoresume import RunAlreadyComplete
from cosmos_composer.checkpoint.hf import HfResolveError
from cosmos_composer.checkpoint.load import CheckpointLoadError
from cosmos_composer.checkpoint.safe_pickle import unsafe_pickle_in
from cosmos_composer.config import ConfigError, describe_config, load_config
from cosmos_composer.data.dataset import ShardError
from cosmos_composer.data.output import DiskFullError
from cosmos_composer.encoders import EncoderLoadError
from cosmos_composer.host_memory import return_freed_memory_to_os
from cosmos_composer.quiet import remove_streaming_filelocks
from cosmos_composer.run_exit import stop_run
from cosmos_composer.run_setup import AutoresumeError, ConfigErrorOnEveryRank


def main(argv: list[str]) -> None:
    if not argv or "-h" in argv or "--help" in argv:
        print(__doc__ + "\n" + describe_config())
        sys.exit(0 if argv else 2)
    catch_stop_signals()  # after Composer's import (above), which installs handlers that exit at once
    return_freed_memory_to_os()  # before the model is built: keeps each rank's host memory lean
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as error:
        stop_run(f"config error: {error}", every_rank_alike=True)  # every rank reads the same command line
    except Preempted as stop:
        stop_run(str(stop), PREEMPTED_EXIT_CODE, every_rank_alike=True)
    try:
        # Initialise the process group first: dataset preparation synchronises the ranks.
        dist.initialize_dist(get_device(None), timeout=cfg.dist_timeout)
        trainer = build_trainer(cfg)
    except RunAlreadyComplete as done:
        if dist.get_global_rank() == 0:  # decided on global rank 0 for every rank
            print(done, flush=True)
        sys.exit(0)
    except Preempted as stop:
        stop_run(str(stop), PREEMPTED_EXIT_CODE, every_rank_alike=True)
    except AutoresumeError as error:
        stop_run(f"checkpoint error: {error}", every_rank_alike=True)
    except ConfigError as error:
        stop_run(f"config error: {error}", every_rank_alike=isinstance(error, ConfigErrorOnEveryRank))
    except (CheckpointLoadError, HfResolveError) as error:
        stop_run(f"checkpoint error: {error}")  # the message names the key: load_path or base_load_path
    except EncoderLoadError as error:
        stop_run(f"encoder error: {error}")  # the message names the encoders.vae / encoders.text source
    except CheckpointException as error:  # Composer's checkpoint load: a refused pickle is said plainly
        refusal = unsafe_pickle_in(error)
        if refusal is None:
            raise
        stop_run(f"checkpoint error: {refusal}")
    except Exception:
        if received_stop_signal() is None:
            raise
        # Another rank stopped first (a collective failed): this rank's stop signal explains it.
        stop_run(str(stopped_before_training()), PREEMPTED_EXIT_CODE, every_rank_alike=True)
    stop_signals_wait_for_the_batch()  # from here a stop signal saves the batch in flight (callbacks/preemption.py)
    try:
        trainer.fit()
    except TrainingDiverged as error:  # every rank agreed on the batch (one all-reduce)
        stop_run(f"training stopped: {error}", every_rank_alike=True)
    except Preempted as stop:  # after the checkpoint of this batch, on every rank at the same batch
        remove_streaming_filelocks(trainer)
        stop_run(str(stop), PREEMPTED_EXIT_CODE, every_rank_alike=True)
    except DiskFullError as error:  # its partial checkpoint is removed already; a rank's own disk may be the full one
        stop_run(f"training stopped: {error}")
    except ShardError as error:  # raised on every rank at once (callbacks/shard_errors.py)
        stop_run(f"data error: {error}", every_rank_alike=True)
    remove_streaming_filelocks(trainer)


if __name__ == "__main__":
    main(sys.argv[1:])
