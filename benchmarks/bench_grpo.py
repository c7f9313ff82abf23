"""Step time of GRPO: stock TRL `GRPOTrainer` vs `AudioGRPOTrainer` on text prompts (G), and `AudioGRPOTrainer` on
audio prompts with the speed switches on (after) and off (before), on the shipped warm start whose audio tower is
Whisper tiny.en's encoder (H); the audio encoder's rows per step and peak RSS.

Usage:
    taskset -c 0 python benchmarks/bench_grpo.py                # the full run of benchmarks/RESULTS.md
    python benchmarks/bench_grpo.py --quick                     # a smoke run (1 repeat, short samples), < 1 min

G: a small Phi-4-MM built from code (random weights, LoRA r=8 on the text decoder), 4 text prompts x N=4 samples,
stock `GRPOTrainer` and ours, gradient checkpointing on and off. H: the warm start (6 s window), 4 clips x N=8, LoRA
r=8 on the text decoder, gradient checkpointing off as in the learning recipe. Every variant is its own trainer with
its own fixed generation batch; one step is `training_step` (generation, rewards, the policy pass and backward) plus
the optimizer step. Variants run one step each in turn, `--repeats` rounds after a warm-up round, so whatever else the
machine does weighs on all alike; the table gives medians and min-max. Samples run to `max_completion_length` (no
early end), so every variant generates the same number of tokens.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import socket
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_online_dpo import WARM_START, RssPeak, audio_rows, length_reward, summarize, text_rows, write_results
from datasets import Dataset
from peft import LoraConfig, PeftModel
from trl import GRPOConfig, GRPOTrainer

from trl_audio import AudioGRPOConfig, AudioGRPOTrainer
from trl_audio.modeling import AUDIO_ENCODER_MODULES, decoder_lora_targets
from trl_audio.rewards import bias_word_recall_reward, wer_reward
from trl_audio.testing import build_tiny_phi4mm, load_tiny


SWITCHES = ("generate_with_cache", "reuse_audio_embeddings", "share_prompt_prefill")


def make_variant(name, model, processor, args, out_dir, kind, n, gc, **switches):
    """A trainer (`kind`: "trl" | "ours_text" | "ours"), its optimizer and one fixed generation batch of
    `args.batch_size` prompts x `n` samples."""
    common = dict(
        output_dir=str(out_dir / name),
        per_device_train_batch_size=args.batch_size * n,
        num_generations=n,
        max_completion_length=args.max_completion_length,
        gradient_checkpointing=gc,
        learning_rate=1e-4,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=decoder_lora_targets(model.config.model_type))
    text = kind != "ours"
    trainer_class, config = (
        (GRPOTrainer, GRPOConfig(**common))
        if kind == "trl"
        else (AudioGRPOTrainer, AudioGRPOConfig(**common, **switches))
    )
    trainer = trainer_class(
        model=copy.deepcopy(model),
        reward_funcs=length_reward if text else [wer_reward, bias_word_recall_reward],
        args=config,
        train_dataset=Dataset.from_list(text_rows(args.batch_size) if text else audio_rows(args.batch_size)),
        processing_class=processor.tokenizer if text else processor,
        peft_config=lora,
    )
    trainer.generation_config.min_new_tokens = args.max_completion_length  # every sample runs to the end
    trainer.generation_kwargs["min_new_tokens"] = args.max_completion_length
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what `Trainer.train` sets before its first step
    batch = next(iter(trainer.get_train_dataloader()))
    return {"name": name, "trainer": trainer, "batch": batch, "kind": kind}


def run_step(variant) -> float:
    trainer = variant["trainer"]
    start = time.perf_counter()
    trainer.training_step(trainer.model, list(variant["batch"]), None)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - start


def encoder_rows(variant) -> int:
    """The audio encoder's rows (clips) in one more step of an audio variant."""
    model = variant["trainer"].accelerator.unwrap_model(variant["trainer"].model)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    encoder = base.get_submodule(AUDIO_ENCODER_MODULES[base.config.model_type][0])
    rows = []
    handle = encoder.register_forward_pre_hook(
        lambda m, a, k: rows.append(len(a[0] if a else k["input_features"])), with_kwargs=True
    )
    try:
        run_step(variant)
    finally:
        handle.remove()
    return sum(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, short samples: a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=4, help="prompts (clips) per step")
    parser.add_argument("--max_completion_length", type=int, default=24)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/<date>-<host>-grpo.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    if args.quick:
        args.batch_size, args.max_completion_length = 2, 6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, processor = load_tiny(build_tiny_phi4mm(tmp / "model", size="tiny" if args.quick else "small"))
        variants = []
        for gc in (True, False):
            tag = "gc on" if gc else "gc off"
            for kind, label in (("trl", "G trl text"), ("ours_text", "G ours text")):
                variants.append(make_variant(f"{label} N=4 {tag}", model, processor, args, tmp, kind, 4, gc))
        warm_model, warm_processor = load_tiny(WARM_START)
        warm_model.float()
        for switches_on in (True, False):
            name = f"H ours audio whisper 6 s N=8 gc off {'after' if switches_on else 'before'}"
            variants.append(
                make_variant(
                    name, warm_model, warm_processor, args, tmp, "ours", 8, False,
                    **dict.fromkeys(SWITCHES, switches_on),
                )
            )  # fmt: skip
        times, peaks = defaultdict(list), {}
        for variant in variants:  # warm-up round
            run_step(variant)
        for _ in range(repeats):
            for variant in variants:
                with RssPeak() as rss:
                    times[variant["name"]].append(run_step(variant))
                peaks[variant["name"]] = max(peaks.get(variant["name"], 0), rss.peak)
        rows = {v["name"]: encoder_rows(v) for v in variants if v["kind"] == "ours"}

    scenarios = {
        name: {
            **summarize(t),
            "peak_rss_mb": peaks[name] / 2**20,
            **({"encoder_rows": rows[name]} if name in rows else {}),
        }
        for name, t in times.items()
    }
    med = {name: s["median_s"] for name, s in scenarios.items()}
    summary = {
        f"G step time ours/trl, text, {tag}": med[f"G ours text N=4 {tag}"] / med[f"G trl text N=4 {tag}"]
        for tag in ("gc on", "gc off")
    }
    summary["H step time before/after, audio"] = (
        med["H ours audio whisper 6 s N=8 gc off before"] / med["H ours audio whisper 6 s N=8 gc off after"]
    )
    results = {
        "command": "python benchmarks/bench_grpo.py" + (" --quick" if args.quick else f" --repeats {repeats}"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread",
        "model": "G: Phi-4-MM (random weights), H: the shipped warm start (Whisper tiny.en encoder); LoRA r=8 on the "
        "text decoder",
        "batch_size": args.batch_size,
        "max_completion_length": args.max_completion_length,
        "repeats": repeats,
        "scenarios": scenarios,
        "summary": summary,
    }
    print(f"{'scenario':<46}{'median s':>9}{'min-max s':>14}{'RSS MB':>8}  enc rows")
    for name, s in scenarios.items():
        span = f"{s['min_s']:.2f}-{s['max_s']:.2f}"
        print(f"{name:<46}{s['median_s']:>9.3f}{span:>14}{s['peak_rss_mb']:>8.0f}  {s.get('encoder_rows', '-')}")
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    write_results(results, args, "-grpo")


if __name__ == "__main__":
    main()
