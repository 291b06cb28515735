"""The data section of scripts/benchmark.py (cosmos_composer/benchmarks/data.py) runs end to end at a toy size
and times what it says it times."""

from __future__ import annotations

from pathlib import Path

import cosmos_composer.benchmarks.data as bench
import cosmos_composer.data.clip as clip


def test_the_cached_pass_decodes_nothing_and_the_plain_pass_decodes_every_view(tmp_path, monkeypatch):
    decoded = []  # the mp4 decodes of the data loader (the benchmark runs it in this process: no workers)
    decode_frame_indices = clip.decode_frame_indices
    monkeypatch.setattr(
        clip,
        "decode_frame_indices",
        lambda *args, **kwargs: decoded.append(1) or decode_frame_indices(*args, **kwargs),
    )
    decodes_per_pass = {}
    timed = bench._samples_per_second

    def counting(folder, *args, **kwargs):
        decoded.clear()
        speed = timed(folder, *args, **kwargs)
        decodes_per_pass[Path(folder).name] = len(decoded)
        return speed

    monkeypatch.setattr(bench, "_samples_per_second", counting)
    samples, epochs = 2, 1
    result = bench.benchmark_data(tmp_path, samples=samples, frames=5, height=32, width=48, epochs=epochs, text_dim=64)

    assert decodes_per_pass["mds_cached"] == 0
    # Warm-up and timed passes, each sample's 7 camera videos and their 7 control videos.
    assert decodes_per_pass["mds_plain"] == (1 + epochs) * samples * 7 * 2
    assert result["decode_samples_per_s"] > 0 and result["cached_samples_per_s"] > 0
    assert (tmp_path / "mds_cached" / "index.json").is_file()
