"""The sections of `scripts/benchmark.py`, one module each: `network`, `data`, `train`, `trainer`, `evaluate`.

Each section module has `add_arguments(parser)` (its own argument group) and `run(args)`; `scripts/benchmark.py`
lists them in its `SECTIONS`. They measure the library's own code paths: the network, the trainability rule,
the EMA, the `--set` parser and the latent geometry come from the library, never a copy.
"""
