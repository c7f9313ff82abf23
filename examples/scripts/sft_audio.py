"""
Supervised fine-tuning of a speech LLM (Phi-4-multimodal, Qwen2-Audio, GLM-ASR, ...) on transcription: each row's
prompt and audio in, its reference transcript out, the loss on the transcript only (`trl_audio.sft`). A warm-up before
online DPO, or a training of its own.

Usage (from the repository root):

# Phi-4-multimodal-instruct, LoRA on the text decoder on top of the merged speech adapter, one GPU with bf16:
python examples/scripts/sft_audio.py \
    --model_name_or_path microsoft/Phi-4-multimodal-instruct \
    --dataset_config examples/configs/audio_dataset_config.json \
    --use_peft --lora_r 16 --lora_alpha 32 \
    --dtype bfloat16 --bf16 true --learning_rate 1e-4 \
    --per_device_train_batch_size 8 --num_train_epochs 3 --logging_steps 10 \
    --output_dir outputs/phi4mm-sft --report_to none

# A tiny random-weight Phi-4-MM built locally, trained on CPU in seconds (its loss falls; it learns nothing useful),
# with the loss on the bundled test split at the end:
python -c "from trl_audio.testing import build_tiny_phi4mm; build_tiny_phi4mm('outputs/tiny-phi4mm')"
echo '{"dataset_name": "tsv", "tsv_paths": "'$PWD'/examples/data/speech_sample/test.tsv"}' > outputs/test_set.json
python examples/scripts/sft_audio.py \
    --model_name_or_path outputs/tiny-phi4mm \
    --dataset_config examples/configs/audio_dataset_config.json --eval_dataset_config outputs/test_set.json \
    --learning_rate 2e-3 --per_device_train_batch_size 4 --max_steps 20 --logging_steps 5 \
    --activation_checkpointing false --output_dir outputs/tiny-phi4mm-sft --report_to none

Without a GPU that supports bf16, `bf16` defaults to false (`AudioSFTConfig`; TRL's default of true would stop on
CPU). `--use_peft` without `--lora_target_modules` puts the LoRA on the text decoder's projections only
(`trl_audio.modeling.DECODER_LORA_TARGETS`); without `--use_peft` every weight trains, the audio encoder's included,
unless `--freeze_audio` keeps the encoder and projector as loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from trl_audio.audio_dataset import dataset_from_config
from trl_audio.modeling import SPEECH_LORA_MODES, freeze_audio_path, init_model, lora_target_modules
from trl_audio.sft import AudioSFTConfig, AudioSFTTrainer
from trl_audio.skips import SkipCounter


logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    r"""
    The data and the speech adapter; the rest are `AudioSFTConfig` and `ModelConfig` arguments.

    Parameters:
        dataset_config (`str`):
            JSON dataset config of the training set: `dataset_name` and the keys of
            `trl_audio.audio_dataset.create_audio_dataset` (e.g. `examples/configs/audio_dataset_config.json`); its
            relative paths resolve against the file's folder.
        eval_dataset_config (`str` or `None`, *optional*, defaults to `None`):
            JSON dataset config of an evaluation set (same format), whose loss is logged as `eval_loss` at the
            trainer's evaluation points (`--eval_strategy steps --eval_steps N`) and at the end of training.
        speech_lora (`str`, *optional*, defaults to `"merge"`):
            Phi-4-MM's `speech-lora/` adapter (see `trl_audio.modeling.init_model`): `"merge"` it into the weights
            (and train them all, or a new LoRA with `--use_peft`), fine-tune the adapter itself with `"train"`, or
            `"off"` for models without one.
        freeze_audio (`bool`, *optional*, defaults to `False`):
            Keep the audio encoder and projector as loaded (`trl_audio.modeling.freeze_audio_path`): full fine-tuning
            then trains the text decoder only.
    """

    dataset_config: str = field(
        metadata={"help": "JSON dataset config of the training set (dataset_name and create_audio_dataset's keys)."}
    )
    eval_dataset_config: str | None = field(
        default=None, metadata={"help": "JSON dataset config of an evaluation set, whose loss is logged as eval_loss."}
    )
    speech_lora: str = field(
        default="merge",
        metadata={"help": "Phi-4-MM's speech adapter: 'merge', 'train' or 'off'.", "choices": list(SPEECH_LORA_MODES)},
    )
    freeze_audio: bool = field(default=False, metadata={"help": "Keep the audio encoder and projector as loaded."})


def main(script_args: ScriptArguments, training_args: AudioSFTConfig, model_args: ModelConfig) -> list[dict]:
    """Train, evaluate at the end (with `eval_dataset_config`), save the model and processor to `output_dir`, and
    return the trainer's log history."""
    # The data first: a dataset that cannot be read fails before a model is loaded.
    skip_counter = SkipCounter()
    train_dataset = dataset_from_config(script_args.dataset_config, skip_counter=skip_counter)
    eval_dataset = dataset_from_config(script_args.eval_dataset_config) if script_args.eval_dataset_config else None
    model, processor = init_model(
        model_args.model_name_or_path,
        speech_lora=script_args.speech_lora,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    if script_args.freeze_audio:
        freeze_audio_path(model)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.target_modules = lora_target_modules(model_args.lora_target_modules, model.config.model_type)
    trainer = AudioSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config,
        skip_counter=skip_counter,
    )
    trainer.train()
    if eval_dataset is not None:
        trainer.evaluate()
    # With PEFT the weights saved are the adapter only: load it on top of `init_model(<model>, speech_lora=...)`.
    trainer.save_model(training_args.output_dir)
    logger.info("Saved the model and processor to %s", training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return trainer.state.log_history


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in (__name__, "trl_audio"):
        logging.getLogger(name).setLevel(logging.INFO)
    main(*TrlParser((ScriptArguments, AudioSFTConfig, ModelConfig)).parse_args_and_config())
