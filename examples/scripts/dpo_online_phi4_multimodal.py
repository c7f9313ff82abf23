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

from accelerate import PartialState
from transformers.utils import is_torch_bf16_gpu_available
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.audio_dataset import SOURCES, dataset_from_config
from trl_audio.evaluation import evaluate_rows, format_metrics
from trl_audio.modeling import SPEECH_LORA_MODES, decoder_lora_targets, init_model
from trl_audio.rewards import REWARD_FUNCS, get_reward_funcs
from trl_audio.skips import SkipCounter


logger = logging.getLogger(__name__)

DEFAULT_DATASET_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "audio_dataset_config.json")


@dataclass
class ScriptArguments:
    r"""
    Arguments of the script that are neither training (`AudioOnlineDPOConfig`) nor model (`ModelConfig`) arguments.

    Parameters:
        dataset_config (`str`, *optional*, defaults to the bundled `examples/configs/audio_dataset_config.json`):
            JSON dataset config of the training set: `dataset_name` and the keys of
            `trl_audio.audio_dataset.create_audio_dataset`; its relative paths resolve against the file's folder.
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Source of the training set (`"openasr"`, `"tsv"` or `"jsonl"`), replacing the config's `dataset_name`.
            `None` keeps the config's.
        eval_dataset_config (`str` or `None`, *optional*, defaults to `None`):
            JSON dataset config of an evaluation set (same format). When given, WER, B-WER and U-WER (see
            `trl_audio.evaluation.evaluate_transcripts`) of greedy transcripts are reported before and after training
            and written to `<output_dir>/eval_results.json`.
        eval_bias_column (`str`, *optional*, defaults to `"keywords"`):
            Column of the evaluation rows whose words count as bias words for B-WER: `"keywords"` (the manifest's rare
            words of each transcript) or `"bias_words"` (the list the biasing prompt shows).
        speech_lora (`str`, *optional*, defaults to `"merge"`):
            What to do with Phi-4-MM's `speech-lora/` adapter (see `trl_audio.audio_utils.init_model`): `"merge"` it
            into the weights (train a fresh LoRA on top with `--use_peft`, or all weights), `"train"` it as the
            trainable adapter (not with `--use_peft`; the reference is then a separately loaded merged copy), or
            `"off"` for models without one.
        reward_funcs (`list[str]`, *optional*, defaults to `["wer", "bias_word_recall"]`):
            Reward functions, among `wer` (minus the WER against the `text` column), `bias_word_recall` (recall of the
            row's `keywords`) and `word_count` (minus the number of words: a reward any model can learn, to check the
            loop). Weigh them with `--reward_weights`.
    """

    dataset_config: str = field(
        default=DEFAULT_DATASET_CONFIG,
        metadata={
            "help": "JSON dataset config of the training set: `dataset_name` and the keys of create_audio_dataset; "
            "its relative paths resolve against the file's folder. Defaults to the bundled "
            "examples/configs/audio_dataset_config.json."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Source of the training set, replacing the config's `dataset_name`. None keeps the config's.",
            "choices": list(SOURCES),
        },
    )
    eval_dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON dataset config of an evaluation set. When given, WER, B-WER and U-WER of greedy transcripts "
            "are reported before and after training and written to <output_dir>/eval_results.json."
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
    reward_funcs: list[str] = field(
        default_factory=lambda: ["wer", "bias_word_recall"],
        metadata={
            "help": "Reward functions: wer, bias_word_recall, word_count (a reward any model can learn, to check the "
            "loop). Weigh them with --reward_weights.",
            "choices": list(REWARD_FUNCS),
        },
    )

    def __post_init__(self):
        get_reward_funcs(self.reward_funcs)  # fails on unknown names before any model loads
        if self.speech_lora not in SPEECH_LORA_MODES:
            raise ValueError(f"speech_lora must be one of {SPEECH_LORA_MODES}, got {self.speech_lora!r}.")
        if self.dataset_name is not None and self.dataset_name not in SOURCES:
            raise ValueError(f"dataset_name must be one of {list(SOURCES)} or None, got {self.dataset_name!r}.")


def main(script_args: ScriptArguments, training_args: AudioOnlineDPOConfig, model_args: ModelConfig, callbacks=None):
    """Train, save the model and processor to `output_dir`, and return `{"log_history": [...], "eval_before": ...,
    "eval_after": ...}` (the evaluations are None without `eval_dataset_config`). `callbacks` go to the trainer."""
    if script_args.speech_lora == "train" and model_args.use_peft:
        raise ValueError(
            "speech_lora='train' trains Phi-4-MM's speech adapter itself: drop --use_peft, or use speech_lora='merge' "
            "to train a new LoRA on top of the merged one."
        )
    quantization_config = get_quantization_config(model_args)
    load_kwargs = {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "quantization_config": quantization_config,
        # bitsandbytes weights must be placed on this process's GPU when they load
        "device_map": {"": PartialState().local_process_index} if quantization_config is not None else None,
    }
    model, processor = init_model(model_args.model_name_or_path, speech_lora=script_args.speech_lora, **load_kwargs)
    ref_model = None
    if script_args.speech_lora == "train":
        # TRL's PEFT reference (adapter disabled) would be the model without its speech ability: load the merged one.
        ref_model = init_model(model_args.model_name_or_path, speech_lora="merge", **load_kwargs)[0]

    peft_config = get_peft_config(model_args)
    if peft_config is not None and model_args.lora_target_modules is None:
        peft_config.target_modules = decoder_lora_targets(model.config.model_type)
        logger.info("LoRA on the text decoder's projections: target_modules=%r", peft_config.target_modules)
    skip_counter = SkipCounter()
    train_dataset = dataset_from_config(script_args.dataset_config, script_args.dataset_name, skip_counter)
    eval_rows = list(dataset_from_config(script_args.eval_dataset_config)) if script_args.eval_dataset_config else []
    trainer = AudioOnlineDPOTrainer(
        model=model,
        ref_model=ref_model,
        reward_funcs=get_reward_funcs(script_args.reward_funcs),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
        skip_counter=skip_counter,
    )

    def evaluate():  # through the trainer's model, on the training device
        if not eval_rows:
            return None
        result = evaluate_rows(
            trainer.model,
            processor,
            eval_rows,
            bias_column=script_args.eval_bias_column,
            batch_size=training_args.per_device_eval_batch_size,
            max_new_tokens=training_args.max_new_tokens,
            max_audio_seconds=training_args.max_audio_seconds,
        )
        logger.info("WER on the evaluation set: %s", format_metrics(result["metrics"]))
        return result

    eval_before = evaluate()  # a fresh LoRA starts as a no-op, so this is the initial policy

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    # The processor is saved with the weights. With PEFT the weights are the adapter only: load it on top of
    # `init_model(<model>, speech_lora=<speech_lora>)` (see README_phi4_multimodal_dpo.md).
    trainer.save_model(training_args.output_dir)
    logger.info("Saved the model and processor to %s", training_args.output_dir)

    eval_after = evaluate()
    if eval_after:
        if trainer.accelerator.is_main_process:
            path = os.path.join(training_args.output_dir, "eval_results.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"before": eval_before, "after": eval_after}, f, indent=2)
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
