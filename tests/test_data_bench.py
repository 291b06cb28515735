"""The data benchmark runs end to end at a toy size and reports both paths."""

from __future__ import annotations

from cosmos_composer.data.bench import benchmark_data


def test_benchmark_data_reports_decode_and_cached_speeds(tmp_path):
    result = benchmark_data(tmp_path, samples=2, frames=5, height=32, width=48, epochs=1, text_dim=64)
    assert result["decode_samples_per_s"] > 0 and result["cached_samples_per_s"] > 0
    assert result["speedup"] == result["cached_samples_per_s"] / result["decode_samples_per_s"]
    assert (tmp_path / "mds_cached" / "index.json").is_file()
