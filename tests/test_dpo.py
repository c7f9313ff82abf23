"""AudioDPOTrainer (offline DPO) on the three tiny audio-LLM families with the bundled speech: the drop-in for TRL's
DPOTrainer on text, chosen / rejected log-probs of each row's own clip, each clip encoded once, rows left out, the
margin learned, TRL's loss options."""

import pytest
import torch
from datasets import Dataset
from helpers import META, TRAINING_DEFAULTS, audio_row
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from trl_audio import AudioDPOConfig, AudioDPOTrainer
from trl_audio.audio_utils import load_audio
from trl_audio.modeling import freeze_audio_path
from trl_audio.prompt_inputs import end_of_turn, processor_sampling_rate, render_prompts
from trl_audio.testing import load_tiny


FAMILIES = ["tiny_phi4mm_dir", "tiny_qwen2_audio_dir", "tiny_glm_asr_dir"]
AUDIO_ENCODER = {
    "phi4_multimodal": "model.embed_tokens_extend.audio_embed.encoder",
    "qwen2_audio": "model.audio_tower",
    "glmasr": "model.audio_tower",
}
# The short CPU runs of the other trainers' tests, in DPO's fields; TRL's DPOConfig takes the same.
DPO_DEFAULTS = {key: value for key, value in TRAINING_DEFAULTS.items() if key != "max_new_tokens"} | {
    "learning_rate": 1e-3,
    "beta": 0.1,
}


def pair_row(index, instruction="Transcribe the audio clip.", audio_index=None):
    """Bundled utterance `index` with its transcript as `chosen` and, as `rejected`, the transcript with its first
    keyword swapped for another row's (the targeted error)."""
    row = audio_row(index, instruction)
    if audio_index is not None:
        row["audio"] = audio_row(audio_index)["audio"]
    keyword = META[index]["keywords"][0]
    other = META[(index + 1) % len(META)]["keywords"][0]
    return {
        **row,
        "chosen": [{"role": "assistant", "content": row["text"]}],
        "rejected": [{"role": "assistant", "content": row["text"].replace(keyword, other, 1)}],
    }


def dpo_trainer(tmp_path, model, processor, rows, peft_config=None, ref_model=None, **overrides):
    return AudioDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=AudioDPOConfig(output_dir=str(tmp_path / "out"), **(DPO_DEFAULTS | overrides)),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        peft_config=peft_config,
    )


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry and "train_runtime" not in entry]


def decoder_lora(model):
    targets = {"phi4_multimodal": r"model\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)"}
    default = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets.get(model.config.model_type, default))


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["ipo"], ["sigmoid", "sft"]], ids=str)
def test_text_only_rows_give_stock_trl_losses(tiny_phi4mm_dir, tmp_path, loss_type):
    """A dataset without audio goes through TRL's own text path: with the same seed, the same losses as DPOTrainer."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Repeat: {META[i]['text']}"}],
            "chosen": [{"role": "assistant", "content": META[i]["text"]}],
            "rejected": [{"role": "assistant", "content": META[i + 1]["text"]}],
        }
        for i in range(4)
    ]
    runs = {}
    for name, trainer_class, config_class in [
        ("trl", DPOTrainer, DPOConfig),
        ("ours", AudioDPOTrainer, AudioDPOConfig),
    ]:
        model, processor = load_tiny(tiny_phi4mm_dir)
        trainer = trainer_class(
            model=model,
            args=config_class(output_dir=str(tmp_path / name), loss_type=loss_type, **DPO_DEFAULTS),
            train_dataset=Dataset.from_list(rows),
            processing_class=processor.tokenizer,
        )
        trainer.train()
        runs[name] = trainer
    for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
        ours, trl = logged(runs["ours"], key), logged(runs["trl"], key)
        assert len(ours) == 3 and ours == pytest.approx(trl, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reuse", [True, False], ids=["embeddings_reused", "features_every_pass"])
def test_first_step_logps_are_those_of_each_rows_own_clip(request, tmp_path, family, reuse):
    """The first step's logged `logps/chosen` and `logps/rejected` (before any update) equal the mean over the batch
    of independent, unpadded forwards of (prompt with the row's own clip + answer + end of turn); with another clip,
    they differ."""
    model, processor = load_tiny(request.getfixturevalue(family))
    freeze_audio_path(model)
    # Phi-4-MM's encoder lets padding frames leak into a clip's embedding: its two rows share one clip (and differ in
    # their instruction, so in length, which exercises the padding)
    same_clip = model.config.model_type == "phi4_multimodal"
    rows = [pair_row(0), pair_row(3, "Write down every word spoken in this recording.", 0 if same_clip else None)]
    trainer = dpo_trainer(tmp_path, model, processor, rows, per_device_train_batch_size=2, max_steps=1,
                          reuse_audio_embeddings=reuse)  # fmt: skip
    sampling_rate = processor_sampling_rate(processor)
    model.eval()
    expected, other_clip = {"chosen": [], "rejected": []}, load_audio(audio_row(9)["audio"], sampling_rate)
    for row in rows:
        clip = load_audio(row["audio"], sampling_rate)
        for side in expected:
            answer = row[side][0]["content"] + end_of_turn(processor)
            own = independent_logp(model, processor, row["prompt"], clip, answer)
            other = independent_logp(model, processor, row["prompt"], other_clip, answer)
            assert abs(own - other) > 1e-3
            expected[side].append(own)
    model.train()
    trainer.train()
    for side in expected:
        assert logged(trainer, f"logps/{side}")[0] == pytest.approx(sum(expected[side]) / 2, rel=1e-5, abs=1e-4)


def independent_logp(model, processor, prompt, clip, answer):
    text = render_prompts(processor, {"prompt": [prompt], "audio": [clip]})[0]
    single = processor(text=[text], audio=[clip], return_tensors="pt")
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt").input_ids[0]
    input_ids = torch.cat([single.pop("input_ids")[0], answer_ids])[None]
    single.pop("attention_mask")
    with torch.no_grad():
        logits = model(input_ids=input_ids, **single).logits[0, -len(answer_ids) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, answer_ids[:, None]).sum().item()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("separate_reference", [False, True], ids=["peft_reference", "ref_model"])
def test_each_clip_is_encoded_once_per_step(request, tmp_path, family, separate_reference):
    """3 rows a step, 2 steps: the policy's encoder sees each clip once a step (both sides and, with a PEFT adapter,
    the reference); a separate reference model reads its own once."""
    tiny_dir = request.getfixturevalue(family)
    model, processor = load_tiny(tiny_dir)
    freeze_audio_path(model)
    ref_model = load_tiny(tiny_dir)[0] if separate_reference else None
    rows = [pair_row(i) for i in range(6)]
    trainer = dpo_trainer(
        tmp_path, model, processor, rows, peft_config=None if separate_reference else decoder_lora(model),
        ref_model=ref_model, per_device_train_batch_size=3, max_steps=2,
    )  # fmt: skip
    counts = {}
    for name, owner in (("policy", model), ("reference", ref_model)):
        if owner is not None:
            encoder = owner.get_submodule(AUDIO_ENCODER[owner.config.model_type])
            counts[name] = []
            hook = lambda module, args, kwargs, rows=counts[name]: rows.append(len(args[0]))  # noqa: E731
            encoder.register_forward_pre_hook(hook, with_kwargs=True)
    trainer.train()
    assert sum(counts["policy"]) == 6
    if separate_reference:
        assert sum(counts["reference"]) == 6
    assert all(loss == loss for loss in logged(trainer, "loss"))


def test_bad_audio_is_skipped_and_counted(tiny_qwen2_audio_dir, tmp_path):
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    rows = [pair_row(0), {**pair_row(1), "id": "broken", "audio": str(tmp_path / "missing.wav")}]
    trainer = dpo_trainer(tmp_path, model, processor, rows * 2, per_device_train_batch_size=2, max_steps=2)
    trainer.train()
    assert logged(trainer, "data/skipped/audio_missing")[-1] >= 1
    assert all(loss == loss for loss in logged(trainer, "loss"))


def test_a_few_dozen_steps_raise_the_chosen_over_rejected_margin(tiny_qwen2_audio_dir, tmp_path):
    """4 rows, 24 steps of 2 rows at lr 1e-3 (full fine-tuning of the decoder): the implicit reward margin starts at 0
    (the policy is the reference) and is positive on each of the last 4 steps, above 0.5 on average (measured: 0.88).
    Without learning it would stay 0."""
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    freeze_audio_path(model)
    trainer = dpo_trainer(tmp_path, model, processor, [pair_row(i) for i in range(4)], max_steps=24)
    trainer.train()
    margins = logged(trainer, "rewards/margins")
    assert margins[0] == pytest.approx(0.0, abs=1e-6)
    assert all(m > 0 for m in margins[-4:]) and sum(margins[-4:]) / 4 > 0.5, margins


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": ["hinge"]},
        {"loss_type": ["ipo"]},
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
        {"loss_type": ["apo_zero"]},
        {"ld_alpha": 0.5},
        {"precompute_ref_log_probs": True},
    ],
    ids=str,
)
def test_trl_dpo_options_train_with_audio(tiny_qwen2_audio_dir, tmp_path, options):
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    freeze_audio_path(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = dpo_trainer(tmp_path, model, processor, [pair_row(i) for i in range(4)], max_steps=2, **options)
    trainer.train()
    assert all(loss == loss for loss in logged(trainer, "loss"))
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not unchanged
