"""benchmarks/data_scale.py in its tiny mode: three real `tokenize` runs per size (prepare, cached, workers), each
with its own peak RSS, and the JSON it writes. Slow (a dozen CLI processes): about two minutes on 2 cores."""

import json

import pytest

from benchmarks import data_scale


@pytest.mark.slow
def test_tiny_data_scale_benchmark(tmp_path, capsys):
    out = tmp_path / "data_scale.json"
    result = data_scale.main(
        ["--tiny", "--sizes", "20", "60", "--work", str(tmp_path / "work"), "--json", str(out)]
    )
    written = json.loads(out.read_text())
    assert written["mode"] == "tiny" and [r["images"] for r in written["rows"]] == [20, 60]
    for row in result["rows"]:
        assert row["prepare"]["prepare_s"] > 0 and row["prepare"]["cache_load_s"] is None
        assert row["cached"]["cache_load_s"] is not None and row["cached"]["prepare_s"] is None  # reused
        assert row["workers"]["workers"] == 2
        for run in ("prepare", "cached", "workers"):
            assert row[run]["peak_rss_mib"] > 50 and row[run]["train_images_per_s"] > 0
    assert set(result["peak_rss_ratio"]) == {"prepare", "cached", "workers"}
    assert "| images |" in capsys.readouterr().out
