"""
The trl-audio demo (`make demo`): online DPO of a small random-weight Phi-4-multimodal on the bundled speech sample,
with the library calls the CLI (examples/scripts/dpo_online_phi4_multimodal.py) makes, on CPU in about a minute.

It builds the model offline, then makes two runs and prints their per-step metrics and WER / B-WER before and after:
1. the real recipe in miniature: LoRA, rewards WER + bias-word recall, 4 samples per clip, biasing prompts;
2. a check that the loop optimizes what it is given: a reward any model can learn (fewer words), full fine-tuning.
The weights are random, so the transcripts are noise: this shows the pipeline working, not ASR quality.

Usage:

python examples/scripts/demo_phi4_multimodal_dpo.py
python examples/scripts/demo_phi4_multimodal_dpo.py --steps 20 --brevity_steps 80 --output_dir outputs/demo
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

import torch
import transformers
from peft import LoraConfig
from transformers import TrainerCallback

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.audio_dataset import create_audio_dataset, dataset_from_config, load_dataset_config
from trl_audio.evaluation import evaluate_rows
from trl_audio.modeling import decoder_lora_targets, init_model
from trl_audio.rewards import get_reward_funcs
from trl_audio.skips import SkipCounter
from trl_audio.testing import build_tiny_phi4mm


REPO_DIR = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = REPO_DIR / "examples/configs/audio_dataset_config.json"
TEST_TSV = REPO_DIR / "examples/data/speech_sample/test.tsv"
DEFAULT_OUTPUT_DIR = REPO_DIR / "outputs/demo_phi4_multimodal_dpo"
# (title, log key, format) of the per-step table; a reward column appears in the runs that use that reward.
COLUMNS = [
    ("step", "step", "{:>4d}"),
    ("loss", "loss", "{:>6.3f}"),
    ("wer", "rewards/wer_reward/mean", "{:>5.2f}"),
    ("recall", "rewards/bias_word_recall_reward/mean", "{:>6.2f}"),
    ("words", "rewards/word_count_reward/mean", "{:>6.2f}"),
    ("tied", "pairs/tied_fraction", "{:>4.2f}"),
    ("kl", "objective/kl", "{:>6.2f}"),
    ("len", "completions/mean_length", "{:>5.1f}"),
    ("eos", "val/contain_eos_token", "{:>4.2f}"),
    ("smp/s", "perf/samples_per_second", "{:>5.1f}"),
]
COLUMN_NOTES = {
    "wer": "reward of WER: minus the word error rate of each sample (-1 = every word wrong)",
    "recall": "reward of bias-word recall: share of the clip's keywords in the sample",
    "words": "reward of brevity: minus the number of words of each sample",
    "tied": "fraction of clips whose 4 samples all score the same: no preference, no loss",
    "kl": "KL(policy || reference) summed over the sample's tokens",
    "len": "mean sample length in tokens",
    "eos": "fraction of samples that end with an end token within max_new_tokens",
    "smp/s": "samples (clips x 4) generated, scored and trained on per second",
}


class StepTable(TrainerCallback):
    """Prints one compact line per logged step to `out` (the trainer's own log goes to the run's log file)."""

    def __init__(self, out: TextIO, reward_names: list[str]):
        self.out = out
        rewards = {f"rewards/{name}/mean" for name in reward_names}
        self.columns = [c for c in COLUMNS if not c[1].startswith("rewards/") or c[1] in rewards]

    def on_train_begin(self, args, state, control, **kwargs):
        print("  " + " ".join(f"{title:>{len(fmt.format(0))}}" for title, _, fmt in self.columns), file=self.out)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            values = {**logs, "step": state.global_step}
            print("  " + " ".join(fmt.format(values[key]) for _, key, fmt in self.columns), file=self.out)
            self.out.flush()


def run(
    model_dir: Path,
    eval_rows: list[dict],
    reward_names: list[str],
    peft_config: LoraConfig | None,
    training_args: AudioOnlineDPOConfig,
    out: TextIO,
) -> dict[str, Any]:
    """One training run on the bundled training split, WER / B-WER before and after on `eval_rows`, as the CLI does;
    the trainer's own output goes to `<output_dir>.log`. Returns `{"log_history", "eval_before", "eval_after"}`."""
    log_path = Path(f"{training_args.output_dir}.log")
    print(f"  (full log: {log_path})\n", file=out)
    with (
        open(log_path, "w", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        model, processor = init_model(str(model_dir), speech_lora="merge", dtype="float32")
        skip_counter = SkipCounter()
        reward_funcs = get_reward_funcs(reward_names)
        trainer = AudioOnlineDPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=dataset_from_config(TRAIN_CONFIG, skip_counter=skip_counter),
            processing_class=processor,
            peft_config=peft_config,
            callbacks=[StepTable(out, [f.__name__ for f in reward_funcs])],
            skip_counter=skip_counter,
        )
        evaluate = lambda: evaluate_rows(trainer.model, processor, eval_rows, max_new_tokens=16)  # noqa: E731
        eval_before = evaluate()
        trainer.train()
        trainer.save_model(training_args.output_dir)
        return {"log_history": trainer.state.log_history, "eval_before": eval_before, "eval_after": evaluate()}


def print_eval(result: dict[str, Any], references: dict[str, str], out: TextIO) -> None:
    """WER / B-WER / U-WER before and after, and one clip's transcripts."""
    print(f"\n  {'':<8}{'WER':>8}{'B-WER':>8}{'U-WER':>8}{'words/transcript':>18}", file=out)
    for name in ("before", "after"):
        evaluation = result[f"eval_{name}"]
        m, transcripts = evaluation["metrics"], evaluation["transcripts"]
        words = sum(len(t["hypothesis"].split()) for t in transcripts) / len(transcripts)
        print(f"  {name:<8}{m['wer']:>8.1%}{m['b_wer']:>8.1%}{m['u_wer']:>8.1%}{words:>18.1f}", file=out)
    first = result["eval_before"]["transcripts"][0]["id"]
    print(f"  clip {first}, reference: {references[first]!r}", file=out)
    for name in ("before", "after"):
        hypothesis = result[f"eval_{name}"]["transcripts"][0]["hypothesis"]
        print(f"  {'':<{len(first) + 5}} {name + ':':<10} {_clip(hypothesis)!r}", file=out)


def say(text: str, out: TextIO) -> None:
    """`text` as an indented paragraph between blank lines."""
    print("\n" + textwrap.fill(text, width=116, initial_indent="  ", subsequent_indent="  ") + "\n", file=out)


def logged(result: dict[str, Any], key: str) -> list[float]:
    """The values of `key` in a run's training logs, in step order."""
    return [logs[key] for logs in result["log_history"] if key in logs]


def mean_logged(result: dict[str, Any], key: str) -> float:
    """The mean of `key` over a run's training logs."""
    values = logged(result, key)
    return sum(values) / len(values)


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def run_demo(
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    steps: int = 10,
    brevity_steps: int = 60,
    size: str = "small",
    seed: int = 42,
    out: TextIO | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the model, make the two runs (`steps` and `brevity_steps` optimizer steps), print what they show, and
    return each run's result (`{"asr": ..., "brevity": ...}`, each as `run` returns it)."""
    out = out or sys.stdout
    start = time.perf_counter()
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    print(f"trl-audio demo: online DPO of a {size} random-weight Phi-4-multimodal on CPU ({output_dir})", file=out)
    print("Its weights are random: it demonstrates the pipeline, not ASR quality (expect WER ~100%).\n", file=out)
    with open(output_dir / "build.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        model_dir = build_tiny_phi4mm(output_dir / "model", size=size)
    # The evaluation set: the bundled test split, with the training config's biasing prompts.
    biasing = load_dataset_config(TRAIN_CONFIG)["biasing"]
    eval_rows = list(create_audio_dataset("tsv", tsv_paths=str(TEST_TSV), on_error="raise", biasing=biasing))
    references = {row["id"]: row["text"] for row in eval_rows}

    def training_args(name: str, **kwargs: Any) -> AudioOnlineDPOConfig:
        return AudioOnlineDPOConfig(
            output_dir=str(output_dir / name),
            per_device_train_batch_size=2,
            num_generations=4,
            max_new_tokens=16,
            gradient_checkpointing=False,
            save_strategy="no",
            seed=seed,
            report_to="none",
            bf16=False,
            disable_tqdm=True,
            **kwargs,
        )

    print(
        f"1) The recipe in miniature: LoRA, rewards WER + bias-word recall, {steps} steps of 2 clips x 4 samples",
        file=out,
    )
    asr = run(
        model_dir,
        eval_rows,
        ["wer", "bias_word_recall"],
        LoraConfig(target_modules=decoder_lora_targets("phi4_multimodal"), task_type="CAUSAL_LM"),
        training_args("asr", learning_rate=1e-3, max_steps=steps, logging_steps=1),
        out,
    )
    print_eval(asr, references, out)
    say(
        "Samples of a random model all get WER ~100% and recall 0, so the 4 samples of a clip tie "
        f"({mean_logged(asr, 'pairs/tied_fraction'):.0%} of clips here): a tied clip has no preferred sample and adds "
        "nothing to the loss (loss 0), so the model learns nothing rather than noise. With the real Phi-4-MM, samples "
        "differ in WER and recall, and DPO learns from those differences.",
        out,
    )

    print(
        f"2) A reward any model can learn (minus the number of words), full fine-tuning, {brevity_steps} steps",
        file=out,
    )
    brevity = run(
        model_dir,
        eval_rows,
        ["word_count"],
        None,
        training_args(
            "brevity", learning_rate=5e-3, max_steps=brevity_steps, logging_steps=max(1, brevity_steps // 10)
        ),
        out,
    )
    print_eval(brevity, references, out)
    rewards = logged(brevity, "rewards/word_count_reward/mean")
    say(
        "Samples differ in their number of words, so most pairs carry a preference. The reward went from "
        f"{rewards[0]:.2f} to {rewards[-1]:.2f}: the policy learned to say fewer words (by ending at once, len -> 1, "
        "or by gluing tokens into one 'word' without spaces, depending on the seed). DPO optimizes the reward it is "
        "given, useless ones included, so WER stays at 100%. (Full fine-tuning here: a LoRA on random weights moves "
        "the output distribution too little in so few steps.)",
        out,
    )
    print("Columns:", file=out)
    for name, note in COLUMN_NOTES.items():
        print(f"  {name:<7}{note}", file=out)
    print(
        "B-WER is the error rate on the words of each clip's keywords (its rare words), U-WER on the other words.\n"
        f"Models and logs are in {output_dir}. Took {time.perf_counter() - start:.0f} s.",
        file=out,
    )
    return {"asr": asr, "brevity": brevity}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of the WER + bias-recall run")
    parser.add_argument("--brevity_steps", type=int, default=60, help="optimizer steps of the brevity run")
    parser.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR), help="where the model and runs are written")
    parser.add_argument("--seed", type=int, default=42, help="seed of both runs (sampling, LoRA init)")
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    # The models are tiny: one thread is nearly as fast as two, and does not stall (OpenMP threads spinning for a
    # core) when another process holds one of the cores.
    torch.set_num_threads(args.num_threads)
    # transformers writes its warnings to the terminal's stderr, where they would cut through the table; passed on to
    # the root logger, they land in the run's log file instead (stderr is redirected there during a run).
    transformers.logging.disable_default_handler()
    transformers.logging.enable_propagation()
    run_demo(args.output_dir, args.steps, args.brevity_steps, seed=args.seed)


if __name__ == "__main__":
    main()
