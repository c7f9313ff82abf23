"""
GRPO of a speech LLM (Phi-4-multimodal first) on transcription: each step samples `num_generations` transcripts per
clip, scores them with the reward functions (WER against the reference, recall of the bias words), and pushes each
sample's likelihood up or down by its advantage over its clip's other samples (TRL's GRPOTrainer, with the audio). The
dataset flags, rewards and LoRA defaults are the online-DPO command line's (`dpo_online_phi4_multimodal.py`). With an
evaluation set, WER and B-WER are measured before and after training.

Usage (from the repository root):

# Phi-4-multimodal-instruct, LoRA on top of the merged speech adapter, one GPU with bf16 (the recipe holds the rest):
python examples/scripts/grpo_audio.py --config examples/configs/phi4mm_grpo.yaml

# A tiny random-weight Qwen2-Audio built locally, trained on CPU in seconds on the bundled speech (checks the
# pipeline, learns nothing useful), with WER / B-WER before and after on the bundled test split:
python -c "from trl_audio.testing import build_tiny_qwen2_audio; build_tiny_qwen2_audio('outputs/tiny-qwen2-audio')"
echo '{"dataset_name": "tsv", "tsv_paths": "'$PWD'/examples/data/speech_sample/test.tsv"}' > outputs/test_set.json
python examples/scripts/grpo_audio.py \
    --model_name_or_path outputs/tiny-qwen2-audio --speech_lora off --eval_dataset_config outputs/test_set.json \
    --use_peft --learning_rate 1e-3 --per_device_train_batch_size 4 --num_generations 4 \
    --max_completion_length 16 --max_steps 3 --logging_steps 1 --activation_checkpointing false \
    --output_dir outputs/tiny-qwen2-audio-grpo --report_to none

# Two processes (DDP; the shipped accelerate configs work as for online DPO):
accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/scripts/grpo_audio.py ...

Without a GPU that supports bf16, `bf16` defaults to false. `--use_peft` without `--lora_target_modules` puts the LoRA
on the text decoder's projections only (`trl_audio.modeling.DECODER_LORA_TARGETS`): the audio encoder stays frozen,
so each clip is encoded once per generation batch. `per_device_train_batch_size` counts samples (TRL's GRPO), so it
must be a multiple of `num_generations` times the number of clips wanted per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trl import ModelConfig, TrlParser

from trl_audio import AudioGRPOConfig, AudioGRPOTrainer
from trl_audio.cli import (
    RewardScriptArguments,
    add_evaluation,
    check_model_args,
    configure_logging,
    load_datasets,
    load_model,
    train_and_save,
    trainer_arguments,
)
from trl_audio.cli import make_parser as cli_parser


logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments(RewardScriptArguments):
    r"""
    Arguments of the script that are neither training (`AudioGRPOConfig`) nor model (`ModelConfig`) arguments: those
    of `trl_audio.cli.RewardScriptArguments` (the training and evaluation sets, `normalization`, `eval_bias_column`,
    `speech_lora`, `reward_funcs`).
    """


def main(script_args: ScriptArguments, training_args: AudioGRPOConfig, model_args: ModelConfig, callbacks=None):
    """Train, save the model and processor to `output_dir`, and return `{"log_history": [...], "eval_before": ...,
    "eval_after": ...}` (the evaluations are None without `eval_dataset_config`). `callbacks` go to the trainer."""
    check_model_args(script_args, model_args)
    if script_args.speech_lora == "train" and training_args.beta != 0.0:
        raise ValueError(
            "speech_lora='train' with beta > 0 would take the model without its speech adapter as the reference: use "
            "speech_lora='merge' with --use_peft, or beta 0 (GRPO's default)."
        )
    datasets = load_datasets(script_args)  # before any model loads
    model, processor = load_model(script_args, model_args, training_args)
    trainer = AudioGRPOTrainer(
        **trainer_arguments(script_args, training_args, model_args, model, processor, datasets, callbacks)
    )
    return train_and_save(trainer, add_evaluation(trainer, datasets[1], script_args))


def make_parser() -> TrlParser:
    return cli_parser(ScriptArguments, AudioGRPOConfig)


if __name__ == "__main__":
    configure_logging(__name__)
    main(*make_parser().parse_args_and_config())
