"""AudioSFTTrainer and its collator on the tiny Phi-4-MM, whose audio encoder hears
(`test_testing.py::test_encoder_output_depends_on_the_clip`), with the bundled speech; and the `sft_audio.py` CLI."""

import json
import math
import statistics
import sys

import pytest
import soundfile as sf
import torch
from datasets import Dataset
from helpers import ROOT, SAMPLE, audio_row
from transformers.utils import is_torch_bf16_gpu_available
from trl import ModelConfig, TrlParser

from trl_audio.audio_dataset import create_audio_dataset
from trl_audio.modeling import AUDIO_PATH_MODULES
from trl_audio.prompt_inputs import SKIPPED_KEY
from trl_audio.sft import AudioSFTCollator, AudioSFTConfig, AudioSFTTrainer
from trl_audio.testing import load_tiny


sys.path.insert(0, str(ROOT / "examples/scripts"))  # the scripts are files, not modules of the package

import sft_audio as cli  # noqa: E402


TRAIN_TSV = SAMPLE / "train.tsv"
RUN = dict(report_to="none", activation_checkpointing=False, save_strategy="no", disable_tqdm=True, seed=0)


def test_labels_are_the_transcript_and_its_end_of_turn_only(tiny_phi4mm_dir):
    """Each row of the batch is its prompt as the processor gives it for that row alone (chat template with the
    generation prompt, audio placeholders expanded), then its transcript and Phi-4-MM's end of turn
    (`<|end|><|endoftext|>`) as the tokenizer gives them, then padding; `labels` are -100 on the prompt and the
    padding and the token ids on the transcript and end of turn."""
    _, processor = load_tiny(tiny_phi4mm_dir)
    rows = [audio_row(i) for i in (0, 2, 5)]  # transcripts of 15, 13 and 12 words
    batch = AudioSFTCollator(processor)(rows)
    assert batch[SKIPPED_KEY] == {}
    width = batch["input_ids"].size(1)
    for i, row in enumerate(rows):
        clip, _ = sf.read(row["audio"], dtype="float32")
        prompt = processor(
            text="<|user|><|audio|>Transcribe the audio clip.<|end|><|assistant|>", audio=[clip], return_tensors="pt"
        )["input_ids"][0].tolist()
        transcript = processor.tokenizer(row["text"] + "<|end|><|endoftext|>", add_special_tokens=False)["input_ids"]
        length, padding = len(prompt) + len(transcript), width - len(prompt) - len(transcript)
        assert batch["input_ids"][i, :length].tolist() == prompt + transcript
        assert batch["attention_mask"][i].tolist() == [1] * length + [0] * padding
        assert batch["labels"][i].tolist() == [-100] * len(prompt) + transcript + [-100] * padding
    assert batch["attention_mask"][:, -1].any()  # no column of padding only
    assert batch["audio_input_features"].size(0) == len(rows)


def test_bad_audio_and_too_long_rows_are_left_out_and_counted(tiny_phi4mm_dir, tmp_path):
    _, processor = load_tiny(tiny_phi4mm_dir)
    missing = {**audio_row(1), "id": "no_such_clip", "audio": str(tmp_path / "missing.flac")}
    batch = AudioSFTCollator(processor)([audio_row(0), missing, audio_row(2)])
    assert batch[SKIPPED_KEY] == {"audio_missing": 1} and batch["input_ids"].size(0) == 2
    with pytest.raises(ValueError, match="no_such_clip.*missing.flac"):
        AudioSFTCollator(processor, on_error="raise")([audio_row(0), missing])

    lengths = AudioSFTCollator(processor)([audio_row(0), audio_row(2)])["attention_mask"].sum(1).tolist()
    short = min(lengths)  # row 0 (5.8 s, 15 words) is the longer one
    batch = AudioSFTCollator(processor, max_length=short)([audio_row(0), audio_row(2)])
    assert batch[SKIPPED_KEY] == {"prompt_too_long": 1} and batch["attention_mask"].sum(1).tolist() == [short]
    with pytest.raises(ValueError, match=f"ss_0001.*{max(lengths)} tokens, more than max_length={short}"):
        AudioSFTCollator(processor, max_length=short, on_too_long="raise")([audio_row(0), audio_row(2)])

    nothing_left = AudioSFTCollator(processor)([missing])
    assert nothing_left[SKIPPED_KEY] == {"audio_missing": 1} and nothing_left["input_ids"].numel() == 0


def test_a_batch_whose_rows_were_all_skipped_trains_on_nothing_and_is_logged(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    missing = [{**audio_row(i), "id": f"gone{i}", "audio": str(tmp_path / f"gone{i}.flac")} for i in range(2)]
    args = AudioSFTConfig(
        str(tmp_path), per_device_train_batch_size=2, max_steps=2, logging_steps=1, learning_rate=1e-3, **RUN
    )
    trainer = AudioSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(missing + [audio_row(0), audio_row(1)]),
        processing_class=processor,
    )  # fmt: skip
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    first, second = [log for log in trainer.state.log_history if "loss" in log]
    assert first["loss"] == 0 and first["data/skipped/audio_missing"] == 2 and second["loss"] > 0
    assert second["data/skipped/total"] == 2
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())

    # With several processes, such a batch runs as one padding token that no label scores: a forward and backward
    # like the other processes' (their collective operations), which learns nothing.
    empty = AudioSFTCollator(processor)(missing)
    model.zero_grad()
    assert trainer.training_step(model, trainer._stand_in(empty)) == 0
    assert trainer.skip_counter.by_reason["audio_missing"] == 4
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(not g.any() for g in grads)


@pytest.fixture(scope="module")
def trained(tiny_phi4mm_dir, tmp_path_factory):
    """The tiny Phi-4-MM after 40 steps of full fine-tuning on the first 4 training rows (plain prompt: only the clip
    tells the rows apart), all 4 in every batch, learning rate 2e-3, seed 0; with its training rows."""
    model, processor = load_tiny(tiny_phi4mm_dir)
    rows = create_audio_dataset("tsv", tsv_paths=str(TRAIN_TSV), num_egs=4)
    args = AudioSFTConfig(
        str(tmp_path_factory.mktemp("sft")),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=40,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        **RUN,
    )
    trainer = AudioSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor)
    trainer.train()
    return trainer, rows


def test_training_loss_falls(trained):
    """The first loss is about ln(vocabulary size) = ln(1000) = 6.91: the untrained decoder spreads its probability
    evenly. Seed 0: 6.91, then 6.17 after 5 steps, 4.07 after 20 and 1.95 after 40; each window of 10 steps averages
    below the one before."""
    trainer, _ = trained
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 40
    assert losses[0] == pytest.approx(math.log(len(trainer.processing_class.tokenizer)), abs=0.05)
    windows = [statistics.mean(losses[i : i + 10]) for i in range(0, 40, 10)]
    assert windows == sorted(windows, reverse=True) and losses[4] < losses[0] - 0.5 and losses[-1] < 2.5


def test_loss_depends_on_the_audio(trained):
    """After training, the evaluation loss of the 4 rows with their own clips is lower than with the clips rotated
    across them (row i gets row i + 1's clip; one batch, so Phi-4-MM's encoder sees the same padding either way).

    Seed 0: 1.852 with the own clips, 1.979 rotated, a margin of 0.127. Teacher forcing gives every later token of a
    transcript its earlier ones, so the clip matters mostly where a transcript begins, and the margin stays small
    even for a model that hears. A deaf model cannot reach it: trained the same way, the fixture with the old init
    (every weight N(0, 0.02), unnormalised log-mels: its encoder's output does not depend on the clip) gets margins of
    0.004 to 0.010 over build seeds 0 to 3. The test asks for 0.05, five times the deaf model's highest. It is
    deterministic (no false-pass odds); the hearing fixture's margin depends on its build seed (0.10, 0.14 and 0.024
    for seeds 1 to 3), and this one is the session's seed-0 fixture.
    """
    trainer, rows = trained
    own = trainer.evaluate(rows)["eval_loss"]
    rotated = rows.remove_columns("audio").add_column("audio", rows["audio"][1:] + rows["audio"][:1])
    assert trainer.evaluate(rotated)["eval_loss"] - own > 0.05


def test_cli_main_trains_two_steps_and_saves(tiny_phi4mm_dir, tmp_path):
    dataset_config = tmp_path / "train.json"
    dataset_config.write_text(json.dumps({"dataset_name": "tsv", "tsv_paths": str(TRAIN_TSV), "num_egs": 4}))
    output_dir = tmp_path / "out"
    parser = TrlParser((cli.ScriptArguments, AudioSFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        [
            "--model_name_or_path", str(tiny_phi4mm_dir), "--dataset_config", str(dataset_config),
            "--eval_dataset_config", str(dataset_config), "--per_device_train_batch_size", "2", "--max_steps", "2",
            "--logging_steps", "1", "--activation_checkpointing", "false", "--output_dir", str(output_dir),
            "--report_to", "none", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert training_args.bf16 == is_torch_bf16_gpu_available()  # on where it works, so no flag is needed on a CPU
    log_history = cli.main(script_args, training_args, model_args)
    assert [log["step"] for log in log_history if "loss" in log] == [1, 2]
    assert "eval_loss" in log_history[-1]
    saved, _ = load_tiny(output_dir)
    trained_weights = dict(saved.named_parameters())
    original, _ = load_tiny(tiny_phi4mm_dir)
    assert any(not torch.equal(p, trained_weights[name]) for name, p in original.named_parameters())


def test_cli_freeze_audio_trains_the_text_decoder_only(tiny_phi4mm_dir, tmp_path):
    dataset_config = tmp_path / "train.json"
    dataset_config.write_text(json.dumps({"dataset_name": "tsv", "tsv_paths": str(TRAIN_TSV), "num_egs": 4}))
    parser = TrlParser((cli.ScriptArguments, AudioSFTConfig, ModelConfig))
    args = parser.parse_args_and_config(
        [
            "--model_name_or_path", str(tiny_phi4mm_dir), "--dataset_config", str(dataset_config),
            "--freeze_audio", "true", "--speech_lora", "off", "--learning_rate", "1e-2",
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--activation_checkpointing", "false",
            "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    cli.main(*args)
    trained = dict(load_tiny(tmp_path / "out")[0].named_parameters())
    original = dict(load_tiny(tiny_phi4mm_dir)[0].named_parameters())
    audio = [name for name in original if name.startswith(AUDIO_PATH_MODULES["phi4_multimodal"][0])]
    assert audio and all(torch.equal(original[name], trained[name]) for name in audio)
    decoder = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(original[decoder], trained[decoder])
