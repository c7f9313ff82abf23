"""Pre-emption safety (`trl_audio.preemption`): SIGTERM saves a checkpoint at the end of the current step and stops;
resuming from it continues exactly as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset
from helpers import ROOT, SAMPLE, audio_row, audio_rows, make_config, token_sum_reward
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import TrainerCallback

from trl_audio import AudioGRPOConfig, AudioGRPOTrainer, AudioOnlineDPOTrainer
from trl_audio.audio_utils import AudioLoadError
from trl_audio.modeling import decoder_lora_targets
from trl_audio.preemption import latest_complete_checkpoint
from trl_audio.testing import load_tiny


class TermAtStep(TrainerCallback):
    """Sends this process SIGTERM during step `step`, as a scheduler would."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def run(tiny_dir, output_dir, resume=None, callbacks=()):
    model, processor = load_tiny(tiny_dir)
    trainer = AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=token_sum_reward,
        args=make_config(output_dir, max_steps=6, max_new_tokens=6, learning_rate=5e-2),
        train_dataset=Dataset.from_list(audio_rows(8)),
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=decoder_lora_targets(model.config.model_type)),
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    return trainer, losses


def test_sigterm_saves_the_step_and_resuming_continues_exactly(tiny_phi4mm_dir, tmp_path):
    straight, straight_losses = run(tiny_phi4mm_dir, tmp_path / "straight")

    stopped, first_losses = run(tiny_phi4mm_dir, tmp_path / "stopped", callbacks=[TermAtStep(3)])
    assert stopped.preemption.received == signal.SIGTERM and stopped.state.global_step == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    checkpoint = latest_complete_checkpoint(tmp_path / "stopped")
    assert checkpoint == str(tmp_path / "stopped" / "checkpoint-3")

    resumed, resumed_losses = run(tiny_phi4mm_dir, tmp_path / "stopped", resume=checkpoint)
    assert sorted(first_losses) == [1, 2, 3] and sorted(resumed_losses) == [1, 2, 3, 4, 5, 6]  # 1-3 from the state
    assert {**resumed_losses, **first_losses} == pytest.approx(straight_losses, rel=1e-5, abs=1e-7)
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5, abs=1e-7)
    assert any(loss > 0 for loss in straight_losses.values())  # the pairs carried preferences: the weights moved
    final = {n: p for n, p in resumed.model.named_parameters() if "lora_" in n}
    for name, parameter in straight.model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(final[name], parameter, rtol=1e-5, atol=1e-7)


def test_a_checkpoint_cut_short_is_passed_over(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')  # cut mid-write
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert latest_complete_checkpoint(tmp_path / "nowhere") is None


def test_a_sigterm_to_the_cli_saves_exits_0_and_resumes(tiny_phi4mm_dir, tmp_path):
    command = [
        sys.executable, str(ROOT / "examples/scripts/dpo_online_phi4_multimodal.py"),
        "--model_name_or_path", str(tiny_phi4mm_dir), "--output_dir", str(tmp_path), "--use_peft",
        "--tsv_paths", str(SAMPLE / "train.tsv"), "--per_device_train_batch_size", "2", "--max_new_tokens", "6",
        "--max_steps", "6", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--reward_funcs", "word_count",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    logged_steps = 0
    for line in process.stdout:  # the Trainer prints each step's logs
        if "'loss'" in line:
            logged_steps += 1
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            break
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert time.monotonic() - sent < 60
    checkpoint = latest_complete_checkpoint(tmp_path)
    step = int(checkpoint.rsplit("-", 1)[1])
    assert 1 <= step <= logged_steps + 1, output  # within one step of the signal
    resumed = subprocess.run(
        [*command, "--resume_from_checkpoint", "true"], capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "adapter_model.safetensors").is_file() and load_file(tmp_path / "adapter_model.safetensors")


def test_a_run_that_stops_on_an_error_gives_the_signal_handlers_back(tiny_qwen2_audio_dir, tmp_path):
    """`on_error="raise"` stops training inside `train()`: the pre-emption handlers go with it (they would otherwise
    outlive the run, and catch the next SIGTERM of the process)."""
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    rows = [{**audio_row(0), "audio": str(tmp_path / "missing.wav")}]
    config = AudioGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
        max_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, on_error="raise",
    )  # fmt: skip
    trainer = AudioGRPOTrainer(
        model=model, reward_funcs=token_sum_reward, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )  # fmt: skip
    with pytest.raises(AudioLoadError):
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
