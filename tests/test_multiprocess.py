"""Two processes on the CPU (`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`: accelerate
1.x's `--cpu` flag launches one process only): the ranks train the same weights, the logged metrics
count both ranks' samples, and a rank whose every batch is skipped does not leave the other waiting forever."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).resolve().parent / "multiprocess_run.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(tiny_dir, output_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(tiny_dir), str(output_dir)]
    result = subprocess.run([*command, *extra], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(output_dir / f"lora-rank{r}.pt") for r in (0, 1)]
    return ranks, json.loads((output_dir / "logs.json").read_text())


@pytest.mark.parametrize("bad_rank", [None, "1"], ids=["both_ranks_train", "rank1_all_skipped"])
def test_two_processes_train_the_same_weights_and_count_both_ranks(tiny_phi4mm_dir, tmp_path, bad_rank):
    ranks, logs = launch(tiny_phi4mm_dir, tmp_path, *([bad_rank] if bad_rank else []))
    assert len(logs) == 3
    for name, weight in ranks[0]["after"].items():
        torch.testing.assert_close(weight, ranks[1]["after"][name], rtol=0, atol=0)  # the ranks agree exactly
    assert any(not torch.equal(w, ranks[0]["before"][n]) for n, w in ranks[0]["after"].items())  # and trained
    rewards = [entry["rewards/rank_reward/mean"] for entry in logs]
    if bad_rank is None:  # 1 on rank 0, 3 on rank 1: both ranks' samples in the mean
        assert rewards == [2.0, 2.0, 2.0]
    else:  # rank 1 had no sample to count, and took part in every step all the same
        assert rewards == [1.0, 1.0, 1.0]
        assert [entry["data/skipped/total"] for entry in logs] == [0, 0, 0]  # rank 0's own count: it skipped none


ACCELERATE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples/accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_loads_through_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {"multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}
    expected["deepspeed_zero3"] = "DEEPSPEED"
    assert config.distributed_type.value == expected[path.stem] and config.num_processes >= 1
    assert "accelerate launch --config_file examples/accelerate_configs/" + path.name in path.read_text()


def test_the_four_accelerate_configs_ship():
    assert [p.stem for p in ACCELERATE_CONFIGS] == ["deepspeed_zero2", "deepspeed_zero3", "fsdp", "multi_gpu"]


def test_the_grpo_command_line_trains_under_accelerate_launch_with_two_processes(tiny_qwen2_audio_dir, tmp_path):
    """`examples/scripts/grpo_audio.py` under `accelerate launch` with 2 CPU processes, on bundled speech with a clip
    longer than `--max_audio_seconds` (5.8 s; the others are 3.8-4.9 s): both ranks train, the long row is left out
    by the trainer with a warning naming it, and the adapter is saved."""
    sample = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
    rows = [json.loads(line) for line in (sample / "metadata.jsonl").read_text().splitlines()[:4]]
    rows = [{"id": r["id"], "audio_path": str(sample / r["audio_path"]), "text": r["text"]} for r in rows]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    script = Path(__file__).resolve().parents[1] / "examples/scripts/grpo_audio.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    command += [
        "--model_name_or_path", str(tiny_qwen2_audio_dir), "--speech_lora", "off", "--use_peft",
        "--dataset_name", "jsonl", "--jsonl_paths", str(manifest), "--output_dir", str(tmp_path / "out"),
        "--per_device_train_batch_size", "2", "--num_generations", "2", "--max_completion_length", "6",
        "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--reward_funcs", "wer", "word_count", "--learning_rate", "1e-2", "--max_audio_seconds", "5.5",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
    assert "Skipping row id='ss_0001'" in result.stderr and "max_audio_seconds" in result.stderr
