"""Does online DPO lower held-out WER / B-WER? From the shipped warm start (`examples/models/phi4mm_small_warm_start`,
made by `scripts/train_warm_start.py`), online DPO (biasing prompts with distractors, N samples per clip, reward WER +
bias-word recall) against continued audio SFT for the same wall time, `--seeds` seeds each; held-out WER, CER, B-WER
and U-WER of greedy transcripts of the corpus' test split (150 clips, prompts that list the clip's rare words and
distractors) before and after.

Usage (from the repository root):

    python benchmarks/learning.py --minutes 4 --seeds 0 1 2                 # both arms, two runs at a time
    python benchmarks/learning.py --minutes 4 --arms dpo --set learning_rate=2e-4 --set beta=0.05 --tag lr2e-4
    python benchmarks/learning.py --minutes 3 --arms dpo --seeds 0 --lora_r 16 --set learning_rate=5e-4 --tag lora
    python benchmarks/learning.py --minutes 0.2 --seeds 0 --test_rows 16    # a smoke run

Each run is its own process pinned to one core (one run at a time on each of `--cores`) with one torch thread, so
that the two arms get the same CPU time; the training time excludes the evaluations along the way (`--curve_every`
seconds, on the first `--curve_rows` test rows). The audio encoder and projector stay frozen in both
arms (as in the warm start). `--set key=value` overrides a field of the arm's config (`trl_audio.recipe`), the value
read as JSON where it parses. Results: one JSON per run under `--out_dir` (with its log), and
`<out_dir>/summary.json` plus a Markdown table (printed) of mean and spread (sample standard deviation) over seeds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path


REPO_DIR = Path(__file__).resolve().parents[1]
WARM_START = REPO_DIR / "examples/models/phi4mm_small_warm_start"
METRICS = ("wer", "cer", "b_wer", "u_wer")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_one(args: argparse.Namespace) -> dict:
    """One arm, one seed (or the warm start's own figures, arm `start`), in this process."""
    import torch

    from trl_audio.evaluation import TranscriptionEvalCallback, evaluate_rows
    from trl_audio.modeling import freeze_audio_path
    from trl_audio.recipe import (
        EVAL_KWARGS,
        REWARD_LOG_KEYS,
        TrainingClock,
        continued_sft_trainer,
        corpus_splits,
        online_dpo_trainer,
    )
    from trl_audio.skips import SkipCounter
    from trl_audio.testing import load_tiny

    torch.set_num_threads(1)
    began = time.time()
    model, processor = load_tiny(args.model)
    model.float()
    freeze_audio_path(model)
    skip_counter = SkipCounter()
    train, test = corpus_splits(args.corpus_dir, args.seed, skip_counter, args.train_rows, args.test_rows)
    result = {"arm": args.arm, "seed": args.seed, "model": str(args.model), "overrides": dict(args.set)}
    result["lora_r"] = args.lora_r if args.arm == "dpo" else 0
    if args.arm != "start":
        output_dir = Path(args.out_dir, f"{args.arm}-seed{args.seed}")
        overrides = {"seed": args.seed, **dict(args.set)}
        if args.arm == "dpo":
            trainer = online_dpo_trainer(
                model, processor, train, output_dir, skip_counter, lora_r=args.lora_r, **overrides
            )
            log_keys = ("loss", "objective/kl", "pairs/tied_fraction", *REWARD_LOG_KEYS)
        else:
            trainer = continued_sft_trainer(model, processor, train, output_dir, skip_counter, **overrides)
            log_keys = ("loss",)
        config = trainer.args
        evaluator = TranscriptionEvalCallback(
            trainer, {"test": test[: args.curve_rows]}, batch_size=16, max_new_tokens=40
        )
        clock = TrainingClock(evaluator, args.curve_every, max_seconds=60 * args.minutes, log_keys=log_keys)
        trainer.add_callback(clock)
        trainer.train()
        result |= {
            "steps": trainer.state.global_step,
            "train_seconds": clock.curve[-1]["train_seconds"],
            "curve": clock.curve,
            "config": {
                key: config.to_dict()[key]
                for key in sorted(set(overrides) | _keys(args.arm))
                if key in config.to_dict()
            },
        }
    evaluation = evaluate_rows(model, processor, test, **EVAL_KWARGS)
    result |= {
        "metrics": {key: evaluation["metrics"][key] for key in METRICS},
        "transcripts": evaluation["transcripts"],
    }
    result["total_seconds"] = round(time.time() - began, 1)
    return result


def _keys(arm: str) -> set[str]:
    """The config fields a run records."""
    common = {"learning_rate", "lr_scheduler_type", "per_device_train_batch_size", "seed"}
    return common | (
        {"num_generations", "temperature", "beta", "loss_type", "max_new_tokens"} if arm == "dpo" else set()
    )


def summarize(results: list[dict]) -> dict:
    """Mean and spread (sample standard deviation; 0 for one seed) of each arm's figures, and of the change from the
    warm start."""
    start = next(r for r in results if r["arm"] == "start")["metrics"]
    summary = {"start": start, "arms": {}}
    for arm in sorted({r["arm"] for r in results} - {"start"}):
        runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        entry = {"seeds": [r["seed"] for r in runs], "steps": [r["steps"] for r in runs]}
        for key in METRICS:
            values = [r["metrics"][key] for r in runs]
            deltas = [v - start[key] for v in values]
            entry[key] = {
                "values": values,
                "mean": statistics.mean(values),
                "spread": statistics.stdev(values) if len(values) > 1 else 0.0,
                "change_mean": statistics.mean(deltas),
            }
        summary["arms"][arm] = entry
    return summary


def table(summary: dict, minutes: float) -> str:
    lines = [
        f"| arm ({minutes:g} min each) | steps | WER | B-WER | U-WER | CER | WER change | B-WER change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    start = summary["start"]
    lines.append(
        "| warm start | - | " + " | ".join(f"{start[k]:.3f}" for k in ("wer", "b_wer", "u_wer", "cer")) + " | - | - |"
    )
    for arm, e in summary["arms"].items():
        cells = [f"{e[k]['mean']:.3f} ± {e[k]['spread']:.3f}" for k in ("wer", "b_wer", "u_wer", "cer")]
        changes = [f"{e[k]['change_mean']:+.3f}" for k in ("wer", "b_wer")]
        steps = "/".join(str(s) for s in e["steps"])
        lines.append(f"| {arm} | {steps} | " + " | ".join(cells + changes) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(WARM_START))
    parser.add_argument("--corpus_dir", default=str(REPO_DIR / "outputs/learning/corpus"))
    parser.add_argument("--out_dir", default=str(REPO_DIR / "outputs/learning"))
    parser.add_argument("--minutes", type=float, default=4.0, help="Training minutes per run (evaluations excluded).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["dpo", "sft"], choices=["dpo", "sft"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config field.")
    parser.add_argument("--lora_r", type=int, default=0, help="DPO arm: a LoRA of this rank (0: full fine-tuning).")
    parser.add_argument("--tag", default="", help="Suffix of the result files (to keep tuning runs apart).")
    parser.add_argument("--cores", type=int, nargs="+", default=[0, 1], help="Cores to run on, one run on each.")
    parser.add_argument("--train_rows", type=int, default=None, help="Training rows (default: all 11,850).")
    parser.add_argument("--test_rows", type=int, default=None, help="Held-out rows scored (default: all 150).")
    parser.add_argument("--curve_rows", type=int, default=40)
    parser.add_argument("--curve_every", type=float, default=60.0, help="Seconds of training between evaluations.")
    # internal: one run in this process
    parser.add_argument("--arm", choices=["start", "dpo", "sft"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.set = [(k, parse_value(v)) for k, v in (item.split("=", 1) for item in args.set)]

    if args.arm is not None:
        Path(args.result).write_text(json.dumps(run_one(args), indent=1) + "\n")
        return

    from trl_audio.recipe import ensure_corpus

    ensure_corpus(args.corpus_dir, train_rows=args.train_rows, workers=len(args.cores))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    jobs = [("start", 0)] + [(arm, seed) for seed in args.seeds for arm in args.arms]
    forwarded = [a for a in sys.argv[1:]]
    running: list[tuple[subprocess.Popen, Path, int]] = []
    paths = []
    began = time.time()
    for arm, seed in jobs:
        path = out_dir / (f"{arm}-seed{seed}{suffix}.json" if arm != "start" else "start.json")
        paths.append(path)
        if arm == "start" and path.exists() and json.loads(path.read_text())["model"] == args.model:
            continue  # the warm start's figures do not change
        free = [core for core in args.cores if core not in {busy for _, _, busy in running}]
        while not free:
            process, done, core = running.pop(0)
            if process.wait():
                raise SystemExit(f"The run for {done} failed (exit code {process.returncode}).")
            free = [core]
        command = [sys.executable, __file__, *forwarded, "--arm", arm, "--seed", str(seed), "--result", str(path)]
        print(f"[{time.time() - began:6.0f} s] core {free[0]}: {arm} seed {seed}", flush=True)
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        with open(path.with_suffix(".log"), "w") as log:  # the trainer's logs
            process = subprocess.Popen(["taskset", "-c", str(free[0]), *command], env=env, stdout=log, stderr=log)
        running.append((process, path, free[0]))
    for process, done, _ in running:
        if process.wait():
            raise SystemExit(f"The run for {done} failed (exit code {process.returncode}).")
    results = [json.loads(p.read_text()) for p in paths]
    summary = summarize(results)
    record = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one core and one torch thread per run",
        "minutes": args.minutes,
        "overrides": dict(args.set),
        **summary,
        "runs": [{k: v for k, v in r.items() if k != "transcripts"} for r in results],
    }
    (out_dir / f"summary{suffix}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(table(summary, args.minutes))
    print(f"Wrote {out_dir / f'summary{suffix}.json'} ({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
