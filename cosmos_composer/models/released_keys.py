"""The parameter keys and shapes of the released 2B checkpoints (`spec/released_checkpoint_keys.json`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_SPEC_FILE = Path(__file__).resolve().parent.parent / "spec" / "released_checkpoint_keys.json"

# Which released file each 2B preset reproduces.
RELEASED_VARIANT_OF_PRESET = {
    "transfer2.5-2b-singleview": "singleview_posttrain",
    "transfer2.5-2b-singleview-general": "singleview_general",
    "transfer2.5-2b-multiview": "multiview_auto",
}


@lru_cache(maxsize=None)
def _load() -> dict:
    return json.loads(_SPEC_FILE.read_text())


def released_parameter_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    """`{key without 'net.': shape}` of the released file that `preset` reproduces."""
    if preset not in RELEASED_VARIANT_OF_PRESET:
        raise ValueError(f"No released checkpoint for preset {preset!r}; known: {sorted(RELEASED_VARIANT_OF_PRESET)}")
    keys = _load()[RELEASED_VARIANT_OF_PRESET[preset]]
    return {key.removeprefix("net."): tuple(shape) for key, shape in keys.items()}
