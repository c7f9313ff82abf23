"""
Online DPO of a speech LLM (Phi-4-multimodal first) on transcription: each step samples `num_generations` transcripts
per clip, ranks them with the reward functions (WER against the reference, recall of the bias words), and trains on
the best vs the worst one. With an evaluation set, WER and B-WER are measured before and after training.

Usage (from the repository root):

# Phi-4-multimodal-instruct, LoRA on top of the merged speech adapter, one GPU with bf16 (the recipe holds the rest):
python examples/scripts/dpo_online_phi4_multimodal.py --config examples/configs/phi4mm_online_dpo.yaml

# The same in flags (flags also override a recipe's values):
python examples/scripts/dpo_online_phi4_multimodal.py \
    --model_name_or_path microsoft/Phi-4-multimodal-instruct \
    --dataset_config examples/configs/audio_dataset_config.json \
    --reward_funcs wer bias_word_recall --reward_weights 1.0 0.5 \
    --use_peft --lora_r 16 --lora_alpha 32 \
    --dtype bfloat16 --bf16 true --activation_checkpointing true --learning_rate 1e-5 --beta 0.1 \
    --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --num_generations 4 \
    --max_new_tokens 128 --max_length 2048 --max_steps 500 --logging_steps 10 \
    --output_dir outputs/phi4mm-online-dpo --report_to none

# A tiny random-weight Phi-4-MM built locally, trained on CPU in seconds (checks the pipeline, learns nothing useful),
# with WER / B-WER before and after on the bundled test split:
python -c "from trl_audio.testing import build_tiny_phi4mm; build_tiny_phi4mm('outputs/tiny-phi4mm')"
echo '{"dataset_name": "tsv", "tsv_paths": "'$PWD'/examples/data/speech_sample/test.tsv"}' > outputs/test_set.json
python examples/scripts/dpo_online_phi4_multimodal.py \
    --model_name_or_path outputs/tiny-phi4mm --eval_dataset_config outputs/test_set.json \
    --use_peft \
    --learning_rate 1e-3 --per_device_train_batch_size 2 --num_generations 4 --max_new_tokens 16 \
    --max_steps 3 --logging_steps 1 --activation_checkpointing false \
    --output_dir outputs/tiny-phi4mm-dpo --report_to none

Without a GPU that supports bf16, `bf16` defaults to false (TRL's default of true would stop on CPU). `--use_peft`
without `--lora_target_modules` puts the LoRA on the text decoder's projections only
(`trl_audio.modeling.DECODER_LORA_TARGETS`): the audio encoder stays frozen, so each clip is encoded once per step. To
train the encoder too, name targets that match its layers (e.g. `--lora_target_modules qkv_proj o_proj gate_up_proj
down_proj`, plain names that match projections of the decoder and of the encoder's conformer blocks); every pass then
encodes the clips.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers.utils import is_torch_bf16_gpu_available
from trl import ModelConfig, TrlParser, get_peft_config

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.audio_dataset import SOURCES, create_audio_dataset, dataset_config_from_args, load_dataset_config
from trl_audio.evaluation import TranscriptionEvalCallback
from trl_audio.judges import JUDGES, get_judge
from trl_audio.modeling import SPEECH_LORA_MODES, init_model, lora_target_modules, quantization_load_kwargs
from trl_audio.preemption import latest_complete_checkpoint
from trl_audio.rewards import REWARD_FUNCS, get_reward_funcs
from trl_audio.skips import SkipCounter
from trl_audio.text import NORMALIZERS


logger = logging.getLogger(__name__)

DEFAULT_DATASET_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "audio_dataset_config.json")


@dataclass
class ScriptArguments:
    r"""
    Arguments of the script that are neither training (`AudioOnlineDPOConfig`) nor model (`ModelConfig`) arguments.

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
        judge (`str` or `None`, *optional*, defaults to `None`):
            A pairwise judge that ranks the samples instead of the reward functions (which are then logged only):
            `reference` (lower WER wins), `reward_model`, `llm`, `audio_llm` (an audio LLM that hears the clip) or
            `openai` (an OpenAI-compatible endpoint); see `trl_audio.judges.get_judge`.
        judge_model (`str` or `None`, *optional*, defaults to `None`):
            The judge's model: a path or hub id for `reward_model`, `llm` and `audio_llm` (`llm` / `audio_llm` default
            to the model being trained, loaded once more), the endpoint's model name for `openai`.
        judge_base_url, judge_api_key_env (`str` or `None`, *optional*):
            `openai` only: the endpoint (e.g. `http://127.0.0.1:8000/v1`) and the environment variable holding its key
            (default `OPENAI_API_KEY`; the key itself is never logged).

    TRL's `--reward_model_path` (of `OnlineDPOConfig`, the original command line's flag) is `--judge reward_model
    --judge_model <path>`: a sequence-classification reward model ranks the samples.
        reward_funcs (`list[str]`, *optional*, defaults to `["wer", "bias_word_recall"]`):
            Reward functions, among `wer` (minus the WER against the `text` column), `bias_word_recall` (recall of the
            row's `keywords`) and `word_count` (minus the number of words: a reward any model can learn, to check the
            loop). Weigh them with `--reward_weights`.
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
    judge: str | None = field(
        default=None,
        metadata={
            "help": "A pairwise judge that ranks the samples (the reward functions are then logged only).",
            "choices": list(JUDGES),
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "The judge's model: a path or hub id, or the endpoint's model name for --judge openai."},
    )
    judge_base_url: str | None = field(default=None, metadata={"help": "--judge openai: the endpoint's base URL."})
    judge_api_key_env: str | None = field(
        default=None, metadata={"help": "--judge openai: the environment variable holding the key."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["wer", "bias_word_recall"],
        metadata={
            "help": "Reward functions: wer, bias_word_recall, word_count (a reward any model can learn, to check the "
            "loop). Weigh them with --reward_weights.",
            "choices": list(REWARD_FUNCS),
        },
    )

    def __post_init__(self):
        get_reward_funcs(self.reward_funcs, self.normalization)  # fails on unknown names before any model loads
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
        if self.judge != "openai" and (self.judge_base_url or self.judge_api_key_env):
            raise ValueError("--judge_base_url and --judge_api_key_env are for --judge openai.")
        if self.speech_lora not in SPEECH_LORA_MODES:
            raise ValueError(f"speech_lora must be one of {SPEECH_LORA_MODES}, got {self.speech_lora!r}.")
        if self.dataset_name is not None and self.dataset_name not in SOURCES:
            raise ValueError(f"dataset_name must be one of {list(SOURCES)} or None, got {self.dataset_name!r}.")


def main(script_args: ScriptArguments, training_args: AudioOnlineDPOConfig, model_args: ModelConfig, callbacks=None):
    """Train, save the model and processor to `output_dir`, and return `{"log_history": [...], "eval_before": ...,
    "eval_after": ...}` (the evaluations are None without `eval_dataset_config`). `callbacks` go to the trainer."""
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
    if training_args.reward_model_path is not None:
        if script_args.judge not in (None, "reward_model") or script_args.judge_model not in (
            None,
            training_args.reward_model_path,
        ):
            raise ValueError("--reward_model_path is --judge reward_model --judge_model <path>: give one of them.")
        script_args.judge, script_args.judge_model = "reward_model", training_args.reward_model_path
    if script_args.judge in ("reward_model", "openai") and script_args.judge_model is None:
        raise ValueError(f"--judge {script_args.judge} needs --judge_model: a model's path, or the endpoint's model.")
    # The data first: a dataset that cannot be read fails before a model is loaded.
    skip_counter = SkipCounter()
    train_dataset = create_audio_dataset(**script_args.train_dataset_config, skip_counter=skip_counter)
    eval_sets = {name: create_audio_dataset(**config) for name, config in script_args.eval_dataset_configs.items()}
    load_kwargs = {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        # bitsandbytes' quantization_config, and the device_map that puts the weights on this process's GPU, or on the
        # CPU on a machine without one
        **quantization_load_kwargs(
            model_args.load_in_4bit, model_args.load_in_8bit, model_args.dtype, model_args.bnb_4bit_quant_type
        ),
    }
    model, processor = init_model(model_args.model_name_or_path, speech_lora=script_args.speech_lora, **load_kwargs)
    ref_model = None
    if script_args.speech_lora == "train":
        # TRL's PEFT reference (adapter disabled) would be the model without its speech ability: load the merged one.
        ref_model = init_model(model_args.model_name_or_path, speech_lora="merge", **load_kwargs)[0]

    judge = None
    if script_args.judge == "reference":
        judge = get_judge("reference", normalization=script_args.normalization)
    elif script_args.judge is not None:
        options = {"model": script_args.judge_model or model_args.model_name_or_path}
        if script_args.judge == "audio_llm":  # loaded like the policy, its speech adapter merged
            options["model_kwargs"] = {"speech_lora": "off" if script_args.speech_lora == "off" else "merge"}
        if script_args.judge == "openai":
            endpoint = {"base_url": script_args.judge_base_url, "api_key_env": script_args.judge_api_key_env}
            options |= {key: value for key, value in endpoint.items() if value is not None}
        judge = get_judge(script_args.judge, **options)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.target_modules = lora_target_modules(model_args.lora_target_modules, model.config.model_type)
        logger.info("LoRA target_modules=%r", peft_config.target_modules)
    trainer = AudioOnlineDPOTrainer(
        model=model,
        ref_model=ref_model,
        reward_funcs=get_reward_funcs(script_args.reward_funcs, script_args.normalization),
        judge=judge,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        # the evaluation sets stand as TRL's eval_dataset, so that --eval_strategy is accepted; the callback below
        # replaces the trainer's own evaluation (a loss, which these rows have no pairs for)
        eval_dataset=eval_sets if eval_sets and training_args.eval_strategy != "no" else None,
        callbacks=callbacks,
        skip_counter=skip_counter,
    )
    evaluation = None
    if eval_sets:  # at the start, at the evaluation points and at the end, through the trainer's loggers
        evaluation = TranscriptionEvalCallback(
            trainer, eval_sets, script_args.eval_bias_column, normalization=script_args.normalization
        )
        trainer.add_callback(evaluation)

    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "latest"):  # the newest checkpoint saved completely
        resume = latest_complete_checkpoint(training_args.output_dir)
        logger.info("Resuming from %s", resume or "scratch: no complete checkpoint yet")
    trainer.train(resume_from_checkpoint=resume)
    if trainer.preemption is not None and trainer.preemption.received is not None:
        logger.warning("Pre-empted at step %d: resume with --resume_from_checkpoint true", trainer.state.global_step)
        trainer.end()
        return {"log_history": trainer.state.log_history, "eval_before": None, "eval_after": None, "preempted": True}
    # The processor is saved with the weights. With PEFT the weights are the adapter only: load it on top of
    # `init_model(<model>, speech_lora=<speech_lora>)` (see README_phi4_multimodal_dpo.md).
    trainer.save_model(training_args.output_dir)
    logger.info("Saved the model and processor to %s", training_args.output_dir)

    eval_before = eval_after = None
    if evaluation is not None:  # the first set's evaluations at the start and at the end
        history = evaluation.history[next(iter(eval_sets))]
        eval_before, eval_after = history[0], history[-1]
        if trainer.accelerator.is_main_process:
            path = os.path.join(training_args.output_dir, "eval_results.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"before": eval_before, "after": eval_after, "history": evaluation.history}, f, indent=2)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    results = {"log_history": trainer.state.log_history, "eval_before": eval_before, "eval_after": eval_after}
    trainer.end()
    return results


def make_parser() -> TrlParser:
    parser = TrlParser((ScriptArguments, AudioOnlineDPOConfig, ModelConfig))
    if not is_torch_bf16_gpu_available():
        # TRL turns bf16 on by default, which transformers refuses without a bf16 GPU; a recipe or flag still wins.
        parser.set_defaults(bf16=False)
    return parser


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in (__name__, "trl_audio"):
        logging.getLogger(name).setLevel(logging.INFO)
    main(*make_parser().parse_args_and_config())
