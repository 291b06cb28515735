"""Config files and values: writing the run's resolved `config.yaml` (secrets redacted) and other text files
atomically, and reading the `--set key=value` items of the scripts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

REDACTED = "<redacted>"
# Key names (or their parts between `_`, `-`, `.`) that hold credentials: `api_key`, `hf_token`, `password`, ...
_SECRET_KEY = re.compile(
    r"(^|[_\-.])(token|secret|password|passwd|credentials?|(api|access|private)[_\-]?key|apikey)($|[_\-.])",
    re.IGNORECASE,
)


def redact_secrets(data: Any) -> Any:
    """`data` with the value of every key that looks like a credential replaced by `<redacted>`."""
    if isinstance(data, dict):
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) and value is not None else redact_secrets(value)
            for key, value in data.items()
        }
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


def parse_set_items(items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """`["num_blocks=6", "rope_t_extrapolation_ratio=2.0", "extra_image_context_dim=null"]` -> a typed dict.

    Values follow the rules of the run's YAML and of `train.py key=value` (omegaconf's): `6` is an int, `2.0`
    and `1e-3` floats, `true` / `false` bools, `null` (or `~`) None, `[1, 2]` a list; anything else is a
    string (quote it, `"6"`, to keep a number as text). Raises ValueError naming the bad item.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r} is not key=value (e.g. {option} num_blocks=6)")
        if not text.strip():
            raise ValueError(f"{option} {item!r} has no value (write {key}=null for None)")
        try:
            values[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
        except Exception as error:  # noqa: BLE001 - omegaconf raises yaml's and its own errors
            reason = str(error).splitlines()[0]
            raise ValueError(f"{option} {item!r}: the value cannot be read ({reason})") from None
    return values
