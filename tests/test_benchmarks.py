"""The benchmarks run (as a smoke test: no speed is asserted) and write every scenario they promise."""

import json
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_bench_online_dpo_quick_writes_every_scenario(tmp_path):
    output = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench_online_dpo.py"), "--quick", "--output", str(output)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    results = json.loads(output.read_text())
    expected = {f"{kind} text N=2 gc {gc}" for kind in ("A trl", "B ours") for gc in ("on", "off")}
    expected |= {
        f"{'C' if n == 2 else 'D'} ours audio N={n} gc {gc} {when}"
        for n in (2, 4)
        for gc in ("on", "off")
        for when in ("before", "after")
    }
    assert set(results["scenarios"]) == expected
    for name, scenario in results["scenarios"].items():
        assert 0 < scenario["min_s"] <= scenario["median_s"] <= scenario["max_s"] and scenario["peak_rss_mb"] > 0
        if "audio" in name:
            assert set(scenario["phases_s"]) == {
                "processor", "audio encoder", "generation", "policy fwd+bwd", "reference fwd", "rewards", "rest"
            }  # fmt: skip
            assert 0 < scenario["prefill_share_of_generate"] < 1
    # Each of the batch's 2 clips is encoded once per step after; before, once per sample and pass (and per token
    # without the cache under gradient checkpointing).
    batch = results["batch_size"]
    assert results["scenarios"]["D ours audio N=4 gc on after"]["encoder_rows"] == batch
    assert results["scenarios"]["D ours audio N=4 gc off before"]["encoder_rows"] == 3 * 4 * batch
    assert results["scenarios"]["D ours audio N=4 gc on before"]["encoder_rows"] > 3 * 4 * batch
    assert "B/A text gc on" in results["summary"]
