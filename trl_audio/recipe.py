"""The contextual-biasing recipe on the synthetic corpus (`trl_audio.corpus`), shared by `scripts/train_warm_start.py`,
`benchmarks/learning.py` and the demo: the corpus and its splits with biasing prompts, the shipped warm start, a
training clock that evaluates held-out WER along the way and stops after so many seconds, and the online-DPO and
continued-SFT and GRPO configurations that the benchmark compares."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, TextIO

from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from .audio_dataset import create_audio_dataset
from .audio_utils import load_audio
from .config import AudioOnlineDPOConfig
from .corpus import make_corpus
from .dpo import AudioDPOConfig, AudioDPOTrainer
from .evaluation import TranscriptionEvalCallback, evaluate_transcripts
from .grpo import AudioGRPOConfig, AudioGRPOTrainer
from .modeling import decoder_lora_targets
from .pretrained import load_whisper_tiny_en, whisper_transcribe
from .rewards import get_reward_funcs
from .sft import AudioSFTConfig, AudioSFTTrainer
from .skips import SkipCounter
from .trainer import AudioOnlineDPOTrainer


logger = logging.getLogger(__name__)

# The biasing prompt of every run on the corpus: the row's keywords (each with probability hit_prob) plus
# distractors drawn from the other rows' keywords, at most 4 entries, on 90% of the rows.
BIASING = {"hit_source": "keywords", "max_num": 4, "bias_prob": 0.9, "hit_prob": 0.9}
# The corpus the shipped warm start was trained on (`make_corpus` arguments): 11,850 training sentences and 150
# held-out ones. With 1,350 training sentences the warm start overfitted (training loss 0.05, held-out WER back up from
# 0.54 to 0.58 after 20 minutes; see scripts/train_warm_start.py).
CORPUS = {"num_sentences": 12_000, "seed": 0, "test_fraction": 0.0125}
METRICS = ("wer", "cer", "b_wer", "u_wer")
# The online-DPO arm's rewards (`rewards.get_reward_funcs` names), and their keys in the trainer's logs.
REWARDS = ["wer", "bias_word_recall"]
REWARD_LOG_KEYS = tuple(f"rewards/{name}_reward/mean" for name in REWARDS)
# The arms `benchmarks/learning.py` compares from the warm start: which trainer (`online_dpo_trainer` or
# `continued_sft_trainer`) and the settings each sets over that trainer's config. `dpo_rpo` adds an NLL term on each
# pair's chosen sample (RPO): the variant aimed at per-word errors, which keeps the chosen transcript likely while the
# pair pushes the words where the samples differ apart.
# `grpo` weighs each of a clip's 8 samples by its reward against the clip's other samples (`grpo_trainer`);
# `offline_dpo` trains on fixed pairs: the reference against itself with one listed rare word swapped (`PAIRS`);
# `offline_dpo_then_dpo_rpo` runs it for half the time, then `dpo_rpo` from its result (benchmarks/learning.py).
ARMS = {
    "sft": ("sft", {}),
    "dpo": ("dpo", {}),
    "dpo_rpo": ("dpo", {"rpo_alpha": 1.0}),
    "grpo": ("grpo", {}),
    "offline_dpo": ("offline_dpo", {}),
    "offline_dpo_then_dpo_rpo": ("offline_then_online", {"rpo_alpha": 1.0}),
}
# The offline-DPO arm's pairs (`create_audio_dataset`'s `simu_preference`): `rejected` is the reference with one of the
# row's keywords swapped for the closest-spelled word of its biasing list, the error a biased model makes; rows that
# allow no swap (no keyword in the transcript, or no other word in the list) get 10-25% word errors instead.
PAIRS = {"error_range": [0.1, 0.25], "bias_substitute_prob": 1.0}
# What every arm's run shares: a constant learning rate, no step limit (a `TrainingClock` stops the run), no
# checkpoints, no loggers.
RUN_SETTINGS = {
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_steps": 100_000,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "seed": 0,
}
# Greedy transcription of held-out clips (`evaluation.evaluate_rows`): the corpus' sentences are at most 30 tokens.
EVAL_KWARGS = {"batch_size": 16, "max_new_tokens": 40}


def whisper_bias_prompt(row: dict) -> str | None:
    """The biasing list of a row's prompt (`bias_words`, the clip's rare names and distractors) as Whisper's
    previous-context prompt, "Names: Okonkwo, Okafor."; None for a row whose prompt lists none."""
    return f"Names: {', '.join(row['bias_words'])}." if row.get("bias_words") else None


def whisper_baseline(
    rows: list[dict], with_list: bool, batch_size: int = 8, max_new_tokens: int = EVAL_KWARGS["max_new_tokens"]
) -> dict[str, Any]:
    """Whisper tiny.en (`pretrained.load_whisper_tiny_en`) on `rows`, greedy, plain or (`with_list`) given each row's
    biasing list as its prompt (`whisper_bias_prompt`): the baseline a user would pick instead, scored as every arm
    is (`evaluate_transcripts` on the rows' `text` and `keywords`), with the same cap on new tokens as the arms' own
    evaluation (40: the corpus' longest held-out sentence is 18 of Whisper's tokens; uncapped, one clip's greedy loop
    of 436 words "guitar guitar ..." alone added 0.31 to WER over the 150 held-out clips). Returns `{"metrics",
    "transcripts"}` as `evaluation.evaluate_rows` does."""
    model, processor = load_whisper_tiny_en()
    clips = [load_audio(row["audio"], 16000) for row in rows]
    prompts = [whisper_bias_prompt(row) for row in rows] if with_list else None
    hypotheses = whisper_transcribe(model, processor, clips, prompts, batch_size, max_new_tokens)
    metrics = evaluate_transcripts(hypotheses, [r["text"] for r in rows], [r["keywords"] for r in rows])
    return {"metrics": metrics, "transcripts": [{"id": r["id"], "hypothesis": h} for r, h in zip(rows, hypotheses)]}


def ensure_corpus(
    corpus_dir: str | os.PathLike,
    num_sentences: int = CORPUS["num_sentences"],
    seed: int = CORPUS["seed"],
    test_fraction: float = CORPUS["test_fraction"],
    train_rows: int | None = None,
    workers: int = 1,
) -> Path:
    """`corpus_dir`, synthesized there by `make_corpus` unless it already holds a corpus of these arguments (or one
    with more train rows of the same sentences). Raises naming the folder if it holds another corpus."""
    corpus_dir = Path(corpus_dir)
    info_path = corpus_dir / "corpus.json"
    if not info_path.exists():
        logger.info("Synthesizing the corpus (%d sentences, seed %d) into %s", num_sentences, seed, corpus_dir)
        make_corpus(corpus_dir, num_sentences, seed, test_fraction, workers=workers, train_rows=train_rows)
    info = json.loads(info_path.read_text())
    wanted = {"num_sentences": num_sentences, "seed": seed, "test_fraction": test_fraction}
    # The train rows synthesized, and those wanted: all of them (the train split comes first) unless `train_rows`.
    has_rows = info["sizes"]["train"]
    needs_rows = num_sentences - round(num_sentences * test_fraction) if train_rows is None else train_rows
    if {key: info[key] for key in wanted} != wanted or has_rows < needs_rows:
        raise ValueError(
            f"{corpus_dir} holds a corpus of {info['num_sentences']} sentences, seed {info['seed']}, test fraction "
            f"{info['test_fraction']}, {has_rows} train rows; wanted {wanted} and {needs_rows} train rows. Use "
            "another folder, or remove this one."
        )
    return corpus_dir


def corpus_splits(
    corpus_dir: str | os.PathLike,
    seed: int = 0,
    skip_counter: SkipCounter | None = None,
    train_rows: int | None = None,
    test_rows: int | None = None,
    simu_preference: dict | None = None,
) -> tuple[Dataset, list[dict]]:
    """`(train dataset, test rows)` of a corpus, both with biasing prompts (`BIASING`); the train prompts' lists are
    drawn from `seed`, the test prompts' from seed 0 whatever `seed`, so that every run is scored on the same
    prompts. `train_rows` / `test_rows` keep the first that many rows (`None`: all). `simu_preference` gives the
    training rows `chosen` / `rejected` pairs (`create_audio_dataset`; the offline-DPO arm's `PAIRS`)."""
    corpus_dir = Path(corpus_dir)
    train = create_audio_dataset(
        "jsonl",
        skip_counter,
        jsonl_paths=str(corpus_dir / "train.jsonl"),
        num_egs=train_rows,
        biasing=BIASING,
        seed=seed,
        simu_preference=simu_preference,
    )
    test = create_audio_dataset(
        "jsonl", jsonl_paths=str(corpus_dir / "test.jsonl"), num_egs=test_rows, biasing=BIASING, seed=0
    )
    return train, list(test)


class TrainingClock(TrainerCallback):
    """Evaluates held-out WER, CER, B-WER and U-WER (`evaluator`, a `TranscriptionEvalCallback` that is not itself
    among the trainer's callbacks) before the first step, every `every` seconds of training (time spent evaluating
    excluded) or steps (`unit`), and after the last step; stops training after `max_seconds` of it. Keeps the `curve`:
    one dict per evaluation with the step, training and wall seconds, the figures, and the values of `log_keys` that
    the trainer logged at that step (a log is forced there). `progress`, a stream (or True for stderr), shows a bar
    there over the training seconds (or steps) to come.
    """

    def __init__(
        self,
        evaluator: TranscriptionEvalCallback,
        every: float,
        unit: str = "seconds",
        max_seconds: float | None = None,
        log_keys: tuple[str, ...] = ("loss", "learning_rate"),
        progress: bool | TextIO = False,
    ):
        if unit not in ("seconds", "steps"):
            raise ValueError(f"unit must be 'seconds' or 'steps', got {unit!r}.")
        self.evaluator, self.every, self.unit, self.max_seconds = evaluator, every, unit, max_seconds
        self.log_keys, self.progress = log_keys, progress
        self.curve: list[dict[str, Any]] = []
        self.eval_seconds, self.pending, self.bar = 0.0, False, None

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def record(self, state, logs: dict | None = None) -> None:
        began = time.perf_counter()
        self.evaluator.evaluate(state.global_step)
        self.eval_seconds += time.perf_counter() - began
        metrics = next(iter(self.evaluator.history.values()))[-1]["metrics"]
        self.curve.append(
            {
                "step": state.global_step,
                "train_seconds": round(self.train_seconds(), 1),
                "wall_seconds": round(time.perf_counter() - self.start, 1),
                **{key: (logs or {}).get(key) for key in self.log_keys},
                **{key: round(metrics[key], 4) for key in METRICS},
            }
        )
        logger.info("Curve: %s", json.dumps(self.curve[-1]))
        self.next_eval += self.every

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.next_eval = time.perf_counter(), 0.0
        if self.progress:
            from tqdm.auto import tqdm

            total = self.max_seconds if self.unit == "seconds" and self.max_seconds else state.max_steps
            unit = " s" if self.unit == "seconds" else " steps"
            self.bar = tqdm(
                total=round(total),
                file=None if self.progress is True else self.progress,
                bar_format="  {percentage:3.0f}%|{bar:40}| {n}/{total}" + unit + " of training{postfix}",
                mininterval=2.0,  # a log file gets a line every 2 s, not one per step
            )
        self.record(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_seconds is not None and self.train_seconds() >= self.max_seconds:
            control.should_training_stop = True
        progress = self.train_seconds() if self.unit == "seconds" else state.global_step
        if self.bar is not None:
            self.bar.set_postfix_str(f"step {state.global_step}", refresh=False)
            self.bar.update(round(min(progress, self.bar.total)) - self.bar.n)
        if progress >= self.next_eval or state.global_step >= state.max_steps or control.should_training_stop:
            # Evaluated in on_log, so that the curve holds what the trainer logs for this step.
            self.pending, control.should_log = True, True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs and "loss" in logs:
            self.pending = False
            self.record(state, logs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
        if self.curve[-1]["step"] != state.global_step:
            self.record(state)


def online_dpo_config(output_dir: str | os.PathLike, **overrides: Any) -> AudioOnlineDPOConfig:
    """The benchmark's online-DPO arm: full fine-tuning of the text decoder (the audio path frozen by the caller,
    `modeling.freeze_audio_path`), 8 samples per clip at temperature 0.7, the best against the worst by WER reward
    plus bias-word recall, sigmoid loss with beta 0.1, a constant learning rate of 5e-5 (the best of the settings
    tried, benchmarks/RESULTS.md; 1e-4 at temperature 1 already raised held-out WER), the run stopped by a
    `TrainingClock`. `overrides` replace any of these."""
    settings = RUN_SETTINGS | {
        "per_device_train_batch_size": 4,
        "num_generations": 8,
        "temperature": 0.7,
        "max_new_tokens": 40,
        "beta": 0.1,
        "loss_type": "sigmoid",
        "learning_rate": 5e-5,
        "gradient_checkpointing": False,
        "logging_steps": 5,
        "bf16": False,
    }
    return AudioOnlineDPOConfig(output_dir=str(output_dir), **(settings | overrides))


def continued_sft_config(output_dir: str | os.PathLike, **overrides: Any) -> AudioSFTConfig:
    """The benchmark's continued-SFT arm: the warm start's audio SFT at a constant learning rate, batch 8, stopped by
    a `TrainingClock`. `overrides` replace any of these."""
    settings = RUN_SETTINGS | {
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-4,
        "activation_checkpointing": False,
        "logging_steps": 10,
    }
    return AudioSFTConfig(output_dir=str(output_dir), **(settings | overrides))


def online_dpo_trainer(
    model: Any,
    processor: Any,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    skip_counter: SkipCounter | None = None,
    lora_r: int = 0,
    **overrides: Any,
) -> AudioOnlineDPOTrainer:
    """The online-DPO arm on `train_dataset`: `online_dpo_config(output_dir, **overrides)`, rewards `REWARDS`, a frozen
    copy of `model` as the reference; or, with `lora_r`, a LoRA of that rank (alpha 2r) on the text decoder's
    projections (`modeling.decoder_lora_targets`), the reference being the model with the adapter off."""
    peft_config = None
    if lora_r:
        targets = decoder_lora_targets(model.config.model_type)
        peft_config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=targets, task_type="CAUSAL_LM")
    return AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(REWARDS),
        args=online_dpo_config(output_dir, **overrides),
        train_dataset=train_dataset,
        processing_class=processor,
        skip_counter=skip_counter,
        peft_config=peft_config,
    )


def continued_sft_trainer(
    model: Any,
    processor: Any,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    skip_counter: SkipCounter | None = None,
    **overrides: Any,
) -> AudioSFTTrainer:
    """The continued-SFT arm on `train_dataset`: `continued_sft_config(output_dir, **overrides)`."""
    return AudioSFTTrainer(
        model=model,
        args=continued_sft_config(output_dir, **overrides),
        train_dataset=train_dataset,
        processing_class=processor,
        skip_counter=skip_counter,
    )


def grpo_config(output_dir: str | os.PathLike, **overrides: Any) -> AudioGRPOConfig:
    """The benchmark's GRPO arm: full fine-tuning of the text decoder (the audio path frozen by the caller), 4 clips x
    8 samples per step at temperature 0.7, rewards `REWARDS`, TRL's default loss (`dapo`) without a KL term (beta 0,
    as the research fork and RLBR train), a constant learning rate of 5e-5, chosen on training clips (the WER of the
    first 64 training clips a run saw, seed 0: 1e-4 for 8 min 0.177 -> 0.185; 3 min at 5e-5 -> 0.154, at 2e-5 ->
    0.166; see benchmarks/RESULTS.md), the run stopped by a `TrainingClock`. `overrides` replace any of these."""
    settings = RUN_SETTINGS | {
        "per_device_train_batch_size": 32,  # samples: 4 clips x 8
        "num_generations": 8,
        "temperature": 0.7,
        "max_completion_length": 40,
        "beta": 0.0,
        "loss_type": "dapo",
        "learning_rate": 5e-5,
        "gradient_checkpointing": False,
        "logging_steps": 5,
        "bf16": False,
    }
    return AudioGRPOConfig(output_dir=str(output_dir), **(settings | overrides))


def grpo_trainer(
    model: Any,
    processor: Any,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    skip_counter: SkipCounter | None = None,
    **overrides: Any,
) -> AudioGRPOTrainer:
    """The GRPO arm on `train_dataset`: `grpo_config(output_dir, **overrides)`, rewards `REWARDS`."""
    return AudioGRPOTrainer(
        model=model,
        reward_funcs=get_reward_funcs(REWARDS),
        args=grpo_config(output_dir, **overrides),
        train_dataset=train_dataset,
        processing_class=processor,
        skip_counter=skip_counter,
    )


def offline_dpo_config(output_dir: str | os.PathLike, **overrides: Any) -> AudioDPOConfig:
    """The benchmark's offline-DPO arm: full fine-tuning of the text decoder (the audio path frozen by the caller) on
    the `PAIRS` of the training rows, 8 pairs per step, sigmoid loss with beta 0.1 plus the chosen side's NLL (TRL's
    `"sft"` loss at weight 1: RPO, which keeps the reference transcript likely while the pair pushes the swapped word
    down), a constant learning rate of 5e-5 (the online-DPO arm's), the run stopped by a `TrainingClock`. `overrides`
    replace any of these."""
    settings = RUN_SETTINGS | {
        "per_device_train_batch_size": 8,
        "beta": 0.1,
        "loss_type": ["sigmoid", "sft"],
        "loss_weights": [1.0, 1.0],
        "learning_rate": 5e-5,
        "gradient_checkpointing": False,
        "logging_steps": 10,
        "bf16": False,
    }
    return AudioDPOConfig(output_dir=str(output_dir), **(settings | overrides))


def offline_dpo_trainer(
    model: Any,
    processor: Any,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    skip_counter: SkipCounter | None = None,
    **overrides: Any,
) -> AudioDPOTrainer:
    """The offline-DPO arm on `train_dataset` (rows with `chosen` / `rejected`: `corpus_splits(...,
    simu_preference=PAIRS)`), a frozen copy of `model` as the reference: `offline_dpo_config(output_dir,
    **overrides)`."""
    return AudioDPOTrainer(
        model=model,
        args=offline_dpo_config(output_dir, **overrides),
        train_dataset=train_dataset,
        processing_class=processor,
        skip_counter=skip_counter,
    )
