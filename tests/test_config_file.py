"""The one `--set key=value` parser of the scripts (cosmos_composer.config_file.parse_set_items)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cosmos_composer.config import load_config
from cosmos_composer.config_file import parse_set_items

QUICKSTART = Path(__file__).resolve().parents[1] / "yamls" / "quickstart.yaml"

RULES = [
    ("6", 6),
    ("-3", -3),
    ("2.0", 2.0),
    ("1e-3", 0.001),
    ("0.3333333333333333", 1 / 3),
    ("true", True),
    ("false", False),
    ("True", True),
    ("null", None),
    ("~", None),
    ("tiny-singleview", "tiny-singleview"),
    ("None", "None"),
    ('"6"', "6"),
    ("a b", "a b"),
    ("[1, 2]", [1, 2]),
    ("[0.5, null, x]", [0.5, None, "x"]),
]


@pytest.mark.parametrize("text, value", RULES, ids=[text for text, _ in RULES])
def test_values_follow_the_yaml_rules(text, value):
    parsed = parse_set_items([f"key={text}"])["key"]
    assert parsed == value and type(parsed) is type(value)


def test_values_mean_what_they_mean_on_the_training_command_line():
    """`--set X=v` of export/generate gives what `train.py ... model.overrides.X=v` gives the run."""
    items = [
        "rope_t_extrapolation_ratio=2",
        "timestep_scale=1e-3",
        "extra_image_context_dim=null",
        "use_input_hint_block=true",
        "num_blocks=6",
        "vace_block_every_n=3",
    ]
    cfg = load_config(QUICKSTART, [f"model.overrides.{item}" for item in items])
    assert parse_set_items(items) == dict(cfg.model.overrides)


def test_a_bad_item_names_itself():
    assert parse_set_items([" num_blocks = 6", "num_blocks=3"]) == {"num_blocks": 3}  # the last one wins
    for item, reason in [
        ("num_blocks", " is not key=value"),
        ("=6", " is not key=value"),
        ("num_blocks=", " has no value"),
        ("num_blocks=[1,", ": the value cannot be read"),
    ]:
        with pytest.raises(ValueError, match=rf"^--set {re.escape(repr(item))}{reason}"):
            parse_set_items(["ok=1", item])
