"""The benchmarks run (as a smoke test: no speed is asserted) and write every scenario they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


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


def test_bench_grpo_quick_writes_every_scenario_and_encodes_each_clip_once_after(tmp_path):
    output = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "benchmarks/bench_grpo.py"), "--quick", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    results = json.loads(output.read_text())
    scenarios = results["scenarios"]
    expected = {f"G {kind} text N=4 gc {gc}" for kind in ("trl", "ours") for gc in ("on", "off")}
    expected |= {f"H ours audio whisper 6 s N=8 gc off {when}" for when in ("after", "before")}
    assert set(scenarios) == expected
    batch = results["batch_size"]
    # after: each clip once per generation batch; before: once per sample for generation and for the policy pass
    # (beta 0: no reference pass)
    assert scenarios["H ours audio whisper 6 s N=8 gc off after"]["encoder_rows"] == batch
    assert scenarios["H ours audio whisper 6 s N=8 gc off before"]["encoder_rows"] == 2 * 8 * batch
    assert set(results["summary"]) == {
        "G step time ours/trl, text, gc on", "G step time ours/trl, text, gc off", "H step time before/after, audio"
    }  # fmt: skip


def test_bench_online_dpo_whisper_quick_encodes_each_clip_once_after(tmp_path):
    output = tmp_path / "results.json"
    command = [sys.executable, str(REPO / "benchmarks/bench_online_dpo.py"), "--whisper", "--quick", "--output"]
    subprocess.run([*command, str(output)], check=True, capture_output=True, timeout=300)
    results = json.loads(output.read_text())
    scenarios = results["scenarios"]
    assert set(scenarios) == {"F whisper enc 6 s N=8 gc off after", "F whisper enc 6 s N=8 gc off before"}
    batch = results["batch_size"]
    # after: each clip once a step; before: once per sample for generation, the policy and the reference pass
    assert scenarios["F whisper enc 6 s N=8 gc off after"]["encoder_rows"] == batch
    assert scenarios["F whisper enc 6 s N=8 gc off before"]["encoder_rows"] == 3 * 8 * batch
    assert results["summary"]["F step time before/after, 6 s"] > 0


def test_learning_smoke_run_summarizes_both_arms_over_seeds(small_corpus_dir, tmp_path):
    out_dir = tmp_path / "learning"
    command = [
        sys.executable, str(REPO / "benchmarks/learning.py"), "--corpus_dir", str(small_corpus_dir),
        "--out_dir", str(out_dir), "--minutes", "0.05", "--seeds", "0", "1", "--train_rows", "8", "--test_rows", "4",
        "--curve_rows", "2", "--curve_every", "1", "--arms", "dpo", "sft", "--fit_rows", "4",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    summary = json.loads((out_dir / "summary.json").read_text())
    runs = {(run["arm"], run["seed"]): run for run in summary["runs"]}
    fixed = {("start", 0), ("whisper", 0), ("whisper_prompt", 0)}
    assert set(runs) == fixed | {("dpo", 0), ("dpo", 1), ("sft", 0), ("sft", 1)}
    assert summary["start"] == runs["start", 0]["metrics"]
    assert summary["baselines"] == {name: runs[name, 0]["metrics"] for name in ("whisper", "whisper_prompt")}
    # Training-clip fit: the clips each run trained on (the first 4 it saw, of the 8), before and after
    for arm, seed in runs.keys() - fixed:
        fit = runs[arm, seed]["fit"]
        assert 1 <= fit["rows"] <= 4 and set(fit["before"]) == set(fit["after"]) == {"wer", "cer", "b_wer", "u_wer"}
        assert summary["arms"][arm]["verdict"].startswith(f"{arm}: ")
    for arm in ("dpo", "sft"):
        assert all(runs[arm, seed]["steps"] >= 1 and len(runs[arm, seed]["curve"]) >= 2 for seed in (0, 1))
        wer = [runs[arm, seed]["metrics"]["wer"] for seed in (0, 1)]
        entry = summary["arms"][arm]["wer"]
        assert entry["mean"] == pytest.approx(sum(wer) / 2)
        assert entry["spread"] == pytest.approx(abs(wer[0] - wer[1]) / 2**0.5)
        assert entry["change_mean"] == pytest.approx(entry["mean"] - summary["start"]["wer"])
    assert runs["dpo", 0]["config"]["temperature"] == 0.7 and runs["sft", 0]["config"]["seed"] == 0
