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

import logging
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.cli import (
    RewardScriptArguments,
    add_evaluation,
    check_model_args,
    configure_logging,
    load_datasets,
    load_model,
    model_load_kwargs,
    train_and_save,
    trainer_arguments,
)
from trl_audio.cli import (
    make_parser as cli_parser,
)
from trl_audio.judges import JUDGES, get_judge
from trl_audio.modeling import init_model


logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments(RewardScriptArguments):
    r"""
    Arguments of the script that are neither training (`AudioOnlineDPOConfig`) nor model (`ModelConfig`) arguments:
    those of `trl_audio.cli.RewardScriptArguments` (the training and evaluation sets, `normalization`,
    `eval_bias_column`, `speech_lora`, `reward_funcs`), plus the judge's.

    Parameters:
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
    """

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

    def __post_init__(self):
        super().__post_init__()
        if self.judge != "openai" and (self.judge_base_url or self.judge_api_key_env):
            raise ValueError("--judge_base_url and --judge_api_key_env are for --judge openai.")


def main(script_args: ScriptArguments, training_args: AudioOnlineDPOConfig, model_args: ModelConfig, callbacks=None):
    """Train, save the model and processor to `output_dir`, and return `{"log_history": [...], "eval_before": ...,
    "eval_after": ...}` (the evaluations are None without `eval_dataset_config`). `callbacks` go to the trainer."""
    check_model_args(script_args, model_args)
    if training_args.reward_model_path is not None:
        if script_args.judge not in (None, "reward_model") or script_args.judge_model not in (
            None,
            training_args.reward_model_path,
        ):
            raise ValueError("--reward_model_path is --judge reward_model --judge_model <path>: give one of them.")
        script_args.judge, script_args.judge_model = "reward_model", training_args.reward_model_path
    if script_args.judge in ("reward_model", "openai") and script_args.judge_model is None:
        raise ValueError(f"--judge {script_args.judge} needs --judge_model: a model's path, or the endpoint's model.")
    datasets = load_datasets(script_args)  # before any model loads
    model, processor = load_model(script_args, model_args, training_args)
    ref_model = None
    if script_args.speech_lora == "train":
        # TRL's PEFT reference (adapter disabled) would be the model without its speech ability: load the merged one.
        load_kwargs = model_load_kwargs(model_args, training_args)
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
    trainer = AudioOnlineDPOTrainer(
        ref_model=ref_model,
        judge=judge,
        **trainer_arguments(script_args, training_args, model_args, model, processor, datasets, callbacks),
    )
    return train_and_save(trainer, add_evaluation(trainer, datasets[1], script_args))


def make_parser() -> TrlParser:
    return cli_parser(ScriptArguments, AudioOnlineDPOConfig)


if __name__ == "__main__":
    configure_logging(__name__)
    main(*make_parser().parse_args_and_config())
