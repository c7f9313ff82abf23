"""What the audio trainers log beside TRL's metrics: averages over every process's samples (one all-reduce), the rows
left out by reason, the peak memory of each logging window, and the completions table (JSONL, wandb, tensorboard)."""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Iterable
from typing import Any

import torch
from accelerate import Accelerator
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from .skips import SKIP_REASONS, SkipCounter


def reduce_over_processes(
    accelerator: Accelerator, values: dict[str, torch.Tensor], names: list[str]
) -> dict[str, tuple[float, float, float, int]]:
    """Per name of `names` (the same list, in the same order, on every process): `(mean, total, std, count)` of the
    values every process gave under that name (NaN values left out, a process may give none), through one all-reduce
    of sums, counts and sums of squares. `mean` and `std` (sample standard deviation, 0 for one value) are NaN where
    no process had a value."""
    local = torch.zeros(len(names), 3, device=accelerator.device)  # sum, count, sum of squares
    for row, name in enumerate(names):
        if name in values:
            v = values[name].detach().float().flatten().to(local.device)
            v = v[~v.isnan()]
            local[row] = torch.stack([v.sum(), torch.tensor(float(v.numel()), device=v.device), (v * v).sum()])
    total, count, squares = accelerator.reduce(local, reduction="sum").unbind(1)
    reduced = {}
    for row, name in enumerate(names):
        n = int(count[row])
        if n == 0:
            reduced[name] = (float("nan"), 0.0, float("nan"), 0)
            continue
        variance = (squares[row] - total[row] ** 2 / n) / (n - 1) if n > 1 else torch.tensor(0.0)
        reduced[name] = (total[row].item() / n, total[row].item(), variance.clamp(min=0).sqrt().item(), n)
    return reduced


def skip_logs(skip_counter: SkipCounter) -> dict[str, int]:
    """The running counts of rows left out: `data/skipped/total` and `data/skipped/<reason>` for every reason."""
    return {
        "data/skipped/total": skip_counter.total,
        **{f"data/skipped/{reason}": skip_counter.by_reason[reason] for reason in SKIP_REASONS},
    }


def window_peak_memory_mb(device: torch.device) -> float:
    """The peak memory since the previous call (the first call: since the process started), in MiB, and a new window
    started: on a GPU the most memory torch allocated on `device`; on the CPU the process's peak resident set size
    (Linux: VmHWM, reset through /proc/self/clear_refs; elsewhere the lifetime peak)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**20
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux; the lifetime peak
    return peak_kb / 1024


def training_logs(skip_counter: SkipCounter, device: torch.device) -> dict[str, float]:
    """What every audio trainer adds to its training logs: the skip counts and the logging window's peak memory."""
    return {**skip_logs(skip_counter), "memory/peak_mb": window_peak_memory_mb(device)}


def write_completions(
    table: list[dict],
    step: int,
    output_dir: str,
    report_to: list[str],
    callbacks: Iterable[TrainerCallback],
    reward_names: list[str],
) -> None:
    """Appends `table` (one dict per prompt: `id`, `prompt`, `reference` and its `samples`, each with `completion`,
    `score`, `rewards` by name and `role`) to `<output_dir>/completions.jsonl`, and sends it to wandb (a table, one row
    per sample) and tensorboard (text) when they are in `report_to`. Call it on the main process only."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "completions.jsonl"), "a", encoding="utf-8") as f:
        for row in table:
            f.write(json.dumps({"step": step, **row}) + "\n")
    flat: list[dict[str, Any]] = [
        {"step": step, "id": row["id"], "prompt": row["prompt"], "reference": row["reference"], **sample}
        for row in table
        for sample in row["samples"]
    ]
    columns = ["step", "id", "prompt", "reference", "completion", "role", "score", *reward_names]
    cells = [[sample.get(c, sample["rewards"].get(c)) for c in columns] for sample in flat]
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({"completions": wandb.Table(columns=columns, data=cells)})
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in cells]
            callback.tb_writer.add_text("completions", "\n".join(lines), step)
