"""Training metrics reach the loggers users watch: tensorboard event files and an offline wandb run (wandb is an
optional extra: its test skips without it), completions included."""

import pytest
from datasets import Dataset
from helpers import audio_rows, make_config, token_sum_reward

from trl_audio import AudioOnlineDPOTrainer
from trl_audio.testing import load_tiny


def train(tiny_dir, output_dir, report_to):
    model, processor = load_tiny(tiny_dir)
    trainer = AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=token_sum_reward,
        args=make_config(output_dir, report_to=report_to, max_steps=2, max_new_tokens=4, log_completions=True),
        train_dataset=Dataset.from_list(audio_rows(4)),
        processing_class=processor,
    )
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_tensorboard_receives_every_training_metric_and_the_completions(tiny_phi4mm_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = train(tiny_phi4mm_dir, tmp_path, ["tensorboard"])
    (run,) = {path.parent for path in tmp_path.rglob("events.out.tfevents.*")}  # <output_dir>/runs/<date>
    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for key in ("loss", "rewards/token_sum_reward/mean", "objective/kl", "data/skipped/total", "memory/peak_mb"):
        assert f"train/{key}" in scalars, sorted(scalars)
        assert [e.step for e in events.Scalars(f"train/{key}")] == [1, 2]
    assert events.Scalars("train/loss")[-1].value == pytest.approx(logs[-1]["loss"], rel=1e-4)
    assert any("completions" in tag for tag in events.Tags()["tensors"])  # the samples, as text


def test_an_offline_wandb_run_receives_the_training_metrics(tiny_phi4mm_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, log = [], wandb.Run.log

    def recording_log(run, data, *args, **kwargs):  # what reaches the run, passed on unchanged
        logged.append(dict(data))
        return log(run, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", recording_log)
    logs = train(tiny_phi4mm_dir, tmp_path / "out", ["wandb"])
    wandb.finish()
    assert list(tmp_path.rglob("offline-run-*/run-*.wandb"))  # the offline run, on disk
    steps = [entry for entry in logged if "train/loss" in entry]
    assert [entry["train/loss"] for entry in steps] == pytest.approx([entry["loss"] for entry in logs], rel=1e-4)
    for key in ("rewards/token_sum_reward/mean", "objective/kl", "data/skipped/total", "memory/peak_mb"):
        assert all(f"train/{key}" in entry for entry in steps), key
    tables = [entry["completions"] for entry in logged if "completions" in entry]
    assert len(tables) == 2 and len(tables[0].data) == 4  # 2 prompts x 2 samples, each logging step
