"""Run by tests/test_multiprocess.py with two processes on the CPU: three steps of online DPO on
the tiny Phi-4-MM with audio, each process writing what the test compares (its LoRA weights, the logs).

Usage: ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/multiprocess_run.py \
    <tiny_model_dir> <output_dir> [bad_rank]
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from helpers import SAMPLE, audio_rows, make_config, token_sum_reward
from peft import LoraConfig

from trl_audio import AudioOnlineDPOTrainer
from trl_audio.modeling import decoder_lora_targets
from trl_audio.prompt_inputs import AudioPromptCollator, processor_sampling_rate
from trl_audio.testing import load_tiny


def rank_reward(completions, **kwargs):
    """1 on process 0, 3 on process 1: its logged mean is 2 only when both processes' samples count."""
    return [1.0 + 2.0 * PartialState().process_index] * len(completions)


class BadOnRank(AudioPromptCollator):
    """Every row of process `rank` points at a missing file, so that all its batches are skipped."""

    def __init__(self, rank, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = rank

    def __call__(self, features):
        if PartialState().process_index == self.rank:
            features = [{**row, "audio": str(SAMPLE / "missing.flac")} for row in features]
        return super().__call__(features)


def main(model_dir, output_dir, bad_rank=None):
    torch.set_num_threads(1)
    model, processor = load_tiny(model_dir)
    collator = None
    if bad_rank is not None:
        collator = BadOnRank(int(bad_rank), processor_sampling_rate(processor), "skip")
    trainer = AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=[token_sum_reward, rank_reward],
        args=make_config(
            output_dir, max_new_tokens=6, num_generations=2, learning_rate=5e-2, reward_weights=[1.0, 0.0]
        ),
        train_dataset=Dataset.from_list(audio_rows(12)),
        processing_class=processor,
        data_collator=collator,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=decoder_lora_targets(model.config.model_type)),
    )
    rank = PartialState().process_index
    lora = lambda: {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}  # noqa: E731
    before = lora()
    trainer.train()
    torch.save({"before": before, "after": lora()}, Path(output_dir) / f"lora-rank{rank}.pt")
    if rank == 0:
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        (Path(output_dir) / "logs.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    main(*sys.argv[1:])
