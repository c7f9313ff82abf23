"""
Offline DPO of a speech LLM (Phi-4-multimodal first) on fixed transcription pairs: each training row's reference
transcript (`chosen`) against a corrupted copy (`rejected`), both scored with the row's clip, against a reference model
(TRL's DPOTrainer, with the audio). The pairs come from the dataset config's `simu_preference` block (word errors, or
with `bias_substitute_prob` one listed rare word swapped for the closest-spelled word of the row's biasing list). The
dataset flags and LoRA defaults are the online-DPO command line's (`dpo_online_phi4_multimodal.py`). With an
evaluation set, WER and B-WER are measured before and after training.

Usage (from the repository root):

# Phi-4-multimodal-instruct, LoRA on top of the merged speech adapter, one GPU with bf16, the rare-word pairs:
python examples/scripts/dpo_audio.py \
    --model_name_or_path microsoft/Phi-4-multimodal-instruct --bias_substitute_prob 1.0 \
    --eval_dataset_config examples/configs/audio_dataset_eval_config.json \
    --use_peft --lora_r 16 --lora_alpha 32 --dtype bfloat16 --bf16 true --learning_rate 5e-6 --beta 0.1 \
    --loss_type sigmoid sft --loss_weights 1.0 1.0 --per_device_train_batch_size 8 --max_length 2048 \
    --num_train_epochs 1 --output_dir outputs/phi4mm-dpo --report_to none

# A tiny random-weight Qwen2-Audio built locally, trained on CPU in seconds on the bundled speech and its simulated
# pairs (checks the pipeline, learns nothing useful):
python -c "from trl_audio.testing import build_tiny_qwen2_audio; build_tiny_qwen2_audio('outputs/tiny-qwen2-audio')"
python examples/scripts/dpo_audio.py --model_name_or_path outputs/tiny-qwen2-audio --speech_lora off --use_peft \
    --bias_substitute_prob 1.0 --learning_rate 1e-3 --per_device_train_batch_size 4 --max_steps 3 --logging_steps 1 \
    --output_dir outputs/tiny-qwen2-audio-dpo --report_to none

Without a GPU that supports bf16, `bf16` defaults to false. `--use_peft` without `--lora_target_modules` puts the LoRA
on the text decoder's projections only (`trl_audio.modeling.DECODER_LORA_TARGETS`): the audio encoder stays frozen,
so each clip is encoded once per step, for both answers and the reference. Every loss of TRL's DPOTrainer applies
(`--loss_type sigmoid ipo ...`, `--loss_weights`; `sft` among them is RPO's NLL term), and
`--precompute_ref_log_probs true`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from trl_audio import AudioDPOConfig, AudioDPOTrainer
from trl_audio.cli import (
    AudioScriptArguments,
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
class ScriptArguments(AudioScriptArguments):
    r"""
    Arguments of the script that are neither training (`AudioDPOConfig`) nor model (`ModelConfig`) arguments: those
    of `trl_audio.cli.AudioScriptArguments` (the training and evaluation sets, `normalization`, `eval_bias_column`,
    `speech_lora`), plus the one below.

    Parameters:
        bias_substitute_prob (`float` or `None`, *optional*, defaults to `None`):
            Sets the training set's `simu_preference.bias_substitute_prob` (adding the block if the config has none):
            the share of pairs whose `rejected` side swaps one of the row's keywords for the closest-spelled word of
            its biasing list. `None` keeps the config's block as it is.
    """

    bias_substitute_prob: float | None = field(
        default=None,
        metadata={
            "help": "Sets the training set's simu_preference.bias_substitute_prob (adding the block if missing): the "
            "share of pairs whose rejected side swaps one listed rare word. None keeps the config's block."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        config = self.train_dataset_config
        if self.bias_substitute_prob is not None:
            config["simu_preference"] = {
                **(config.get("simu_preference") or {}),
                "bias_substitute_prob": self.bias_substitute_prob,
            }
        if config.get("simu_preference") is None:
            raise ValueError(
                "Offline DPO trains on chosen / rejected pairs: give the training set's dataset config a "
                '"simu_preference" block (see examples/configs/audio_dataset_config.json), or --bias_substitute_prob.'
            )


def main(script_args: ScriptArguments, training_args: AudioDPOConfig, model_args: ModelConfig, callbacks=None):
    """Train, save the model and processor to `output_dir`, and return `{"log_history": [...], "eval_before": ...,
    "eval_after": ...}` (the evaluations are None without `eval_dataset_config`). `callbacks` go to the trainer."""
    check_model_args(script_args, model_args)
    if script_args.speech_lora == "train":
        raise ValueError(
            "speech_lora='train' would take the model without its speech adapter as the reference: use "
            "speech_lora='merge' with --use_peft."
        )
    datasets = load_datasets(script_args)  # before any model loads
    model, processor = load_model(script_args, model_args, training_args)
    trainer = AudioDPOTrainer(
        **trainer_arguments(script_args, training_args, model_args, model, processor, datasets, callbacks)
    )
    return train_and_save(trainer, add_evaluation(trainer, datasets[1], script_args))


def make_parser() -> TrlParser:
    return cli_parser(ScriptArguments, AudioDPOConfig)


if __name__ == "__main__":
    configure_logging(__name__)
    main(*make_parser().parse_args_and_config())
