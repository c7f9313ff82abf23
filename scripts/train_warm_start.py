"""
Trains a warm start from scratch: the synthetic speech corpus (`trl_audio.corpus`), a small random Phi-4-MM whose
tokenizer is trained on the corpus' train sentences (`trl_audio.testing.build_tiny_phi4mm`), full fine-tuning with
audio SFT (`trl_audio.sft`) on biasing prompts that list each row's keywords plus distractors, and a decaying learning
rate. Held-out WER / CER / B-WER / U-WER (`trl_audio.evaluation`) of greedy transcripts of a few test rows are taken
every `--eval_every` seconds of training (or steps); the curve and the model (in `--save_dtype`, with its processor)
go to `--output_dir`, with `warm_start.json` (command, arguments, seed, times, size on disk, curve).

Usage (from the repository root):

# One core, as the issue measures it (~0.4 s a step there; the corpus is synthesized first into <work_dir>/corpus,
# unless a corpus of the same size and seed is there already):
taskset -c 0 python scripts/train_warm_start.py --work_dir /tmp/warm_start_work --output_dir /tmp/warm_start \
    --max_steps 2000 --max_minutes 15 --eval_every 150 --logging_steps 25

# A smoke run of a few seconds on a corpus made by `scripts/make_corpus.py` (same size and seed), evaluated every
# 10 steps on 8 test rows:
python scripts/make_corpus.py --out_dir /tmp/corpus
python scripts/train_warm_start.py --corpus_dir /tmp/corpus --work_dir /tmp/warm_start_work \
    --output_dir /tmp/warm_start_smoke --max_steps 20 --eval_every 10 --eval_unit steps --eval_rows 8 --logging_steps 5

The saved model loads without its speech adapter (it has none of its own): `trl_audio.testing.load_tiny(<output_dir>)`
or `init_model(<output_dir>, speech_lora="off")`. The learning rate follows `--lr_scheduler_type` over `--max_steps`;
`--max_minutes` only stops a run early (the schedule does not shrink to fit it), so pick `--max_steps` from the step
time that a short run logs.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import TrlParser

from trl_audio.audio_dataset import create_audio_dataset
from trl_audio.corpus import make_corpus
from trl_audio.evaluation import TranscriptionEvalCallback
from trl_audio.sft import AudioSFTConfig, AudioSFTTrainer
from trl_audio.skips import SkipCounter
from trl_audio.testing import build_tiny_phi4mm, load_tiny


logger = logging.getLogger(__name__)

# The biasing prompt: the row's keywords (each with probability hit_prob) plus distractors, at most 4 entries.
BIASING = {"hit_source": "keywords", "max_num": 4, "bias_prob": 0.9, "hit_prob": 0.9}


@dataclass
class WarmStartArguments:
    r"""
    The corpus, the model and the evaluation; the rest are `AudioSFTConfig` arguments.

    Parameters:
        work_dir (`str`, *optional*, defaults to `"/tmp/warm_start_work"`):
            Where the corpus (`corpus/`, unless `corpus_dir`) and the untrained model (`init/`) are written.
        corpus_dir (`str` or `None`, *optional*, defaults to `None`):
            An existing corpus (`scripts/make_corpus.py`) to use instead of synthesizing one; its `corpus.json` must
            hold `num_sentences` and `seed`.
        num_sentences (`int`, *optional*, defaults to `1500`):
            Train and test sentences of the corpus together.
        corpus_workers (`int`, *optional*, defaults to `1`):
            Synthesis processes (one per core).
        model_size (`str`, *optional*, defaults to `"small"`):
            `build_tiny_phi4mm`'s size: `"tiny"` or `"small"`.
        eval_every (`float`, *optional*, defaults to `150`):
            Evaluate every this many seconds of training (evaluations not counted) or steps, as `eval_unit` says;
            also before the first step and after the last.
        eval_unit (`str`, *optional*, defaults to `"seconds"`):
            `"seconds"` or `"steps"`.
        eval_rows (`int`, *optional*, defaults to `60`):
            Test rows transcribed at each evaluation (the first ones of the test split).
        max_new_tokens (`int`, *optional*, defaults to `48`):
            Longest greedy transcript, in tokens.
        max_minutes (`float` or `None`, *optional*, defaults to `None`):
            Stop after this many minutes of training (evaluations not counted), before `max_steps` if need be.
        num_threads (`int`, *optional*, defaults to `1`):
            Torch's intra-op threads.
        save_dtype (`str`, *optional*, defaults to `"bfloat16"`):
            dtype of the saved weights: `"bfloat16"`, `"float16"` or `"float32"`.
    """

    work_dir: str = field(default="/tmp/warm_start_work", metadata={"help": "Where the corpus and init model go."})
    corpus_dir: str | None = field(default=None, metadata={"help": "An existing corpus to use instead."})
    num_sentences: int = field(default=1500, metadata={"help": "Train and test sentences of the corpus together."})
    corpus_workers: int = field(default=1, metadata={"help": "Synthesis processes (one per core)."})
    model_size: str = field(default="small", metadata={"help": "Model size.", "choices": ["tiny", "small"]})
    eval_every: float = field(default=150, metadata={"help": "Evaluate every this many seconds or steps."})
    eval_unit: str = field(
        default="seconds", metadata={"help": "Unit of eval_every.", "choices": ["seconds", "steps"]}
    )
    eval_rows: int = field(default=60, metadata={"help": "Test rows transcribed at each evaluation."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest greedy transcript, in tokens."})
    max_minutes: float | None = field(default=None, metadata={"help": "Stop after this many minutes of training."})
    num_threads: int = field(default=1, metadata={"help": "Torch's intra-op threads."})
    save_dtype: str = field(
        default="bfloat16",
        metadata={"help": "dtype of the saved weights.", "choices": ["bfloat16", "float16", "float32"]},
    )


class CurveCallback(TrainerCallback):
    """Runs `evaluator` every `every` seconds of training (time spent evaluating excluded) or steps, and after the last
    step; stops training after `max_seconds` of it; keeps the curve: step, training seconds, wall seconds, the train
    loss and learning rate logged at that step (a log is forced there), WER, CER, B-WER, U-WER."""

    def __init__(self, evaluator: TranscriptionEvalCallback, every: float, unit: str, max_seconds: float | None):
        self.evaluator, self.every, self.unit, self.max_seconds = evaluator, every, unit, max_seconds
        self.curve: list[dict] = []
        self.eval_seconds, self.pending = 0.0, False

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def record(self, state, logs: dict | None = None) -> None:
        began = time.perf_counter()
        self.evaluator.evaluate(state.global_step)
        self.eval_seconds += time.perf_counter() - began
        metrics = self.evaluator.history["test"][-1]["metrics"]
        self.curve.append(
            {
                "step": state.global_step,
                "train_seconds": round(self.train_seconds(), 1),
                "wall_seconds": round(time.perf_counter() - self.start, 1),
                "train_loss": (logs or {}).get("loss"),
                "learning_rate": (logs or {}).get("learning_rate"),
                **{key: round(metrics[key], 4) for key in ("wer", "cer", "b_wer", "u_wer")},
            }
        )
        logger.info("Curve: %s", json.dumps(self.curve[-1]))
        self.next_eval += self.every

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.next_eval = time.perf_counter(), 0.0
        self.record(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_seconds is not None and self.train_seconds() >= self.max_seconds:
            control.should_training_stop = True
        progress = self.train_seconds() if self.unit == "seconds" else state.global_step
        if progress >= self.next_eval or state.global_step >= state.max_steps or control.should_training_stop:
            # Evaluated in on_log, so that the curve holds the loss the trainer logs for this step.
            self.pending, control.should_log = True, True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and "loss" in logs:
            self.pending = False
            self.record(state, logs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.curve[-1]["step"] != state.global_step:
            self.record(state)


def build_corpus(script_args: WarmStartArguments, seed: int) -> Path:
    """The corpus folder: `corpus_dir` (checked against `num_sentences` and `seed`), or `<work_dir>/corpus`,
    synthesized unless a corpus of those settings is already there."""
    corpus_dir = Path(script_args.corpus_dir or Path(script_args.work_dir, "corpus"))
    info_path = corpus_dir / "corpus.json"
    if not info_path.exists():
        if script_args.corpus_dir is not None:
            raise FileNotFoundError(f"{info_path} not found: --corpus_dir must be a corpus of make_corpus.py.")
        logger.info("Synthesizing %d sentences into %s", script_args.num_sentences, corpus_dir)
        make_corpus(corpus_dir, script_args.num_sentences, seed, workers=script_args.corpus_workers)
    info = json.loads(info_path.read_text())
    wanted = {"num_sentences": script_args.num_sentences, "seed": seed}
    if {key: info[key] for key in wanted} != wanted:
        raise ValueError(
            f"{corpus_dir} holds a corpus of {info['num_sentences']} sentences, seed {info['seed']}; "
            f"wanted {wanted}. Use another --work_dir / --corpus_dir, or match --num_sentences / --seed."
        )
    return corpus_dir


def main(script_args: WarmStartArguments, training_args: AudioSFTConfig) -> dict:
    """Build the corpus and the model, train, evaluate along the way, save; returns what `warm_start.json` holds."""
    torch.set_num_threads(script_args.num_threads)
    began = time.time()
    corpus_dir = build_corpus(script_args, training_args.seed)
    skip_counter = SkipCounter()
    dataset_args = {"biasing": BIASING, "seed": training_args.seed}
    train_dataset = create_audio_dataset(
        "jsonl", skip_counter, jsonl_paths=str(corpus_dir / "train.jsonl"), **dataset_args
    )
    eval_rows = list(
        create_audio_dataset(
            "jsonl", jsonl_paths=str(corpus_dir / "test.jsonl"), num_egs=script_args.eval_rows, **dataset_args
        )
    )
    # The tokenizer learns the train sentences only; every test word occurs in them (`make_sentences`).
    init_dir = build_tiny_phi4mm(
        Path(script_args.work_dir, f"init-{script_args.model_size}-seed{training_args.seed}"),
        seed=training_args.seed,
        size=script_args.model_size,
        corpus=train_dataset["text"],
    )
    model, processor = load_tiny(init_dir)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("Model: %s, %.2fM parameters", init_dir, num_parameters / 1e6)

    trainer = AudioSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        skip_counter=skip_counter,
    )
    evaluator = TranscriptionEvalCallback(
        trainer,
        {"test": eval_rows},
        batch_size=training_args.per_device_eval_batch_size,
        max_new_tokens=script_args.max_new_tokens,
    )
    max_seconds = None if script_args.max_minutes is None else 60 * script_args.max_minutes
    curve = CurveCallback(evaluator, script_args.eval_every, script_args.eval_unit, max_seconds)
    trainer.add_callback(curve)
    trainer.train()

    output_dir = Path(training_args.output_dir)
    model.to(getattr(torch, script_args.save_dtype)).save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    size_bytes = sum(p.stat().st_size for p in output_dir.iterdir() if p.is_file())
    steps = trainer.state.global_step
    summary = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "seed": training_args.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "total_seconds": round(time.time() - began, 1),
        "train_seconds": curve.curve[-1]["train_seconds"],
        "seconds_per_step": round(curve.curve[-1]["train_seconds"] / steps, 3) if steps else None,
        "steps": steps,
        "num_parameters": num_parameters,
        "size_on_disk_bytes": size_bytes,
        "save_dtype": script_args.save_dtype,
        "corpus_dir": str(corpus_dir),
        "init_dir": str(init_dir),
        "biasing": BIASING,
        "script_args": asdict(script_args),
        "training_args": {
            key: training_args.to_dict()[key]
            for key in (
                "learning_rate",
                "lr_scheduler_type",
                "warmup_steps",
                "weight_decay",
                "max_steps",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "max_grad_norm",
            )
        },
        "curve": curve.curve,
    }
    (output_dir / "curve.json").write_text(json.dumps(curve.curve, indent=2) + "\n")
    (output_dir / "warm_start.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info(
        "Saved %s (%.2f MB on disk, %s) after %d steps", output_dir, size_bytes / 1e6, script_args.save_dtype, steps
    )
    return summary


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in (__name__, "trl_audio"):
        logging.getLogger(name).setLevel(logging.INFO)
    parser = TrlParser((WarmStartArguments, AudioSFTConfig))
    # The prototype: a decaying learning rate mattered more than anything else.
    parser.set_defaults(
        output_dir="/tmp/warm_start",
        seed=0,
        activation_checkpointing=False,  # a few million parameters: memory is no concern, time is
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_steps=600,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
    )
    main(*parser.parse_args_and_config())
