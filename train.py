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


def main(argv: list[str]) -> None:
    if not argv or "-h" in argv or "--help" in argv:
        print(__doc__ + "\n" + describe_config())
        sys.exit(0 if argv else 2)
    return_freed_memory_to_os()  # before the model is built: keeps each rank's host memory lean
    try:
        cfg = load_config(argv[0], argv[1:])
        # Initialise the process group first: dataset preparation synchronises the ranks.
        dist.initialize_dist(get_device(None), timeout=cfg.dist_timeout)
        trainer = build_trainer(cfg)
    except RunAlreadyComplete as done:
        print(done, flush=True)
        sys.exit(0)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    except (CheckpointLoadError, HfResolveError) as error:
        sys.exit(f"checkpoint error: {error}")  # the message names the key: load_path or base_load_path
    except EncoderLoadError as error:
        sys.exit(f"encoder error: {error}")  # the message names the encoders.vae / encoders.text source
    except CheckpointException as error:  # Composer's checkpoint load: a refused pickle is said plainly
        refusal = unsafe_pickle_in(error)
        if refusal is None:
            raise
        sys.exit(f"checkpoint error: {refusal}")
    try:
        trainer.fit()
    except (TrainingDiverged, DiskFullError) as error:  # a full disk: its partial checkpoint is removed already
        sys.exit(f"training stopped: {error}")
    except ShardError as error:  # raised on every rank at once (callbacks/shard_errors.py)
        sys.exit(f"data error: {error}")
    remove_streaming_filelocks(trainer)


if __name__ == "__main__":
    main(sys.argv[1:])
