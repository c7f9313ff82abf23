"""AudioGRPOTrainer on the three tiny audio-LLM families with the bundled speech: the drop-in for TRL's GRPOTrainer on
text, the audio aligned with each sample through shuffling and splitting, each clip encoded once, rows left out."""

import statistics
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import META, TRAINING_DEFAULTS, audio_row, audio_rows, token_sum_reward
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from trl_audio import AudioGRPOConfig, AudioGRPOTrainer
from trl_audio.audio_utils import AudioLoadError, load_audio
from trl_audio.evaluation import evaluate_rows
from trl_audio.modeling import freeze_audio_path
from trl_audio.prompt_inputs import process_prompts, processor_sampling_rate, render_prompts
from trl_audio.recipe import EVAL_KWARGS, corpus_splits
from trl_audio.recipe import grpo_trainer as recipe_grpo_trainer
from trl_audio.testing import load_tiny


WARM_START = Path(__file__).resolve().parents[1] / "examples/models/whisper_qwen2_audio_warm_start"
FAMILIES = ["tiny_phi4mm_dir", "tiny_qwen2_audio_dir", "tiny_glm_asr_dir"]
AUDIO_ENCODER = {
    "phi4_multimodal": "model.embed_tokens_extend.audio_embed.encoder",
    "qwen2_audio": "model.audio_tower",
    "glmasr": "model.audio_tower",
}
# The short CPU runs of the other trainers' tests, in GRPO's fields (`per_device_train_batch_size` counts samples);
# TRL's GRPOConfig takes the same (the drop-in comparison).
GRPO_DEFAULTS = {key: value for key, value in TRAINING_DEFAULTS.items() if key != "max_new_tokens"} | {
    "per_device_train_batch_size": 4,
    "num_generations": 2,
    "max_completion_length": 8,
}


def grpo_trainer(tmp_path, model, processor, rows, reward_funcs=token_sum_reward, peft_config=None, **overrides):
    args = AudioGRPOConfig(output_dir=str(tmp_path / "out"), **{**GRPO_DEFAULTS, **overrides})
    return AudioGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=peft_config,
    )


def decoder_lora(model):
    targets = {"phi4_multimodal": r"model\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)"}
    default = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets.get(model.config.model_type, default))


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry]


def varied_rows(count):
    """Bundled rows whose prompts differ in their instruction as well as their clip (prompts of different lengths)."""
    return [audio_row(i, "Transcribe the audio clip." + " Please." * i) for i in range(count)]


@pytest.mark.parametrize("beta, loss_type", [(0.0, "dapo"), (0.1, "dapo"), (0.0, "grpo"), (0.1, "dr_grpo")], ids=str)
def test_text_only_prompts_give_stock_trl_losses(tiny_phi4mm_dir, tmp_path, beta, loss_type):
    """On text-only prompts, with the same seed, AudioGRPOTrainer is a drop-in for TRL's GRPOTrainer."""

    def char_code_reward(completions, **kwargs):
        return [float(sum(map(ord, c[0]["content"]))) for c in completions]

    rows = [{"prompt": [{"role": "user", "content": f"Repeat: {META[i]['text']}"}]} for i in range(4)]
    runs = {}
    for name, trainer_class, config_class in [
        ("trl", GRPOTrainer, GRPOConfig),
        ("ours", AudioGRPOTrainer, AudioGRPOConfig),
    ]:
        model, processor = load_tiny(tiny_phi4mm_dir)
        trainer = trainer_class(
            model=model,
            reward_funcs=char_code_reward,
            args=config_class(output_dir=str(tmp_path / name), beta=beta, loss_type=loss_type, **GRPO_DEFAULTS),
            train_dataset=Dataset.from_list(rows),
            processing_class=processor.tokenizer,
        )
        trainer.train()
        runs[name] = trainer
    keys = ["loss", "grad_norm", "reward", "completions/mean_length", "entropy"] + (["kl"] if beta else [])
    for key in keys:
        ours, trl = logged(runs["ours"], key), logged(runs["trl"], key)
        assert len(ours) == 3 and ours == pytest.approx(trl, rel=1e-4, abs=1e-5), key
    # on-policy, the loss is 0 whenever the advantages average to 0; its gradient is not
    assert all(norm > 0 for norm in logged(runs["ours"], "grad_norm"))


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_in_the_loss_are_those_of_each_samples_own_clip(request, tmp_path, family):
    """With `steps_per_generation=2`, TRL shuffles the generation batch and splits it in two: each policy log-prob of
    the loss must still equal a plain forward of the sample's own prompt and clip + its completion, and differ from
    one with another clip."""
    model, processor = load_tiny(request.getfixturevalue(family))
    freeze_audio_path(model)
    rows = varied_rows(4)
    if model.config.model_type == "phi4_multimodal":
        # Phi-4-MM's encoder lets padding frames leak into a clip's embedding: its prompts share one clip (and still
        # differ in their instruction, so in length, which exercises left padding)
        rows = [{**row, "audio": rows[0]["audio"]} for row in rows]
    sampling_rate = processor_sampling_rate(processor)
    other_clip = load_audio(audio_row(9)["audio"], sampling_rate)
    trainer = grpo_trainer(tmp_path, model, processor, rows, steps_per_generation=2, max_steps=2)
    checked = []
    original = trainer._get_per_token_logps_and_entropies

    def checked_pass(model_, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        logps, entropy, aux = original(model_, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if kwargs.get("compute_entropy"):  # the policy pass of the loss (`_compute_loss`)
            rollout = trainer._rollouts["train"]
            completions = input_ids[:, -logits_to_keep:]
            masks = attention_mask[:, -logits_to_keep:]
            model.eval()
            for k, prompt in enumerate(trainer._forward_rows.tolist()):
                length = int(masks[k].sum())
                completion = completions[k, :length]
                own_clip = rollout.inputs["audio"][prompt]
                own = independent_logprobs(model, processor, rollout.inputs["prompt"][prompt], own_clip, completion)
                other = independent_logprobs(
                    model, processor, rollout.inputs["prompt"][prompt], other_clip, completion
                )
                torch.testing.assert_close(logps[k, :length].detach(), own, atol=5e-5, rtol=1e-5)
                assert (own - other).abs().max() > 1e-3  # the clip matters
                checked.append(rollout.inputs["id"][prompt])
            model.train()
        return logps, entropy, aux

    trainer._get_per_token_logps_and_entropies = checked_pass
    torch.manual_seed(0)
    trainer.train()
    # 2 optimizer steps x 4 samples each; every prompt's 2 samples were seen, spread over both halves
    assert sorted(checked) == sorted(row["id"] for row in rows for _ in range(2))


def independent_logprobs(model, processor, prompt, clip, completion):
    """Log-probs of `completion` after `prompt` with `clip`: one unpadded forward, the processor called on this prompt
    alone."""
    text = render_prompts(processor, {"prompt": [prompt], "audio": [clip]})[0]
    single = processor(text=[text], audio=[clip], return_tensors="pt")
    input_ids = torch.cat([single.pop("input_ids")[0], completion])[None]
    single.pop("attention_mask")
    with torch.no_grad():
        logits = model(input_ids=input_ids, **single).logits[0, -len(completion) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, completion[:, None])[:, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_clip_is_encoded_once_per_generation_batch(request, tmp_path, family):
    """A decoder LoRA with a KL term (the reference is the policy without its adapter) under gradient checkpointing:
    over one generation batch of 3 clips x 2 samples, split into 2 optimizer steps, the encoder sees 3 clips."""
    model, processor = load_tiny(request.getfixturevalue(family))
    encoder = model.get_submodule(AUDIO_ENCODER[model.config.model_type])
    trainer = grpo_trainer(
        tmp_path, model, processor, audio_rows(3), peft_config=decoder_lora(model), per_device_train_batch_size=3,
        steps_per_generation=2, max_steps=2, beta=0.1, gradient_checkpointing=True,
    )  # fmt: skip
    clip_rows = []
    encoder.register_forward_pre_hook(lambda module, args, kwargs: clip_rows.append(len(args[0])), with_kwargs=True)
    trainer.train()
    assert sum(clip_rows) == 3
    assert all(loss == loss for loss in logged(trainer, "loss")) and logged(trainer, "kl")


def test_bad_audio_is_skipped_and_counted_or_raises(tiny_qwen2_audio_dir, tmp_path):
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    rows = audio_rows(3) + [{**audio_row(3), "id": "broken", "audio": str(tmp_path / "missing.wav")}]
    seen = []

    def recording_reward(completions, id, **kwargs):
        seen.extend(id)
        return [1.0 * len(c[0]["content"]) for c in completions]

    trainer = grpo_trainer(tmp_path, model, processor, rows, reward_funcs=recording_reward, max_steps=2)
    trainer.train()
    assert logged(trainer, "data/skipped/audio_missing")[-1] == 1  # 2 steps x 2 prompts: each row once
    assert all(loss == loss for loss in logged(trainer, "loss"))
    rewards = logged(trainer, "rewards/recording_reward/mean")
    assert all(reward == reward for reward in rewards)  # the left-out row's NaN stays out of the averages
    assert "broken" in seen  # the reward functions still saw it (its reward is dropped afterwards)

    model, processor = load_tiny(tiny_qwen2_audio_dir)
    trainer = grpo_trainer(tmp_path, model, processor, rows, max_steps=2, on_error="raise")
    with pytest.raises(AudioLoadError, match="row id='broken'"):
        trainer.train()


def test_a_left_out_row_gets_no_advantage_and_no_loss(tiny_qwen2_audio_dir, tmp_path):
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    rows = [audio_row(0), audio_row(1, "Transcribe the audio clip. " * 40)]  # the second is too long
    clip = load_audio(rows[0]["audio"], processor_sampling_rate(processor))
    text = render_prompts(processor, {"prompt": [rows[0]["prompt"]], "audio": [clip]})
    length = process_prompts(processor, text, [clip])["input_ids"].size(1)  # audio placeholders included
    max_length = length + GRPO_DEFAULTS["max_completion_length"] + 20
    trainer = grpo_trainer(tmp_path, model, processor, rows, per_device_train_batch_size=4, max_length=max_length)
    batch = trainer._prepare_inputs([rows[0], rows[0], rows[1], rows[1]])
    assert batch["rollout_rows"].tolist() == [0, 0, -1, -1]
    assert batch["completion_mask"][2:].sum() == 0 and batch["advantages"][2:].tolist() == [0.0, 0.0]
    assert batch["num_items_in_batch"] == batch["completion_mask"].sum()
    assert trainer.skip_counter.by_reason["prompt_too_long"] == 1


def test_reward_functions_get_each_rows_own_columns(tiny_glm_asr_dir, tmp_path):
    model, processor = load_tiny(tiny_glm_asr_dir)
    rows = [{**row, "keywords": META[i]["keywords"]} for i, row in enumerate(varied_rows(4))]
    calls = []

    def recording_reward(prompts, completions, text, keywords, id, **kwargs):
        calls.append(list(zip(prompts, text, keywords, id)))
        return [0.0] * len(completions)

    grpo_trainer(tmp_path, model, processor, rows, reward_funcs=recording_reward, max_steps=2).train()
    by_id = {row["id"]: row for row in rows}
    seen = [sample for call in calls for sample in call]
    assert len(seen) == 8
    for prompt, text, keywords, row_id in seen:
        row = by_id[row_id]
        assert (text, keywords) == (row["text"], row["keywords"])
        assert prompt[0]["content"] == row["prompt"][0]["content"][1]["text"]  # text only: no audio part


def test_a_row_dependent_reward_is_fitted_on_a_handful_of_clips(small_corpus_dir, tmp_path):
    """GRPO from the shipped warm start on 4 training clips with the recipe's settings (4 clips x 8 samples a step)
    at lr 1e-4, rewards minus WER against each row's own reference plus bias-word recall, 30 steps: the clips' greedy
    WER must fall, and the samples' WER reward of the last 5 steps must beat the first 5 by more than 0.05. Measured
    with seeds 0 / 1 / 2: greedy WER 0.176 -> 0.088 / 0.147 / 0.088, WER reward -0.31 / -0.33 / -0.28 -> -0.14 /
    -0.20 / -0.13. A reward or a clip attached to the wrong row scores each sample against a sentence it does not
    transcribe, and neither moves. False-pass odds: without learning greedy transcripts do not change (no update, no
    WER change), and the per-step mean WER reward of 32 samples (sample sd about 0.2) has a sd of about 0.035, so the
    difference of two 5-step means has one of about 0.022: 0.05 by chance is a 2.3-sigma event (about 1%), on top of
    the WER fall."""
    model, processor = load_tiny(WARM_START)
    model.float()
    freeze_audio_path(model)
    train, _ = corpus_splits(small_corpus_dir, test_rows=1)
    rows = [train[i] for i in range(4)]
    before = evaluate_rows(model, processor, rows, **EVAL_KWARGS)["metrics"]["wer"]
    trainer = recipe_grpo_trainer(
        model, processor, Dataset.from_list(rows), tmp_path, max_steps=30, logging_steps=1, learning_rate=1e-4,
    )  # fmt: skip
    trainer.train()
    after = evaluate_rows(trainer.model, processor, rows, **EVAL_KWARGS)["metrics"]["wer"]
    assert after < before, (before, after)
    rewards = logged(trainer, "rewards/wer_reward/mean")
    assert statistics.mean(rewards[-5:]) - statistics.mean(rewards[:5]) > 0.05, rewards


# TRL's own tests/test_grpo_trainer.py options that run offline on a tiny model, with audio prompts instead of text:
# each trains (every trainable parameter of the text decoder changes). Not ported: vLLM (a server; see
# tests/vllm_server), Liger kernels (not installed), tools, environments, rollout functions and continuous batching
# (refused: the audio goes through trl_audio's own generation), vision-language models (images), and
# `mask_truncated_completions` (the tiny model rarely ends a sample, so every sample would be masked).
TRL_OPTIONS = {
    "loss_type=grpo": {"loss_type": "grpo"},
    "loss_type=dr_grpo": {"loss_type": "dr_grpo"},
    "loss_type=bnpo": {"loss_type": "bnpo"},
    "loss_type=cispo": {"loss_type": "cispo"},
    "loss_type=sapo": {"loss_type": "sapo"},
    "num_iterations=2": {"num_iterations": 2},
    "beta=0.1": {"beta": 0.1},
    "sync_ref_model": {"beta": 0.1, "sync_ref_model": True, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5},
    "pad_to_multiple_of=8": {"pad_to_multiple_of": 8},
    "scale_rewards=batch": {"scale_rewards": "batch"},
    "scale_rewards=none": {"scale_rewards": "none"},
    "normalize_then_sum": {"multi_objective_aggregation": "normalize_then_sum", "reward_weights": [1.0, 2.0]},
    "top_entropy_quantile=0.5": {"top_entropy_quantile": 0.5},
    "importance_sampling_level=sequence": {"importance_sampling_level": "sequence", "steps_per_generation": 2},
    "gradient_accumulation=2": {"gradient_accumulation_steps": 2, "steps_per_generation": 2},
}


@pytest.mark.parametrize("options", TRL_OPTIONS.values(), ids=TRL_OPTIONS.keys())
def test_trl_grpo_options_train_with_audio(tiny_qwen2_audio_dir, tmp_path, options):
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    freeze_audio_path(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def none_for_the_first_row(completions, id, **kwargs):  # TRL's "reward function with None output" case
        return [None if row_id == id[0] else float(len(c[0]["content"])) for c, row_id in zip(completions, id)]

    trainer = grpo_trainer(
        tmp_path, model, processor, varied_rows(4), reward_funcs=[token_sum_reward, none_for_the_first_row],
        max_steps=2, **options,
    )  # fmt: skip
    trainer.train()
    assert all(loss == loss for loss in logged(trainer, "loss"))
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not unchanged
