"""Step time of online DPO: stock TRL vs trl-audio on text prompts, and trl-audio on audio prompts at N = 2, 4, 8
samples, with the speed switches on (today) and off (the path before them), each with gradient checkpointing on and
off; a per-phase breakdown, the audio encoder's rows per step, the prefill's share of generation, and peak RSS.

Usage:
    taskset -c 0 python benchmarks/bench_online_dpo.py               # the full run of benchmarks/RESULTS.md
    python benchmarks/bench_online_dpo.py --quick                     # a smoke run (tiny model, 1 repeat), < 1 min
    python benchmarks/bench_online_dpo.py --repeats 7 --max_new_tokens 32 --output results.json
    taskset -c 0 python benchmarks/bench_online_dpo.py --vllm         # only E: HF generate vs a vLLM server (core 1)
    taskset -c 0 python benchmarks/bench_online_dpo.py --whisper --repeats 3   # only F: Whisper tiny.en's encoder

Every variant is its own trainer (a copy of one small Phi-4-MM built from code, random weights, with a LoRA on the
text decoder) and its own fixed batch of bundled clips; one step is `training_step` (generation, rewards, policy and
reference passes, backward) plus the optimizer step. Variants run one step each in turn, `--repeats` rounds after a
warm-up round, so whatever else the machine does weighs on all alike; the table gives medians and min-max. Samples run
to `max_new_tokens` (no early end), so every variant generates the same number of tokens.

`--vllm` runs only scenario E instead (vLLM does not serve Phi-4-MM in transformers' layout): a small Qwen2-Audio with
a LoRA, N=4, gradient checkpointing off, generating with HF `generate` (KV cache, every speed switch on) vs with a
vLLM server from `.venv-vllm` (`make vllm-venv`) pinned to `--vllm_cores`, the weights pushed before every step (LoRA
merged), as `vllm_sync_steps=1` does in training. Its breakdown gives the generation share of the step (the push
included) and the push time.

`--whisper` runs only scenario F instead: the speed switches on (after) and off (before) where the audio encoder costs
something, a small Qwen2-Audio whose audio tower is Whisper tiny.en's pretrained encoder (4 layers, d_model 384), at
the shipped warm start's 6 s window (examples/models/whisper_qwen2_audio_warm_start, its trained decoder) and at
Qwen2-Audio's own 30 s window (`build_whisper_qwen2_audio`, the same encoder, a random decoder); N=8, LoRA r=8 on the
text decoder, gradient checkpointing off as in the learning recipe (`--quick`: the 6 s window only).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import platform
import resource
import socket
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.modeling import AUDIO_ENCODER_MODULES, decoder_lora_targets
from trl_audio.rewards import bias_word_recall_reward, wer_reward
from trl_audio.testing import build_tiny_phi4mm, build_tiny_qwen2_audio, build_whisper_qwen2_audio, load_tiny
from trl_audio.vllm_client import VLLM_VENV, LocalVLLMServer


REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples/data/speech_sample"
WARM_START = REPO / "examples/models/whisper_qwen2_audio_warm_start"
SWITCHES = ("generate_with_cache", "reuse_audio_embeddings", "share_prompt_prefill", "forward_pairs_only")
PHASES = ("processor", "audio encoder", "generation", "policy fwd+bwd", "reference fwd", "rewards", "rest")


def length_reward(completion_ids, **kwargs):
    return [float(len(ids)) + 1e-3 * sum(ids) for ids in completion_ids]


class PhaseClock:
    """Exclusive time per phase: a phase entered inside another (the encoder inside generation) pauses the outer."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.stack: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str):
        now = time.perf_counter()
        if self.stack:
            outer, since = self.stack[-1]
            self.seconds[outer] += now - since
        self.stack.append((name, now))
        try:
            yield
        finally:
            now = time.perf_counter()
            _, since = self.stack.pop()
            self.seconds[name] += now - since
            if self.stack:
                self.stack[-1] = (self.stack[-1][0], now)


def instrument(trainer: AudioOnlineDPOTrainer, clock: PhaseClock, counters: dict) -> None:
    """Wraps the trainer's phases (and the audio encoder's forward) in `clock`; counts the encoder's rows, the time of
    `_generate` and of each forward of the model inside it (`counters["generate_forwards"]`, the prefill first)."""

    def wrap(owner, name, phase):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            with clock.phase(phase(*args, **kwargs) if callable(phase) else phase):
                return original(*args, **kwargs)

        setattr(owner, name, timed)

    wrap(trainer, "_prepare_prompt_inputs", "processor")
    wrap(trainer, "_prompt_batch", "audio encoder")  # the encoder, plus putting its rows aside
    wrap(trainer, "_generate", "generation")
    generate = trainer._generate

    def timed_generate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            counters["generate_s"] += time.perf_counter() - start

    trainer._generate = timed_generate
    wrap(trainer, "_score", "rewards")
    wrap(trainer, "_reference_batch", "reference fwd")
    wrap(trainer, "_forward", lambda *a, **k: "policy fwd+bwd" if torch.is_grad_enabled() else "reference fwd")
    wrap(trainer.accelerator, "backward", "policy fwd+bwd")
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    (encoder_name,) = AUDIO_ENCODER_MODULES[base.config.model_type]
    encoder = base.get_submodule(encoder_name)
    open_phases = []

    def before(module, args):
        counters["encoder_rows"] += len(args[0])
        open_phases.append(clock.phase("audio encoder"))
        open_phases[-1].__enter__()

    def after(module, args, output):
        open_phases.pop().__exit__(None, None, None)

    encoder.register_forward_pre_hook(before)
    encoder.register_forward_hook(after)
    forward = base.forward

    @functools.wraps(forward)  # generate validates its kwargs against the forward's signature
    def timed_forward(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        if any(phase == "generation" for phase, _ in clock.stack):
            counters["generate_forwards"].append(time.perf_counter() - start)
        return out

    base.forward = timed_forward


class RssPeak:
    """Highest resident set size seen while the context runs, sampled every 5 ms (process-wide)."""

    def __enter__(self):
        self.peak, self.running = self._rss(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def audio_rows(count: int) -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLE / "metadata.jsonl").read_text().splitlines()]
    prompt = "Transcribe the audio clip into text. Pay attention to these words: {}."
    return [
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [{"type": "audio"}, {"type": "text", "text": prompt.format(*row["keywords"][:1])}],
                }
            ],
            "audio": str(SAMPLE / row["audio_path"]),
            "text": row["text"],
            "keywords": row["keywords"],
        }
        for row in rows[:count]
    ]


def text_rows(count: int) -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLE / "metadata.jsonl").read_text().splitlines()]
    return [{"prompt": [{"role": "user", "content": f"Repeat after me: {row['text']}"}]} for row in rows[:count]]


def make_variant(name, model, processor, args, out_dir, **config):
    """A trainer, its optimizer and one fixed collated batch; `config` holds `kind` ("trl" | "ours" | "ours_text"),
    `n`, `gc` and the speed switches."""
    kind, n, gc = config.pop("kind"), config.pop("n"), config.pop("gc")
    common = dict(
        output_dir=str(out_dir / name),
        per_device_train_batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        gradient_checkpointing=gc,
        learning_rate=1e-4,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        max_length=4096,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=decoder_lora_targets(model.config.model_type))
    if kind == "trl":
        trainer = OnlineDPOTrainer(
            model=copy.deepcopy(model),
            reward_funcs=length_reward,
            args=OnlineDPOConfig(**common),
            train_dataset=Dataset.from_list(text_rows(args.batch_size)),
            processing_class=processor.tokenizer,
            peft_config=lora,
        )
    else:
        text = kind == "ours_text"
        trainer = AudioOnlineDPOTrainer(
            model=copy.deepcopy(model),
            reward_funcs=length_reward if text else [wer_reward, bias_word_recall_reward],
            args=AudioOnlineDPOConfig(num_generations=n, **common, **config),
            train_dataset=Dataset.from_list(text_rows(args.batch_size) if text else audio_rows(args.batch_size)),
            processing_class=processor.tokenizer if text else processor,
            peft_config=lora,
        )
    trainer.generation_config.min_new_tokens = args.max_new_tokens  # every sample runs to max_new_tokens
    trainer.generation_kwargs["min_new_tokens"] = args.max_new_tokens
    trainer.create_optimizer()
    batch = next(iter(trainer.get_train_dataloader()))
    return {"name": name, "trainer": trainer, "batch": batch, "n": n, "kind": kind, "gc": gc, "config": config}


def run_step(variant) -> float:
    trainer, batch = variant["trainer"], dict(variant["batch"])
    start = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - start


def vllm_scenarios(args, tmp: Path, repeats: int) -> tuple[dict, dict]:
    """Scenario E: step times of HF generate vs the vLLM server on a small Qwen2-Audio (see the module docstring), and
    their summary; nothing when `.venv-vllm` is missing."""
    if not (VLLM_VENV / "bin/python").exists():
        print(f"{VLLM_VENV} is missing (make vllm-venv): no vLLM scenario.")
        return {}, {}
    model_dir = build_tiny_qwen2_audio(tmp / "qwen2_audio", size="small")
    model, processor = load_tiny(model_dir)
    with LocalVLLMServer(model_dir, tmp / "vllm_server.log", cores=args.vllm_cores) as server:
        variants = {}
        for name, use_vllm in (("E qwen2-audio N=4 hf generate", False), ("E qwen2-audio N=4 vllm server", True)):
            trainer = AudioOnlineDPOTrainer(
                model=copy.deepcopy(model),
                reward_funcs=length_reward,
                args=AudioOnlineDPOConfig(
                    output_dir=str(tmp / name), per_device_train_batch_size=args.batch_size, num_generations=4,
                    max_new_tokens=args.max_new_tokens, learning_rate=1e-4, bf16=False, report_to="none",
                    save_strategy="no", disable_tqdm=True, seed=0, max_length=4096, use_vllm=use_vllm,
                    vllm_server_base_url=server.url, vllm_weights_dir=str(tmp / "vllm_weights"),
                ),
                train_dataset=Dataset.from_list(audio_rows(args.batch_size)),
                processing_class=processor,
                peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=decoder_lora_targets("qwen2_audio")),
            )  # fmt: skip
            trainer.generation_config.min_new_tokens = args.max_new_tokens  # every sample runs to max_new_tokens
            chat_many = trainer.vllm_sampler.client.chat_many if use_vllm else None
            if use_vllm:
                trainer.vllm_sampler.client.chat_many = lambda *a, chat_many=chat_many, **k: chat_many(
                    *a, **k, min_tokens=args.max_new_tokens
                )
            trainer.create_optimizer()
            variants[name] = {"trainer": trainer, "batch": next(iter(trainer.get_train_dataloader()))}
        clocks = {name: defaultdict(float) for name in variants}
        for name, variant in variants.items():
            trainer = variant["trainer"]
            owners = {"_generate": trainer, "_generate_vllm": trainer, "push_weights": trainer.vllm_sampler}
            for method, owner in owners.items():
                if owner is None:  # HF generation: no sampler, no weight pushes
                    continue
                original = getattr(owner, method)

                def timed(*a, original=original, method=method, clock=clocks[name], **k):
                    start = time.perf_counter()
                    try:
                        return original(*a, **k)
                    finally:
                        clock[method] += time.perf_counter() - start

                setattr(owner, method, timed)
        times = defaultdict(list)
        for round_index in range(repeats + 1):  # the first round warms up
            for name, variant in variants.items():
                variant["trainer"].state.global_step += 1  # so the vLLM variant pushes its weights every step
                for clock in clocks.values():
                    clock.clear()
                seconds = run_step(variant)
                if round_index:
                    times[name].append(seconds)
                    generation = clocks[name]["_generate"] + clocks[name]["_generate_vllm"]
                    times[f"{name} generation share"].append(generation / seconds)
                    times[f"{name} push"].append(clocks[name]["push_weights"])
    scenarios = {
        name: {
            **summarize(times[name]),
            "generation_share": statistics.median(times[f"{name} generation share"]),
            "push_s": statistics.median(times[f"{name} push"]),
        }
        for name in variants
    }
    hf, vllm = (scenarios[name]["median_s"] for name in variants)
    return scenarios, {"E step time vllm / hf generate": vllm / hf, "E step time hf generate / vllm": hf / vllm}


def time_variants(variants: list[dict], repeats: int) -> tuple[dict, dict, dict]:
    """Step times (a warm-up round, then `repeats` rounds of one step per variant in turn), peak RSS per variant, and
    one more instrumented step per audio variant: phases, encoder rows, generation forwards."""
    times = defaultdict(list)
    peaks = {}
    for variant in variants:  # warm-up round
        run_step(variant)
    for _ in range(repeats):
        for variant in variants:
            with RssPeak() as rss:
                times[variant["name"]].append(run_step(variant))
            peaks[variant["name"]] = max(peaks.get(variant["name"], 0), rss.peak)
    # One more instrumented step per audio variant: phases, encoder rows, generation forwards
    breakdown = {}
    for variant in variants:
        if variant["kind"] != "ours":
            continue
        clock, counters = PhaseClock(), {"encoder_rows": 0, "generate_forwards": [], "generate_s": 0.0}
        instrument(variant["trainer"], clock, counters)
        with clock.phase("rest"):  # what no phase claims: the optimizer step, the loss, the metrics
            total = run_step(variant)
        forwards = counters["generate_forwards"]
        breakdown[variant["name"]] = {
            "instrumented_step_s": total,
            "phases_s": {p: clock.seconds[p] for p in PHASES},
            "encoder_rows": counters["encoder_rows"],
            "generate_s": counters["generate_s"],
            "generate_forwards": len(forwards),
            "prefill_s": forwards[0],
            "prefill_share_of_generate": forwards[0] / counters["generate_s"],
        }

    return times, peaks, breakdown


def main_whisper(args):
    """`--whisper`: scenario F only, printed and written as the full run's results are."""
    repeats = 1 if args.quick else args.repeats
    if args.quick:
        args.batch_size, args.max_new_tokens = 2, 6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"6 s": load_tiny(WARM_START)}
        if not args.quick:  # the 30 s window's "before" step takes a minute
            models["30 s"] = load_tiny(build_whisper_qwen2_audio(tmp / "window30", window_seconds=30))
        variants = []
        for window, (model, processor) in models.items():
            for switches_on in (True, False):
                name = f"F whisper enc {window} N=8 gc off {'after' if switches_on else 'before'}"
                variants.append(
                    make_variant(
                        name, model, processor, args, tmp, kind="ours", n=8, gc=False,
                        **dict.fromkeys(SWITCHES, switches_on),
                    )
                )  # fmt: skip
        times, peaks, breakdown = time_variants(variants, repeats)
    results = {
        "command": "python benchmarks/bench_online_dpo.py --whisper"
        + (" --quick" if args.quick else f" --repeats {repeats}"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread",
        "model": "Qwen2-Audio on Whisper tiny.en's encoder (6 s: the shipped warm start; 30 s: random decoder), "
        "LoRA r=8 on the text decoder",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": repeats,
        "scenarios": {
            name: {**summarize(t), "peak_rss_mb": peaks[name] / 2**20, **breakdown.get(name, {})}
            for name, t in times.items()
        },
    }
    med = {name: s["median_s"] for name, s in results["scenarios"].items()}
    results["summary"] = {
        f"F step time before/after, {window}": med[f"F whisper enc {window} N=8 gc off before"]
        / med[f"F whisper enc {window} N=8 gc off after"]
        for window in models
    }
    print_table(results)
    write_results(results, args, "-whisper")


def summarize(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, N in (2, 4), 1 repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/<date>-<host>.json)")
    parser.add_argument("--vllm", action="store_true", help="only scenario E: HF generate vs a vLLM server")
    parser.add_argument("--vllm_cores", default="1", help="the cores (taskset) of the vLLM server of --vllm")
    parser.add_argument(
        "--whisper", action="store_true", help="only scenario F: Whisper tiny.en's encoder, 6 s / 30 s"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.vllm:
        return main_vllm(args)
    if args.whisper:
        return main_whisper(args)
    size, sample_counts, repeats = ("tiny", (2, 4), 1) if args.quick else ("small", (2, 4, 8), args.repeats)
    if args.quick:
        args.batch_size, args.max_new_tokens = 2, 6

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, processor = load_tiny(build_tiny_phi4mm(tmp / "model", size=size))
        variants = []
        for gc in (True, False):
            tag = "gc on" if gc else "gc off"
            variants.append(make_variant(f"A trl text N=2 {tag}", model, processor, args, tmp, kind="trl", n=2, gc=gc))
            variants.append(
                make_variant(f"B ours text N=2 {tag}", model, processor, args, tmp, kind="ours_text", n=2, gc=gc)
            )
            for n in sample_counts:
                for switches_on in (True, False):
                    when = "after" if switches_on else "before"
                    variants.append(
                        make_variant(
                            f"{'C' if n == 2 else 'D'} ours audio N={n} {tag} {when}", model, processor, args, tmp,
                            kind="ours", n=n, gc=gc, **dict.fromkeys(SWITCHES, switches_on),
                        )
                    )  # fmt: skip
        times, peaks, breakdown = time_variants(variants, repeats)

    results = {
        "command": "python benchmarks/bench_online_dpo.py" + (" --quick" if args.quick else f" --repeats {repeats}"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread",
        "model": f"Phi-4-MM {size} (random weights), LoRA r=8 on the text decoder",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": repeats,
        "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "scenarios": {
            name: {**summarize(t), "peak_rss_mb": peaks[name] / 2**20, **breakdown.get(name, {})}
            for name, t in times.items()
        },
    }
    results["summary"] = summary(results["scenarios"], sample_counts, args.batch_size)
    print_table(results)
    write_results(results, args)


def main_vllm(args):
    """`--vllm`: scenario E only, printed and written as the full run's results are."""
    if args.quick:
        args.batch_size, args.max_new_tokens = 2, 6
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        scenarios, vllm_summary = vllm_scenarios(args, Path(tmp), repeats)
    results = {
        "command": "python benchmarks/bench_online_dpo.py --vllm"
        + (" --quick" if args.quick else f" --repeats {repeats}"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread; "
        f"vLLM server on cores {args.vllm_cores}",
        "model": "Qwen2-Audio small (random weights), LoRA r=8 on the text decoder",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": repeats,
        "scenarios": scenarios,
        "summary": vllm_summary,
    }
    print(f"{results['model']}; {results['machine']}; batch {args.batch_size}, {args.max_new_tokens} new tokens")
    for name, s in scenarios.items():
        print(
            f"{name:<36}{s['median_s']:>9.3f}{s['min_s']:>7.2f}-{s['max_s']:<6.2f}  generation "
            f"{s['generation_share']:.0%} of the step, weight push {s['push_s']:.2f} s"
        )
    for key, value in vllm_summary.items():
        print(f"  {key}: {value:.2f}")
    write_results(results, args, "-vllm")


def write_results(results, args, tag=""):
    """Writes `results` to `--output`, by default benchmarks/results/<date>-<host><tag>[-quick].json."""
    name = f"{datetime.date.today().isoformat()}-{socket.gethostname()}{tag}{'-quick' if args.quick else ''}.json"
    output = Path(args.output) if args.output else REPO / "benchmarks/results" / name
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {output}")


def summary(scenarios, sample_counts, batch_size):
    """The ratios the issue asks for, gradient checkpointing on (the default config) unless said otherwise."""
    med = {name: s["median_s"] for name, s in scenarios.items()}
    out = {"B/A text gc on": med["B ours text N=2 gc on"] / med["A trl text N=2 gc on"]}
    out["B/A text gc off"] = med["B ours text N=2 gc off"] / med["A trl text N=2 gc off"]
    for gc in ("gc on", "gc off"):
        for when in ("before", "after"):
            per_sample = {
                n: med[f"{'C' if n == 2 else 'D'} ours audio N={n} {gc} {when}"] / (batch_size * n)
                for n in sample_counts
            }
            top = max(sample_counts)
            out[f"cost per sample N={top} / N=2, {gc}, {when}"] = per_sample[top] / per_sample[2]
            out[f"cost per pair N={top} / N=2, {gc}, {when}"] = per_sample[top] * top / (per_sample[2] * 2)
        for n in sample_counts:
            name = f"{'C' if n == 2 else 'D'} ours audio N={n} {gc}"
            out[f"step time before/after N={n}, {gc}"] = med[f"{name} before"] / med[f"{name} after"]
    return out


def print_table(results):
    print(
        f"{results['model']}; {results['machine']}; "
        f"batch {results['batch_size']}, {results['max_new_tokens']} new tokens"
    )
    print(
        f"{'scenario':<36}{'median s':>9}{'min-max s':>14}{'RSS MB':>8}  {'enc rows':>8}  {'prefill':>7}  phases (s)"
    )
    for name, s in results["scenarios"].items():
        phases = " ".join(f"{p.split()[0]}={v:.2f}" for p, v in s.get("phases_s", {}).items())
        prefill = s.get("prefill_share_of_generate")
        print(
            f"{name:<36}{s['median_s']:>9.3f}{s['min_s']:>7.2f}-{s['max_s']:<6.2f}{s['peak_rss_mb']:>8.0f}  "
            f"{s.get('encoder_rows', ''):>8}  {'' if prefill is None else f'{prefill:.0%}':>7}  {phases}"
        )
    for key, value in results["summary"].items():
        print(f"  {key}: {value:.2f}")


if __name__ == "__main__":
    main()
