"""`trl_audio.metrics`: the process-wide reduction against hand-worked numbers, the skip counts, the completions
table written as JSON lines."""

import json
import math

import torch
from accelerate import Accelerator

from trl_audio.metrics import reduce_over_processes, skip_logs, training_logs, write_completions
from trl_audio.skips import SKIP_REASONS, SkipCounter


def test_reduce_over_processes_on_hand_worked_values():
    """[1, 2, NaN, 6]: NaN dropped, mean 3, total 9, sample std sqrt(((1-3)^2 + (2-3)^2 + (6-3)^2) / 2) = sqrt(7)."""
    values = {"a": torch.tensor([1.0, 2.0, float("nan"), 6.0]), "b": torch.tensor(True)}
    reduced = reduce_over_processes(Accelerator(cpu=True), values, ["a", "b", "absent"])
    mean, total, std, count = reduced["a"]
    assert (mean, total, count) == (3.0, 9.0, 3) and math.isclose(std, math.sqrt(7), rel_tol=1e-6)
    assert reduced["b"] == (1.0, 1.0, 0.0, 1)  # one value: its own mean, no spread
    assert math.isnan(reduced["absent"][0]) and reduced["absent"][3] == 0


def test_skip_logs_name_every_reason():
    counter = SkipCounter()
    counter.add("audio_missing", "row 3")
    counter.update({"prompt_too_long": 2})
    logs = skip_logs(counter)
    assert logs["data/skipped/total"] == 3 and logs["data/skipped/audio_missing"] == 1
    assert set(logs) == {"data/skipped/total", *(f"data/skipped/{reason}" for reason in SKIP_REASONS)}
    assert training_logs(counter, torch.device("cpu"))["memory/peak_mb"] > 0


def test_write_completions_appends_one_json_line_per_prompt(tmp_path):
    table = [
        {
            "id": "a",
            "prompt": "user: Transcribe.",
            "reference": "hello",
            "samples": [
                {"completion": "hello", "score": 0.0, "rewards": {"wer": 0.0}, "role": "chosen"},
                {"completion": "yellow", "score": -1.0, "rewards": {"wer": -1.0}, "role": "rejected"},
            ],
        }
    ]
    for step in (5, 10):
        write_completions(table, step, str(tmp_path), [], [], ["wer"])
    lines = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [5, 10] and lines[0]["samples"][1]["completion"] == "yellow"
