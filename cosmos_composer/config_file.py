"""Write a config (the run's resolved `config.yaml`, a network's `network.json`) with its secrets redacted."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REDACTED = "<redacted>"
# Key names (or their parts between `_`, `-`, `.`) that hold credentials: `api_key`, `hf_token`, `password`, ...
_SECRET_KEY = re.compile(r"(^|[_\-.])(token|secret|password|passwd|credentials?|(api|access|private)[_\-]?key|apikey)($|[_\-.])",
                         re.IGNORECASE)


def redact_secrets(data: Any) -> Any:
    """`data` with the value of every key that looks like a credential replaced by `<redacted>`."""
    if isinstance(data, dict):
        return {key: REDACTED if _SECRET_KEY.search(str(key)) and value is not None else redact_secrets(value)
                for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_secrets(value) for value in data]
    return data


def write_json_or_yaml(path: str | os.PathLike, data: dict) -> Path:
    """Write plain `data` (dicts, lists, scalars) as JSON or YAML, by the file's suffix, secrets redacted.

    The file is replaced atomically (`atomic_write_text`), so a reader never sees half of it.
    """
    path = Path(path)
    data = redact_secrets(data)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix in (".yaml", ".yml"):
        text = OmegaConf.to_yaml(OmegaConf.create(data))
    else:
        raise ValueError(f"{path}: write_json_or_yaml writes .json, .yaml or .yml files")
    return atomic_write_text(path, text)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return path
