"""AudioOnlineDPOTrainer end to end on three tiny audio-LLM families (Phi-4-MM, Qwen2-Audio, GLM-ASR), with the
bundled speech; and its pair selection and DPO loss on hand-picked numbers (no model)."""

import copy
import json
import math
import statistics
from unittest import mock

import pytest
import torch
from datasets import Dataset
from helpers import (
    META,
    ROOT,
    SAMPLE,
    TRAINING_DEFAULTS,
    audio_row,
    audio_rows,
    make_config,
    random_reward_model,
    token_sum_reward,
)
from peft import LoraConfig, PeftModel
from transformers import AutoModelForSequenceClassification
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.audio_dataset import create_audio_dataset, load_dataset_config
from trl_audio.audio_utils import AudioLoadError
from trl_audio.judges import RewardFunctionJudge
from trl_audio.prompt_inputs import SKIPPED_KEY
from trl_audio.rewards import bias_word_recall_reward
from trl_audio.skips import SkipCounter
from trl_audio.testing import load_tiny
from trl_audio.trainer import dpo_losses, mean_over_preferred, mean_token_nll, select_pairs


FAMILIES = ["tiny_phi4mm_dir", "tiny_qwen2_audio_dir", "tiny_glm_asr_dir"]
# Parts that get no gradient from audio prompts (the encoders we freeze, Phi-4-MM's image branch).
FROZEN = {
    "phi4_multimodal": ("audio_embed.encoder.", "image_embed.", "_for_vision_speech"),
    "qwen2_audio": ("audio_tower.",),
    "glmasr": ("audio_tower.",),
}
# Encoder and projector: what makes the audio embeddings; frozen, they may be read once per step and reused.
AUDIO_PATH = {
    "phi4_multimodal": ("audio_embed.",),
    "qwen2_audio": ("audio_tower.", "multi_modal_projector."),
    "glmasr": ("audio_tower.", "multi_modal_projector."),
}
LORA_TARGETS = {
    "phi4_multimodal": ["qkv_proj", "o_proj"],
    "qwen2_audio": ["q_proj", "v_proj"],
    "glmasr": ["q_proj", "v_proj"],
}


def text_row(index):
    content = [{"type": "text", "text": f"Repeat: {META[index]['text']}"}]
    return {"id": f"text-{index}", "prompt": [{"role": "user", "content": content}], "audio": None, "text": ""}


def write_jsonl(path, indices, broken_audio):
    """A JSONL manifest of bundled rows, the last of which points at `broken_audio`."""
    lines = [
        {"id": META[i]["id"], "audio_path": str(SAMPLE / META[i]["audio_path"]), "text": META[i]["text"]}
        for i in indices
    ]
    lines[-1]["audio_path"] = str(broken_audio)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def make_trainer(tmp_path, model, processor, rows, reward_funcs=token_sum_reward, **kwargs):
    """A trainer of `model` on `rows` (a list of rows, or a dataset) with the test defaults (`make_config`).
    Keyword arguments that `AudioOnlineDPOTrainer` takes go to it; the others override the config."""
    trainer_keys = {"ref_model", "judge", "peft_config", "reward_processing_classes", "skip_counter"}
    trainer_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in trainer_keys}
    return AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=make_config(tmp_path / "out", **kwargs),
        train_dataset=Dataset.from_list(rows) if isinstance(rows, list) else rows,
        processing_class=processor,
        **trainer_kwargs,
    )


def freeze_encoders(model, table=FROZEN):
    for name, parameter in model.named_parameters():
        if any(part in name for part in table[model.config.model_type]):
            parameter.requires_grad_(False)


def snapshot(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry]


@pytest.fixture(params=FAMILIES)
def tiny_dir(request):
    return request.getfixturevalue(request.param)


def test_three_steps_update_every_trainable_parameter_and_nothing_else(tiny_dir, tmp_path):
    model, processor = load_tiny(tiny_dir)
    ref_model, _ = load_tiny(tiny_dir)
    freeze_encoders(model)
    before, ref_before = snapshot(model), snapshot(ref_model)
    trainer = make_trainer(tmp_path, model, processor, audio_rows(6), ref_model=ref_model)
    trainer.train()

    losses = logged(trainer, "loss")
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    assert logged(trainer, "pairs/tied_fraction") == [0.0, 0.0, 0.0]  # so every step had a gradient
    for name, parameter in trainer.model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == parameter.requires_grad, f"{name}: changed={changed}, trainable={parameter.requires_grad}"
    assert any(not p.requires_grad for p in trainer.model.parameters())  # the frozen encoder was checked
    for name, parameter in ref_model.named_parameters():
        assert torch.equal(parameter, ref_before[name]), f"reference parameter {name} changed"


def test_metrics_are_logged(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = make_trainer(tmp_path, model, processor, audio_rows(2), max_steps=1, num_generations=3)
    trainer.train()
    entry = trainer.state.log_history[0]
    for key in ("loss", "objective/kl", "rewards/margins", "logps/chosen", "objective/scores_margin"):
        assert key in entry
    durations = [len(trainer.data_collator([audio_row(i)])["audio"][0]) / 16000 for i in range(2)]
    assert entry["audio/seconds"] == pytest.approx(sum(durations))
    assert entry["rewards/token_sum_reward/std"] > 0
    assert 0 < entry["completions/mean_length"] <= 8
    assert entry["perf/samples_per_second"] > 0
    assert entry["data/skipped/total"] == 0 and entry["data/skipped/prompt_too_long"] == 0


def collate(trainer, rows):
    """The trainer's collator output without its skip count, as `training_step` hands it on."""
    batch = trainer.data_collator(rows)
    batch.pop(SKIPPED_KEY)
    return batch


def prompt_batch(trainer, rows):
    """The trainer's own path: collator -> processor dict -> `PromptBatch` (with the audio embeddings read once, when
    the trainer reuses them)."""
    kept, prompt_inputs = trainer._prepare_prompt_inputs(collate(trainer, rows))
    return trainer._prompt_batch(prompt_inputs, kept["audio"])


def forward_logprobs(trainer, rows, completion_ids, completion_mask):
    with torch.no_grad():
        return trainer._forward(
            trainer.model, prompt_batch(trainer, rows), list(range(len(rows))), completion_ids, completion_mask
        )


def test_audio_reaches_the_model(tiny_dir, tmp_path):
    model, processor = load_tiny(tiny_dir)
    model.eval()
    trainer = make_trainer(tmp_path, model, processor, [audio_row(0)])
    completion_ids = torch.tensor([processor.tokenizer("Ada Lovelace").input_ids])
    completion_mask = torch.ones_like(completion_ids)
    clip_a = forward_logprobs(trainer, [audio_row(0)], completion_ids, completion_mask)
    clip_a_again = forward_logprobs(trainer, [audio_row(0)], completion_ids, completion_mask)
    clip_b = forward_logprobs(trainer, [audio_row(1)], completion_ids, completion_mask)
    torch.testing.assert_close(clip_a, clip_a_again)
    assert (clip_a - clip_b).abs().max() > 1e-3


def test_text_only_prompts_give_stock_trl_losses(tiny_phi4mm_dir, tmp_path):
    """On text-only prompts, with the same seed, our trainer is a drop-in for TRL's OnlineDPOTrainer."""

    def char_code_reward(completions, **kwargs):
        return [float(sum(map(ord, c[0]["content"]))) for c in completions]

    rows = [{"prompt": text_row(i)["prompt"]} for i in range(6)]
    runs = {}
    for name, trainer_class, config_class in [
        ("trl", OnlineDPOTrainer, OnlineDPOConfig),
        ("ours", AudioOnlineDPOTrainer, AudioOnlineDPOConfig),
    ]:
        model, processor = load_tiny(tiny_phi4mm_dir)
        trainer = trainer_class(
            model=model,
            reward_funcs=char_code_reward,
            args=config_class(output_dir=str(tmp_path / name), max_length=512, **TRAINING_DEFAULTS),
            train_dataset=Dataset.from_list(rows),
            processing_class=processor.tokenizer,
        )
        trainer.train()
        runs[name] = trainer
    assert logged(runs["ours"], "pairs/tied_fraction") == [0.0, 0.0, 0.0]
    for key in ("loss", "logps/chosen", "logps/rejected", "objective/scores_margin"):
        assert logged(runs["ours"], key) == pytest.approx(logged(runs["trl"], key), rel=1e-4, abs=1e-4), key


def test_peft_lora_with_gradient_checkpointing_trains_and_reloads(tiny_dir, tmp_path):
    model, processor = load_tiny(tiny_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[model.config.model_type])
    trainer = make_trainer(
        tmp_path, model, processor, audio_rows(4), peft_config=lora, max_steps=2, gradient_checkpointing=True
    )
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert lora_before and all(
        not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n
    )
    trainer.save_model(str(tmp_path / "adapter"))

    batch = collate(trainer, [audio_row(5)])
    _, prompt_inputs = trainer._prepare_prompt_inputs(batch)
    trainer.model.eval()
    with torch.no_grad():
        trained_logits = trainer.model(**prompt_inputs).logits
    reloaded = PeftModel.from_pretrained(load_tiny(tiny_dir)[0], str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**prompt_inputs).logits, trained_logits, atol=1e-5, rtol=1e-5)
        base_logits = load_tiny(tiny_dir)[0].eval()(**prompt_inputs).logits
    assert (base_logits - trained_logits).abs().max() > 1e-4


def test_mixed_audio_and_text_only_rows_train_together(tiny_dir, tmp_path):
    model, processor = load_tiny(tiny_dir)
    rows = [audio_row(0), text_row(1), text_row(2), audio_row(3)]
    trainer = make_trainer(tmp_path, model, processor, rows, max_steps=2, per_device_train_batch_size=4)
    trainer.train()
    assert len(logged(trainer, "loss")) == 2
    durations = sum(len(trainer.data_collator([r])["audio"][0]) for r in (rows[0], rows[3])) / 16000
    assert logged(trainer, "audio/seconds")[0] == pytest.approx(durations)


def test_reward_functions_get_every_column_repeated_per_sample(tiny_phi4mm_dir, tmp_path):
    seen = {}

    def recording_reward(prompts, completions, completion_ids, text, id, keywords, **kwargs):
        seen.update(prompts=prompts, text=text, id=id, keywords=keywords, completions=completions)
        return [float(len(ids)) for ids in completion_ids]

    model, processor = load_tiny(tiny_phi4mm_dir)
    rows = [{**audio_row(i), "keywords": META[i]["keywords"]} for i in range(2)]
    trainer = make_trainer(
        tmp_path, model, processor, rows, reward_funcs=recording_reward, max_steps=1, num_generations=3
    )
    trainer.train()
    order = seen["id"][:2]
    by_id = {row["id"]: row for row in rows}
    assert seen["id"] == order * 3
    assert seen["text"] == [by_id[i]["text"] for i in order] * 3
    assert seen["keywords"] == [by_id[i]["keywords"] for i in order] * 3
    stored = {row["id"]: row["prompt"] for row in trainer.train_dataset}  # as the dataset holds it, untouched
    assert seen["prompts"] == [stored[i] for i in order] * 3
    assert len(seen["completions"]) == 6 and seen["completions"][0][0]["role"] == "assistant"


def test_a_pairwise_judge_can_replace_reward_functions(tiny_phi4mm_dir, tmp_path):
    calls = []

    def prefer_longer(prompts, completions, **columns):
        calls.append(len(prompts))
        return [float(len(c)) for c in completions]

    model, processor = load_tiny(tiny_phi4mm_dir)
    judge = RewardFunctionJudge(prefer_longer)
    trainer = make_trainer(
        tmp_path, model, processor, audio_rows(4), reward_funcs=None, judge=judge, max_steps=2, num_generations=3
    )
    trainer.train()
    # 3 samples -> 3 pairs per step, each judged with one reward call per side, 2 prompts per call
    assert calls == [2] * 12
    # a round robin of 3 hands out one win per decided pair: at most 3 wins over 3 samples, mean at most 1
    assert all(0 < wins <= 1 for wins in logged(trainer, "rewards/judge_wins/mean"))


def test_a_judge_without_preferences_gives_no_loss(tiny_phi4mm_dir, tmp_path):
    def undecided(prompts, completions_a, completions_b, **columns):
        return [None] * len(prompts)

    model, processor = load_tiny(tiny_phi4mm_dir)
    before = snapshot(model)
    trainer = make_trainer(tmp_path, model, processor, audio_rows(4), reward_funcs=None, judge=undecided, max_steps=2)
    trainer.train()
    assert logged(trainer, "pairs/tied_fraction") == [1.0, 1.0]
    assert logged(trainer, "loss") == [0.0, 0.0]
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_bad_audio_is_skipped_and_counted_or_raises(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"not audio at all")
    rows = [audio_row(0), {**audio_row(1), "id": "bad-row", "audio": str(broken)}]
    trainer = make_trainer(tmp_path, model, processor, rows, max_steps=2, per_device_train_batch_size=2)
    trainer.train()
    assert logged(trainer, "data/skipped/total") == [1, 2]  # one bad row per step, running count
    assert logged(trainer, "data/skipped/audio_unreadable") == [1, 2]

    skips = SkipCounter()
    counted = create_audio_dataset(
        "jsonl",
        jsonl_paths=[str(write_jsonl(tmp_path / "rows.jsonl", [0, 1], broken))],
        on_error="skip",
        skip_counter=skips,
    )
    assert skips.total == 1
    trainer = make_trainer(
        tmp_path,
        load_tiny(tiny_phi4mm_dir)[0],
        processor,
        counted,
        skip_counter=skips,
        max_steps=1,
        per_device_train_batch_size=1,
    )
    trainer.train()
    assert logged(trainer, "data/skipped/total") == [1]  # the row the dataset left out is counted too

    strict = make_trainer(tmp_path, load_tiny(tiny_phi4mm_dir)[0], processor, rows, on_error="raise")
    with pytest.raises(AudioLoadError, match=r"bad-row.*broken\.flac"):
        strict.data_collator(rows)


def test_too_long_prompts_are_skipped_or_raise_never_truncated(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    rows = [text_row(0), audio_row(1)]  # the audio row's prompt holds ~60 audio tokens, the text row ~25
    trainer = make_trainer(tmp_path, model, processor, rows, max_steps=1, per_device_train_batch_size=2, max_length=48)
    trainer.train()
    assert logged(trainer, "data/skipped/prompt_too_long") == [1]
    assert logged(trainer, "audio/seconds") == [0.0]  # only the text row trained

    trainer.args.on_too_long = "raise"
    with pytest.raises(ValueError, match=r"row id='ss_0002'.*exceeds max_length=48"):
        trainer._prepare_prompt_inputs(collate(trainer, [audio_row(1)]))


def test_audio_row_without_placeholder_is_a_clear_error(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = make_trainer(tmp_path, model, processor, [audio_row(0)])
    row = {**audio_row(0), "prompt": "Transcribe the audio clip."}  # plain text prompt: no place for the audio
    with pytest.raises(ValueError, match=r"ss_0001.*0 audio placeholders"):
        trainer._prepare_prompt_inputs(collate(trainer, [row]))
    # a conversational prompt with plain-string content gets its audio part, as TRL does for images
    row = {**audio_row(0), "prompt": [{"role": "user", "content": "Transcribe the audio clip."}]}
    kept, prompt_inputs = trainer._prepare_prompt_inputs(collate(trainer, [row]))
    assert (prompt_inputs["input_ids"] == processor.audio_token_id).sum() > 0


def test_it_learns_a_reward_the_tiny_model_can_satisfy(tiny_phi4mm_dir, tmp_path):
    """Reward: the share of completion tokens in the lower half of the vocabulary (0.5 for the random model).

    60 steps of 4 prompts x 2 samples, seed 0, full fine-tuning at lr 2e-2. We require the mean reward of the last 10
    steps to beat the first 10 by 0.2 (it goes from about 0.5 to above 0.9). False-pass odds: without learning, the
    per-step mean reward (8 samples x 8 tokens) has a standard deviation of about 0.06 (measured on the first steps),
    so the difference of two 10-step means has one of about 0.03; a 0.2 gap by chance is a 7-sigma event (< 1e-11).
    """
    model, processor = load_tiny(tiny_phi4mm_dir)
    half = model.config.vocab_size // 2

    def low_token_share(completion_ids, **kwargs):
        return [sum(t < half for t in ids) / max(len(ids), 1) for ids in completion_ids]

    trainer = make_trainer(
        tmp_path,
        model,
        processor,
        audio_rows(40),
        reward_funcs=low_token_share,
        max_steps=60,
        per_device_train_batch_size=4,
        learning_rate=2e-2,
    )
    trainer.train()
    rewards = logged(trainer, "rewards/low_token_share/mean")
    assert len(rewards) == 60
    assert statistics.mean(rewards[-10:]) - statistics.mean(rewards[:10]) > 0.2, rewards


def test_reward_weights_and_missing_eos_penalty_shape_the_scores(tiny_phi4mm_dir, tmp_path):
    def length_reward(completion_ids, **kwargs):
        return [float(len(ids)) for ids in completion_ids]

    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = make_trainer(
        tmp_path, model, processor, audio_rows(4), reward_funcs=[token_sum_reward, length_reward], max_steps=2,
        reward_weights=[0.5, 0.0], missing_eos_penalty=3.0,
    )  # fmt: skip
    trainer.train()
    for entry in trainer.state.log_history[:2]:
        # score = 0.5 * token_sum + 0 * length - 3 * [no EOS], averaged over the step's completions
        expected = 0.5 * entry["rewards/token_sum_reward/mean"] - 3.0 * (1 - entry["val/contain_eos_token"])
        assert entry["objective/scores"] == pytest.approx(expected, rel=1e-5)
        assert entry["rewards/length_reward/mean"] > 0


@pytest.mark.parametrize("streaming, decoded", [(True, False), (False, True)])
def test_trains_on_create_audio_dataset_output(tiny_phi4mm_dir, tmp_path, streaming, decoded):
    """Rows straight from `create_audio_dataset`: streamed (IterableDataset) or with decoded arrays."""
    dataset = create_audio_dataset(
        "tsv",
        tsv_paths=str(SAMPLE / "train.tsv"),
        num_egs=4,
        streaming=streaming,
        load_audio=decoded,
        biasing={"bias_prob": 1.0},
        simu_preference={},
    )
    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = make_trainer(tmp_path, model, processor, dataset, max_steps=2)
    trainer.train()
    assert len(logged(trainer, "loss")) == 2
    assert all(seconds > 4 for seconds in logged(trainer, "audio/seconds"))  # two clips of 3.6-5.8 s per step


def test_with_a_judge_reward_functions_are_logged_but_do_not_rank(tiny_phi4mm_dir, tmp_path):
    def undecided(prompts, completions_a, completions_b, **columns):
        return [None] * len(prompts)

    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = make_trainer(
        tmp_path, model, processor, audio_rows(2), reward_funcs=token_sum_reward, judge=undecided, max_steps=1
    )
    trainer.train()
    entry = trainer.state.log_history[0]
    assert entry["pairs/tied_fraction"] == 1.0 and entry["loss"] == 0.0
    assert entry["rewards/token_sum_reward/mean"] > 0 and entry["rewards/judge_wins/mean"] == 0.0


def test_a_sequence_classification_reward_model_scores_text_without_the_audio(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    tokenizer = processor.tokenizer
    random_reward_model(tokenizer, hidden_size=32).save_pretrained(tmp_path / "tiny-reward-model")
    reward_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny-reward-model")
    seen_texts = []
    reward_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_texts.extend(tokenizer.batch_decode(kwargs["input_ids"])), with_kwargs=True
    )
    trainer = make_trainer(
        tmp_path,
        model,
        processor,
        audio_rows(2),
        reward_funcs=reward_model,
        reward_processing_classes=tokenizer,
        max_steps=1,
    )
    trainer.train()
    entry = trainer.state.log_history[0]
    assert entry["rewards/tiny-reward-model/std"] > 0  # the reward model scored the 4 completions differently
    assert len(seen_texts) == 4 and all("Transcribe the audio clip." in text for text in seen_texts)
    assert not any(processor.audio_token in text for text in seen_texts)


def test_a_batch_of_only_bad_rows_is_skipped_without_spoiling_the_averages(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"")
    rows = [audio_row(1)] + [{**audio_row(i), "audio": str(broken)} for i in (0, 2, 3)]
    trainer = make_trainer(
        tmp_path, model, processor, rows, max_steps=4, per_device_train_batch_size=1, logging_steps=2
    )
    with mock.patch("torch.utils.data.RandomSampler.__iter__", lambda sampler: iter([1, 0, 2, 3])):
        trainer.train()
    first, second = [entry for entry in trainer.state.log_history if "loss" in entry]
    # window 1: a skipped batch and a good one -> the good one's metrics; window 2: only a skipped batch -> NaN
    assert (
        first["data/skipped/total"] == 1 and math.isfinite(first["logps/chosen"]) and first["pairs/tied_fraction"] == 0
    )
    assert second["data/skipped/total"] == 3 and math.isnan(second["logps/chosen"])


def test_gradient_accumulation_trains_on_every_micro_batch(tiny_phi4mm_dir, tmp_path):
    seen_ids = []

    def recording_reward(completion_ids, id, **kwargs):
        seen_ids.extend(id[: len(id) // 2])  # the first of the 2 sample blocks
        return token_sum_reward(completion_ids)

    model, processor = load_tiny(tiny_phi4mm_dir)
    before = snapshot(model)
    trainer = make_trainer(
        tmp_path,
        model,
        processor,
        audio_rows(4),
        reward_funcs=recording_reward,
        max_steps=2,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    assert len(logged(trainer, "loss")) == 2 and sorted(seen_ids) == sorted(META[i]["id"] for i in range(4))
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


# ---------------------------------------------------------------- pair selection and loss, on hand-picked numbers


# 3 prompts x 3 samples, in TRL's layout: rewards[k * 3 + b] is sample k of prompt b.
REWARDS = torch.tensor([1.0, 5.0, 2.0, 3.0, 5.0, 0.0, 2.0, 5.0, 1.0])
POLICY_LOGPS = torch.tensor([-4.0, -1.0, -3.0, -2.0, -1.0, -5.0, -6.0, -1.0, -7.0])
REF_LOGPS = torch.tensor([-3.0, -1.0, -4.0, -3.0, -1.0, -3.0, -6.0, -1.0, -7.0])


def test_select_pairs_takes_best_and_worst_and_flags_ties():
    chosen, rejected, tied = select_pairs(REWARDS, num_generations=3)
    # prompt 0: rewards (1, 3, 2) -> best sample 1 (index 3), worst sample 0 (index 0)
    # prompt 1: rewards (5, 5, 5) -> tie
    # prompt 2: rewards (2, 0, 1) -> best sample 0 (index 2), worst sample 1 (index 5)
    assert chosen[[0, 2]].tolist() == [3, 2]
    assert rejected[[0, 2]].tolist() == [0, 5]
    assert tied.tolist() == [False, True, False]


def test_select_pairs_matches_trl_order_for_two_samples():
    # TRL: chosen = first sample when first >= second
    chosen, rejected, tied = select_pairs(torch.tensor([2.0, 1.0, 1.0, 3.0]), num_generations=2)
    assert chosen.tolist() == [0, 3] and rejected.tolist() == [2, 1] and not tied.any()


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        # h = (pi_c - pi_r) - (ref_c - ref_r), beta = 0.5
        # prompt 0: (-2 - -4) - (-3 - -3) = 2 ; prompt 2: (-3 - -5) - (-4 - -3) = 3 ; prompt 1 tied, left out
        # sigmoid: mean(log(1 + e^-1), log(1 + e^-1.5)) = mean(0.3132617, 0.2014133) = 0.2573375
        ("sigmoid", (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-1.5))) / 2),
        # ipo: mean((2 - 1/(2*0.5))^2, (3 - 1)^2) = mean(1, 4) = 2.5
        ("ipo", 2.5),
    ],
)
def test_dpo_loss_on_hand_picked_logps_excludes_ties(loss_type, expected):
    chosen, rejected, tied = select_pairs(REWARDS, num_generations=3)
    losses = dpo_losses(
        POLICY_LOGPS[chosen] - POLICY_LOGPS[rejected], REF_LOGPS[chosen] - REF_LOGPS[rejected], 0.5, loss_type
    )
    loss = mean_over_preferred(losses, tied)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_all_tied_gives_zero_loss_that_still_backpropagates():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses = dpo_losses(logps[:1] - logps[1:], torch.zeros(1), 0.1, "sigmoid")
    loss = mean_over_preferred(losses, torch.tensor([True]))
    loss.backward()
    assert loss.item() == 0.0 and logps.grad.abs().sum().item() == 0.0


def test_mean_token_nll_counts_the_completion_tokens_only():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -7.0, -7.0], [-3.0, -3.0, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # (1 + 2) / 2, 0.5 / 1, and 0 for an empty completion (no division by zero)
    assert mean_token_nll(logprobs, mask).tolist() == [1.5, 0.5, 0.0]


def test_rpo_alpha_adds_the_chosen_samples_nll_to_the_dpo_loss(tiny_phi4mm_dir, tmp_path):
    # Same seed, same model: step 1 samples the same completions, so the two losses differ by alpha x the logged NLL.
    def first_step(alpha, name):
        model, processor = load_tiny(tiny_phi4mm_dir)
        trainer = make_trainer(
            tmp_path / name, model, processor, audio_rows(4), max_steps=1, num_generations=3, rpo_alpha=alpha
        )
        trainer.train()
        return trainer.state.log_history[0]

    plain, rpo = first_step(None, "plain"), first_step(0.5, "rpo")
    assert "objective/nll_chosen" not in plain and rpo["objective/nll_chosen"] > 0
    assert rpo["objective/scores"] == plain["objective/scores"]  # the same samples
    assert rpo["loss"] - plain["loss"] == pytest.approx(0.5 * rpo["objective/nll_chosen"], rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError, match="rpo_alpha"):
        make_config(tmp_path, rpo_alpha=-1.0)


def test_unknown_loss_type_is_an_error():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_losses(torch.zeros(1), torch.zeros(1), 0.1, "hinge")


# ---------------------------------------------------------------- speed: each switch changes the time, not the result

AUDIO_ENCODER = {  # the module that encodes the clips, one row per clip
    "phi4_multimodal": "model.embed_tokens_extend.audio_embed.encoder",
    "qwen2_audio": "model.audio_tower",
    "glmasr": "model.audio_tower",
}
SPEED_SWITCHES = ["generate_with_cache", "reuse_audio_embeddings", "share_prompt_prefill", "forward_pairs_only"]


def decoder_lora(model):
    """A LoRA on the text decoder's attention only (not the audio encoder's layers, which share some names)."""
    targets = {"phi4_multimodal": r"model\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)"}
    default = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets.get(model.config.model_type, default))


def run_recorded(tiny_dir, tmp_path, **overrides):
    """Two steps with a decoder-only LoRA (the audio path frozen) under gradient checkpointing; returns the sampled
    completions, the logs and the trained LoRA weights."""
    completions = []

    def recording_reward(completion_ids, **kwargs):
        completions.append([list(ids) for ids in completion_ids])
        return token_sum_reward(completion_ids)

    model, processor = load_tiny(tiny_dir)
    trainer = make_trainer(
        tmp_path, model, processor, audio_rows(4), reward_funcs=recording_reward, peft_config=decoder_lora(model),
        max_steps=2, num_generations=3, gradient_checkpointing=True, learning_rate=1e-1, **overrides,
    )  # fmt: skip
    trainer.train()
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return completions, trainer.state.log_history[:2], lora


@pytest.mark.parametrize("switch", SPEED_SWITCHES)
@pytest.mark.parametrize("family", ["tiny_phi4mm_dir", "tiny_qwen2_audio_dir"])
def test_each_speed_switch_leaves_completions_logprobs_and_loss_unchanged(request, tmp_path, family, switch):
    tiny_dir = request.getfixturevalue(family)
    fast = run_recorded(tiny_dir, tmp_path / "fast")
    slow = run_recorded(tiny_dir, tmp_path / "slow", **{switch: False})
    assert fast[0] == slow[0]  # the same samples, step by step
    for fast_logs, slow_logs in zip(fast[1], slow[1]):
        for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "objective/scores_margin"):
            assert fast_logs[key] == pytest.approx(slow_logs[key], rel=1e-4, abs=1e-5), key
        assert fast_logs["loss"] > 0  # the pairs carried a preference, so the weights moved
    for name, weight in fast[2].items():  # equal gradients: the same weights after two updates
        torch.testing.assert_close(weight, slow[2][name], rtol=1e-4, atol=1e-6)


def test_pair_only_passes_give_the_gradients_of_the_full_pass(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    freeze_encoders(model, AUDIO_PATH)
    gradients = {}
    for pairs_only in (True, False):
        trainer = make_trainer(
            tmp_path, copy.deepcopy(model), processor, audio_rows(2), num_generations=4, forward_pairs_only=pairs_only
        )
        batch = trainer.data_collator(audio_rows(2))
        torch.manual_seed(0)
        loss = trainer.training_step(trainer.model, batch)
        gradients[pairs_only] = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        assert loss > 0
    assert gradients[True].keys() == gradients[False].keys() and gradients[True]
    for name, gradient in gradients[True].items():
        torch.testing.assert_close(gradient, gradients[False][name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_clip_is_encoded_once_per_step(request, tmp_path, family):
    """Default config (gradient checkpointing on) with a decoder-only LoRA: the encoder sees each of the batch's clips
    once, for generation of the N samples and the policy and reference passes together."""
    model, processor = load_tiny(request.getfixturevalue(family))
    encoder = model.get_submodule(AUDIO_ENCODER[model.config.model_type])
    trainer = make_trainer(
        tmp_path, model, processor, audio_rows(3), peft_config=decoder_lora(model), per_device_train_batch_size=3,
        num_generations=4, max_steps=1, gradient_checkpointing=True,
    )  # fmt: skip
    clip_rows = []
    encoder.register_forward_pre_hook(lambda module, args, kwargs: clip_rows.append(len(args[0])), with_kwargs=True)
    trainer.train()
    assert sum(clip_rows) == 3
    assert logged(trainer, "pairs/tied_fraction") == [0.0]  # the step trained on its pairs


def test_completions_are_logged_with_their_scores_and_roles(tiny_phi4mm_dir, tmp_path):
    model, processor = load_tiny(tiny_phi4mm_dir)
    rows = [{**row, "keywords": META[i]["keywords"]} for i, row in enumerate(audio_rows(2))]
    trainer = make_trainer(
        tmp_path, model, processor, rows, reward_funcs=[token_sum_reward, bias_word_recall_reward],
        reward_weights=[1.0, 0.0], num_generations=3, max_steps=2, log_completions=True,
    )  # fmt: skip
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 1, 2, 2]  # every logging step, one object per prompt
    by_id = {row["id"]: row for row in rows}
    for line in lines:
        assert line["reference"] == by_id[line["id"]]["text"] and "Transcribe the audio clip." in line["prompt"]
        samples = line["samples"]
        assert len(samples) == 3
        for sample in samples:  # weights 1 and 0: the score is the token-sum reward
            assert sample["score"] == pytest.approx(sample["rewards"]["token_sum_reward"])
            assert 0 <= sample["rewards"]["bias_word_recall_reward"] <= 1
        roles = {s["role"]: s["score"] for s in samples if s["role"]}
        assert roles["chosen"] == max(s["score"] for s in samples)
        assert roles["rejected"] == min(s["score"] for s in samples)


def test_ls_bias_sample_rows_train(tiny_phi4mm_dir, tmp_path):
    dataset = create_audio_dataset(**load_dataset_config(ROOT / "examples/configs/ls_bias_sample_config.json"))
    model, processor = load_tiny(tiny_phi4mm_dir)
    trainer = make_trainer(tmp_path, model, processor, dataset, reward_funcs=bias_word_recall_reward, max_steps=2)
    trainer.train()
    assert len(logged(trainer, "loss")) == 2 and all(seconds > 4 for seconds in logged(trainer, "audio/seconds"))
    assert all(value >= 0 for value in logged(trainer, "rewards/bias_word_recall_reward/mean"))
