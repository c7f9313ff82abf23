"""What the training command lines share (`examples/scripts/`): the dataset, evaluation, reward and model flags
(`AudioScriptArguments`), the data read before any model loads, the model and its LoRA defaults, and the run itself
(resume, pre-emption, saving, the evaluation results). The scripts hold their own flags and the trainer they build."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import LoraConfig
from transformers import Trainer
from transformers.utils import is_torch_bf16_gpu_available
from trl import ModelConfig, TrlParser, get_peft_config

from .audio_dataset import SOURCES, create_audio_dataset, dataset_config_from_args, load_dataset_config
from .evaluation import TranscriptionEvalCallback
from .modeling import SPEECH_LORA_MODES, init_model, lora_target_modules, quantization_load_kwargs
from .preemption import latest_complete_checkpoint
from .rewards import REWARD_FUNCS, get_reward_funcs
from .skips import SkipCounter
from .text import NORMALIZERS


logger = logging.getLogger(__name__)

# The bundled training set (the speech sample), used when no dataset flag is given.
DEFAULT_DATASET_CONFIG = str(
    Path(__file__).resolve().parents[1] / "examples" / "configs" / "audio_dataset_config.json"
)


@dataclass
class AudioScriptArguments:
    r"""
    The arguments every training command line shares beside its training config and TRL's `ModelConfig`: the training
    and evaluation sets, the normalization, Phi-4-MM's speech adapter and the reward functions. Each script's
    `ScriptArguments` subclasses it.

    Parameters:
        dataset_config (`str` or `None`, *optional*, defaults to `None`; alias `--dataset_config_path`):
            JSON dataset config of the training set: `dataset_name` and the keys of
            `trl_audio.audio_dataset.create_audio_dataset`; its relative paths resolve against the file's folder.
            Without it, `dataset_name` or manifest paths, the bundled `examples/configs/audio_dataset_config.json`.
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Source of the training set (`"openasr"`, `"tsv"`, `"jsonl"` or `"ls_bias"`), replacing the config's
            `dataset_name` (and dropping the config's keys of its own source). Alone, `openasr` is the ESB LibriSpeech
            test.clean split, from the hub.
        tsv_paths, jsonl_paths (`list[str]` or `None`, *optional*, defaults to `None`):
            Manifests of the training set, on top of the config (and implying its source).
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep the first this many training rows (the config's `num_egs`).
        dataset_streaming (`bool`, *optional*, defaults to `False`):
            Read the training set as it is consumed (the config's `streaming`).
        eval_dataset_config (`list[str]` or `None`, *optional*, defaults to `None`):
            JSON dataset configs of evaluation sets (same format), each `path` or `name=path` (the name defaults to
            the file's stem). WER, CER, B-WER and U-WER of greedy transcripts (`trl_audio.evaluation`) are logged per
            set as `eval/<name>/<metric>` at the start, at the trainer's evaluation points (`--eval_strategy steps
            --eval_steps N`) and at the end, with per-utterance tables in `<output_dir>/eval/<name>/`; the first set's
            first and last results go to `<output_dir>/eval_results.json`.
        normalization (`str`, *optional*, defaults to `"whisper"`):
            How transcripts are normalized before the rewards and the evaluation count errors: `"whisper"` (Whisper's
            English normalizer) or `"simple"` (lower case, no punctuation).
        eval_bias_column (`str`, *optional*, defaults to `"keywords"`):
            Column of the evaluation rows whose words count as bias words for B-WER: `"keywords"` (the manifest's rare
            words of each transcript) or `"bias_words"` (the list the biasing prompt shows).
        speech_lora (`str`, *optional*, defaults to `"merge"`):
            What to do with Phi-4-MM's `speech-lora/` adapter (see `trl_audio.audio_utils.init_model`): `"merge"` it
            into the weights (train a fresh LoRA on top with `--use_peft`, or all weights), `"train"` it as the
            trainable adapter (not with `--use_peft`; the reference is then a separately loaded merged copy), or
            `"off"` for models without one.
    """

    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON dataset config of the training set: `dataset_name` and the keys of create_audio_dataset; "
            "its relative paths resolve against the file's folder. Without it, --dataset_name or manifest paths, the "
            "bundled examples/configs/audio_dataset_config.json.",
            "aliases": ["--dataset_config_path"],
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Source of the training set, replacing the config's `dataset_name` (and its source's keys). "
            "Alone, 'openasr' is the ESB LibriSpeech test.clean split, from the hub.",
            "choices": list(SOURCES),
        },
    )
    tsv_paths: list[str] | None = field(default=None, metadata={"help": "TSV manifests of the training set."})
    jsonl_paths: list[str] | None = field(default=None, metadata={"help": "JSONL manifests of the training set."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first this many training rows."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Read the training set as it is consumed."})
    eval_dataset_config: list[str] | None = field(
        default=None,
        metadata={
            "help": "JSON dataset configs of evaluation sets, each `path` or `name=path`. WER, CER, B-WER and U-WER "
            "of greedy transcripts are logged as eval/<name>/<metric> at the start, at the evaluation steps "
            "(--eval_strategy steps --eval_steps N) and at the end."
        },
    )
    normalization: str = field(
        default="whisper",
        metadata={
            "help": "Normalization of transcripts before rewards and evaluation count errors.",
            "choices": list(NORMALIZERS),
        },
    )
    eval_bias_column: str = field(
        default="keywords",
        metadata={
            "help": "Column of the evaluation rows whose words count as bias words for B-WER: 'keywords' (the "
            "manifest's rare words of each transcript) or 'bias_words' (the list the biasing prompt shows).",
            "choices": ["keywords", "bias_words"],
        },
    )
    speech_lora: str = field(
        default="merge",
        metadata={
            "help": "Phi-4-MM's speech-lora adapter: 'merge' it into the weights, 'train' it as the trainable adapter "
            "(not with --use_peft), or 'off' for models without one.",
            "choices": list(SPEECH_LORA_MODES),
        },
    )

    def __post_init__(self):
        if isinstance(self.eval_dataset_config, str):  # one path, as a recipe may give it
            self.eval_dataset_config = [self.eval_dataset_config]
        self.eval_dataset_configs = {}
        for spec in self.eval_dataset_config or []:
            name, path = spec.split("=", 1) if "=" in spec else (Path(spec).stem, spec)
            if name in self.eval_dataset_configs:
                raise ValueError(f"Two evaluation sets are named {name!r}: name them, as `name=path`.")
            self.eval_dataset_configs[name] = load_dataset_config(path)
        self.train_dataset_config = dataset_config_from_args(
            self.dataset_config,
            self.dataset_name,
            default_config=DEFAULT_DATASET_CONFIG,
            tsv_paths=self.tsv_paths,
            jsonl_paths=self.jsonl_paths,
            num_egs=self.max_train_samples,
            streaming=True if self.dataset_streaming else None,
        )
        if self.speech_lora not in SPEECH_LORA_MODES:
            raise ValueError(f"speech_lora must be one of {SPEECH_LORA_MODES}, got {self.speech_lora!r}.")
        if self.dataset_name is not None and self.dataset_name not in SOURCES:
            raise ValueError(f"dataset_name must be one of {list(SOURCES)} or None, got {self.dataset_name!r}.")


@dataclass
class RewardScriptArguments(AudioScriptArguments):
    r"""
    `AudioScriptArguments` plus the reward functions of the sampling trainers (online DPO, GRPO).

    Parameters:
        reward_funcs (`list[str]`, *optional*, defaults to `["wer", "bias_word_recall"]`):
            Reward functions, among `wer` (minus the WER against the `text` column), `bias_word_recall` (recall of the
            row's `keywords`) and `word_count` (minus the number of words: a reward any model can learn, to check the
            loop). Weigh them with `--reward_weights`.
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["wer", "bias_word_recall"],
        metadata={
            "help": "Reward functions: wer, bias_word_recall, word_count (a reward any model can learn, to check the "
            "loop). Weigh them with --reward_weights.",
            "choices": list(REWARD_FUNCS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        get_reward_funcs(self.reward_funcs, self.normalization)  # fails on unknown names before any model loads


def make_parser(script_class: type, config_class: type) -> TrlParser:
    """The parser of a training script's `(script_class, config_class, ModelConfig)`, `--config` YAML included; bf16
    defaults to off without a bf16 GPU (TRL's default of on would stop on a CPU; a recipe or flag still wins)."""
    parser = TrlParser((script_class, config_class, ModelConfig))
    if not is_torch_bf16_gpu_available():
        parser.set_defaults(bf16=False)
    return parser


def check_model_args(script_args: AudioScriptArguments, model_args: ModelConfig) -> None:
    """Refuses flag combinations that cannot train, before anything loads."""
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not (
        model_args.use_peft or script_args.speech_lora == "train"
    ):
        raise ValueError(
            "--load_in_4bit / --load_in_8bit train a LoRA on top of the quantized weights: add --use_peft (or "
            "--speech_lora train)."
        )
    if script_args.speech_lora == "train" and model_args.use_peft:
        raise ValueError(
            "speech_lora='train' trains Phi-4-MM's speech adapter itself: drop --use_peft, or use speech_lora='merge' "
            "to train a new LoRA on top of the merged one."
        )


def load_datasets(script_args: AudioScriptArguments) -> tuple[Any, dict[str, Any], SkipCounter]:
    """The training set, the evaluation sets by name, and the `SkipCounter` of the training set's rows left out (to
    pass to the trainer): read first, so that a dataset that cannot be read fails before a model is loaded."""
    skip_counter = SkipCounter()
    train_dataset = create_audio_dataset(**script_args.train_dataset_config, skip_counter=skip_counter)
    eval_sets = {name: create_audio_dataset(**config) for name, config in script_args.eval_dataset_configs.items()}
    return train_dataset, eval_sets, skip_counter


def model_load_kwargs(model_args: ModelConfig, training_args: Any) -> dict[str, Any]:
    """`init_model`'s keyword arguments from the model flags: dtype, attention, revision, and bitsandbytes'
    quantization config with the device map that puts the weights on this process's GPU (or the CPU)."""
    return {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        **quantization_load_kwargs(
            model_args.load_in_4bit, model_args.load_in_8bit, model_args.dtype, model_args.bnb_4bit_quant_type
        ),
    }


def load_model(script_args: AudioScriptArguments, model_args: ModelConfig, training_args: Any) -> tuple[Any, Any]:
    """The model to train and its processor (`init_model`, Phi-4-MM's speech adapter as `--speech_lora` says)."""
    return init_model(
        model_args.model_name_or_path,
        speech_lora=script_args.speech_lora,
        **model_load_kwargs(model_args, training_args),
    )


def peft_config(model_args: ModelConfig, model_type: str) -> LoraConfig | None:
    """TRL's LoRA config from the flags (None without `--use_peft`), on the text decoder's projections unless
    `--lora_target_modules` names others (`modeling.lora_target_modules`): the audio encoder then stays frozen and
    each clip is encoded once per step."""
    config = get_peft_config(model_args)
    if config is not None:
        config.target_modules = lora_target_modules(model_args.lora_target_modules, model_type)
        logger.info("LoRA target_modules=%r", config.target_modules)
    return config


def trainer_arguments(
    script_args: AudioScriptArguments,
    training_args: Any,
    model_args: ModelConfig,
    model: Any,
    processor: Any,
    datasets: tuple[Any, dict[str, Any], SkipCounter],
    callbacks: list | None = None,
) -> dict[str, Any]:
    """The keyword arguments every audio trainer gets from a command line: the model and its processor, the reward
    functions of a sampling trainer (`RewardScriptArguments`: `--reward_funcs`, `--normalization`), the training
    config, the datasets of `load_datasets` (the evaluation sets stand as TRL's `eval_dataset`, so that
    `--eval_strategy` is accepted; `add_evaluation`'s callback replaces the trainer's own evaluation), the LoRA
    (`peft_config`), `callbacks` and the skip counter."""
    train_dataset, eval_sets, skip_counter = datasets
    rewards = {}
    if isinstance(script_args, RewardScriptArguments):
        rewards["reward_funcs"] = get_reward_funcs(script_args.reward_funcs, script_args.normalization)
    return {
        "model": model,
        **rewards,
        "args": training_args,
        "train_dataset": train_dataset,
        "processing_class": processor,
        "peft_config": peft_config(model_args, model.config.model_type),
        "eval_dataset": eval_sets if eval_sets and training_args.eval_strategy != "no" else None,
        "callbacks": callbacks,
        "skip_counter": skip_counter,
    }


def add_evaluation(
    trainer: Trainer, eval_sets: dict[str, Any], script_args: AudioScriptArguments
) -> TranscriptionEvalCallback | None:
    """WER / CER / B-WER / U-WER of greedy transcripts of each evaluation set at the start, at the trainer's
    evaluation points and at the end, through its loggers (None without evaluation sets)."""
    if not eval_sets:
        return None
    evaluation = TranscriptionEvalCallback(
        trainer, eval_sets, script_args.eval_bias_column, normalization=script_args.normalization
    )
    trainer.add_callback(evaluation)
    return evaluation


def train_and_save(trainer: Trainer, evaluation: TranscriptionEvalCallback | None) -> dict[str, Any]:
    """Trains (resuming from `--resume_from_checkpoint`, `true` or `latest` meaning the newest complete checkpoint),
    saves the model and processor to `output_dir` (unless pre-empted: then it stops, to be resumed), writes the first
    evaluation set's first and last results to `<output_dir>/eval_results.json`, pushes to the hub if asked, and
    returns `{"log_history", "eval_before", "eval_after"}` (+ `"preempted": True` when pre-empted)."""
    args = trainer.args
    resume = args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "latest"):  # the newest checkpoint saved completely
        resume = latest_complete_checkpoint(args.output_dir)
        logger.info("Resuming from %s", resume or "scratch: no complete checkpoint yet")
    trainer.train(resume_from_checkpoint=resume)
    if trainer.preemption is not None and trainer.preemption.received is not None:
        logger.warning("Pre-empted at step %d: resume with --resume_from_checkpoint true", trainer.state.global_step)
        trainer.end()
        return {"log_history": trainer.state.log_history, "eval_before": None, "eval_after": None, "preempted": True}
    # The processor is saved with the weights. With PEFT the weights are the adapter only: load it on top of
    # `init_model(<model>, speech_lora=<speech_lora>)` (see README_phi4_multimodal_dpo.md).
    trainer.save_model(args.output_dir)
    logger.info("Saved the model and processor to %s", args.output_dir)
    eval_before = eval_after = None
    if evaluation is not None:  # the first set's evaluations at the start and at the end
        history = next(iter(evaluation.history.values()))
        eval_before, eval_after = history[0], history[-1]
        if trainer.accelerator.is_main_process:
            path = os.path.join(args.output_dir, "eval_results.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"before": eval_before, "after": eval_after, "history": evaluation.history}, f, indent=2)
    if args.push_to_hub:
        trainer.push_to_hub()
    results = {"log_history": trainer.state.log_history, "eval_before": eval_before, "eval_after": eval_after}
    trainer.end()
    return results


def configure_logging(script_name: str) -> None:
    """INFO from the script and the library, warnings from the rest."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in (script_name, "trl_audio"):
        logging.getLogger(name).setLevel(logging.INFO)
