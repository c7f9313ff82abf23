"""Quantized loading (`trl_audio.modeling.quantization_load_kwargs`, `init_model` with a `quantization_config`): QLoRA
in 4 and 8 bits with bitsandbytes on the CPU, a LoRA on the text decoder trained on top, and the quantized model with
the adapter disabled as the trainer's reference."""

import json
import shutil
import sys
from types import SimpleNamespace

import accelerate
import pytest
import torch
from datasets import Dataset
from helpers import audio_row, audio_rows, make_config, token_sum_reward
from peft import LoraConfig

from trl_audio import AudioOnlineDPOTrainer
from trl_audio.modeling import decoder_lora_targets, init_model, quantization_load_kwargs


def quantized(bits):
    """`quantization_load_kwargs` for `bits` bits: on the CPU in the tests."""
    return quantization_load_kwargs(**{f"load_in_{bits}bit": True})


def load_quantized(tiny_dir, bits):
    """The tiny checkpoint, its speech LoRA merged, in `bits` bits."""
    return init_model(str(tiny_dir), speech_lora="merge", dtype="float32", **quantized(bits))


def base_state(model):
    """`model`'s weights under the base model's names: a PeftModel's base layers as well as a plain model, the
    quantized weights as their raw data with bitsandbytes' quantization state (scales, SCB) alongside."""
    return {
        name.removeprefix("base_model.model.").replace(".base_layer", ""): value.detach().clone()
        for name, value in model.state_dict().items()
        if "lora_" not in name
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_only_the_lora_and_its_reference_is_the_quantized_base(tiny_phi4mm_dir, tmp_path, bits):
    model, processor = load_quantized(tiny_phi4mm_dir, bits)
    assert model.is_loaded_in_4bit if bits == 4 else model.is_loaded_in_8bit
    before = base_state(model)
    trainer = AudioOnlineDPOTrainer(
        model=model,
        reward_funcs=token_sum_reward,
        args=make_config(tmp_path, max_steps=2, num_generations=2),
        train_dataset=Dataset.from_list(audio_rows(4)),
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=decoder_lora_targets(model.config.model_type)),
    )
    assert trainer.ref_model is None  # the reference is the policy with its adapter disabled, no second copy
    lora = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}
    trainer.train()

    tied = [entry["pairs/tied_fraction"] for entry in trainer.state.log_history if "loss" in entry]
    assert tied == [0.0, 0.0]  # two steps logged, each with a preference, so each moved the LoRA
    assert lora and {name for name, p in trainer.model.named_parameters() if p.requires_grad} == set(lora)
    for name, parameter in trainer.model.named_parameters():
        if name in lora:
            assert not torch.equal(parameter, lora[name]), f"LoRA parameter {name} did not change"
    after = base_state(trainer.model)
    assert after.keys() == before.keys()
    for name, value in after.items():
        assert torch.equal(value, before[name]), f"{name} ({value.dtype}) changed"

    # The trainer's reference pass against the quantized base loaded again and run on its own.
    row, completion = audio_row(0), torch.tensor([processor.tokenizer("Ada Lovelace").input_ids])
    kept, prompt_inputs = trainer._prepare_prompt_inputs(trainer.data_collator([row]))
    batch = trainer._prompt_batch(prompt_inputs, kept["audio"])
    trainer.model.eval()
    with torch.no_grad():
        policy = trainer._forward(trainer.model, batch, [0], completion, torch.ones_like(completion))
        with trainer.model.disable_adapter():
            reference = trainer._forward(trainer.model, batch, [0], completion, torch.ones_like(completion))
    base, _ = load_quantized(tiny_phi4mm_dir, bits)
    assert all(torch.equal(value, before[name]) for name, value in base_state(base).items())  # same quantized weights
    text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], audio=[kept["audio"][0]], return_tensors="pt")
    input_ids = torch.cat([inputs.pop("input_ids"), completion], dim=1)
    inputs.pop("attention_mask")
    with torch.no_grad():
        logits = base.eval()(input_ids=input_ids, **inputs).logits[:, -completion.size(1) - 1 : -1]
    expected = logits.log_softmax(-1).gather(-1, completion[..., None])[..., 0]
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=0)
    assert (policy - reference).abs().max() > 1e-4  # the LoRA does change the policy


@pytest.mark.parametrize("bits", [4, 8])
def test_the_speech_lora_is_merged_before_quantizing(tiny_phi4mm_dir, tmp_path, bits):
    """Merged into quantized weights, PEFT would round them twice; the merged weights are quantized once instead,
    as a merged checkpoint would be; the model keeps its checkpoint's name and generation config."""
    checkpoint = shutil.copytree(tiny_phi4mm_dir, tmp_path / "checkpoint")
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    (checkpoint / "generation_config.json").write_text(json.dumps(generation | {"max_new_tokens": 7}))
    merged, _ = init_model(str(checkpoint), speech_lora="merge", dtype="float32")
    merged.save_pretrained(tmp_path / "merged")
    expected = base_state(type(merged).from_pretrained(tmp_path / "merged", dtype=torch.float32, **quantized(bits)))

    model, _ = load_quantized(checkpoint, bits)
    assert model.generation_config.max_new_tokens == 7 and model.name_or_path == str(checkpoint)
    loaded = base_state(model)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(value, expected[name]) for name, value in loaded.items())


def test_a_quantized_speech_lora_to_train_is_prepared_for_kbit_training(tiny_phi4mm_dir):
    model, _ = init_model(str(tiny_phi4mm_dir), speech_lora="train", dtype="bfloat16", **quantized(4))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".speech." in name for name in trainable)
    unquantized = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    assert unquantized == {torch.float32}  # layer norms, embeddings, the audio encoder: upcast from bfloat16


def test_quantization_load_kwargs_pick_the_device_by_what_the_machine_has(monkeypatch):
    assert quantization_load_kwargs() == {"quantization_config": None, "device_map": None}
    with pytest.raises(ValueError, match="one of load_in_4bit and load_in_8bit"):
        quantization_load_kwargs(load_in_4bit=True, load_in_8bit=True)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = quantization_load_kwargs(load_in_4bit=True, dtype="bfloat16")
    config = cpu["quantization_config"]
    assert cpu["device_map"] == {"": "cpu"} and config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.float32
    assert quantization_load_kwargs(load_in_8bit=True)["quantization_config"].load_in_8bit

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(local_process_index=3))  # 4th on a node
    # "auto" (the checkpoint's dtype) computes in bfloat16 where the GPU has it, in float16 here
    for dtype, compute in [("auto", torch.float16), ("bfloat16", torch.bfloat16), (torch.float32, torch.float32)]:
        gpu = quantization_load_kwargs(load_in_4bit=True, dtype=dtype)
        assert gpu["device_map"] == {"": 3} and gpu["quantization_config"].bnb_4bit_compute_dtype == compute


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    for flag in ("load_in_4bit", "load_in_8bit"):
        with pytest.raises(ImportError, match=r'not installed: pip install "trl-audio\[quantization\]"'):
            quantization_load_kwargs(**{flag: True})
