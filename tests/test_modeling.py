"""Model loading (`trl_audio.modeling.init_model`): Phi-4-MM's speech LoRA merged or checked, other families through
the Auto classes."""

import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from trl_audio.modeling import freeze_audio_path, init_model
from trl_audio.testing import load_tiny


CLIP = Path(__file__).resolve().parents[1] / "examples/data/speech_sample/audio/ss_0001.flac"


def speech_inputs(processor):
    clip, _ = sf.read(CLIP, dtype="float32")
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], audio=[clip], return_tensors="pt")


def logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_init_model_merged_speech_lora_matches_the_active_adapter(tiny_phi4mm_dir):
    merged, processor = init_model(str(tiny_phi4mm_dir), speech_lora="merge", dtype="float32")
    active, _ = init_model(str(tiny_phi4mm_dir), speech_lora="train", dtype="float32")
    off, _ = init_model(str(tiny_phi4mm_dir), speech_lora="off", dtype="float32")
    assert isinstance(active, PeftModel) and not isinstance(merged, PeftModel)
    assert all(p.requires_grad for p in merged.parameters())  # as any freshly loaded model, ready for full tuning
    assert all(p.requires_grad for n, p in active.named_parameters() if ".speech." in n)
    inputs = speech_inputs(processor)
    torch.testing.assert_close(logits(merged, inputs), logits(active, inputs), atol=1e-5, rtol=1e-5)
    assert (logits(off, inputs) - logits(merged, inputs)).abs().max() > 1e-3


def test_init_model_reads_the_hub_adapter_layout_without_peft_prefix(tiny_phi4mm_dir, tmp_path):
    """transformers' Phi-4-MM conversion script saves adapter keys without PEFT's `base_model.model.` prefix."""
    hub_copy = tmp_path / "hub_layout"
    shutil.copytree(tiny_phi4mm_dir, hub_copy)
    adapter_file = hub_copy / "speech-lora/adapter_model.safetensors"
    weights = load_file(adapter_file)
    assert all(key.startswith("base_model.model.") for key in weights)
    save_file({key.removeprefix("base_model.model."): value for key, value in weights.items()}, adapter_file)

    merged, processor = init_model(str(tiny_phi4mm_dir), speech_lora="merge", dtype="float32")
    from_hub_layout, _ = init_model(str(hub_copy), speech_lora="merge", dtype="float32")
    inputs = speech_inputs(processor)
    torch.testing.assert_close(logits(from_hub_layout, inputs), logits(merged, inputs), atol=1e-6, rtol=1e-6)


def test_init_model_rejects_an_adapter_that_does_not_fit(tiny_phi4mm_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_phi4mm_dir, broken)
    adapter_file = broken / "speech-lora/adapter_model.safetensors"
    weights = load_file(adapter_file)
    save_file({key.replace("layers.", "blocks."): value for key, value in weights.items()}, adapter_file)
    with pytest.raises(ValueError, match=r"speech adapter in .*broken/speech-lora does not fit"):
        init_model(str(broken), speech_lora="merge")
    with pytest.raises(ValueError, match="speech_lora must be one of"):
        init_model(str(broken), speech_lora="keep")


def test_init_model_loads_other_audio_llms_through_the_auto_classes(tiny_qwen2_audio_dir):
    model, processor = init_model(str(tiny_qwen2_audio_dir), speech_lora="off", dtype="float32")
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert model.dtype == torch.float32 and processor.chat_template


@pytest.mark.parametrize("family", ["tiny_phi4mm_dir", "tiny_qwen2_audio_dir", "tiny_glm_asr_dir"])
def test_freeze_audio_path_leaves_the_text_decoder_trainable(family, request):
    model, processor = load_tiny(request.getfixturevalue(family))
    inputs = speech_inputs(processor)
    total = sum(p.numel() for p in model.parameters())
    frozen = freeze_audio_path(model)
    assert 0 < frozen < total
    assert frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # A backward through audio + text reaches every trainable parameter but those of Phi-4-MM's unused image path.
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert grads and grads <= trainable
    assert all("image_embed" in name for name in trainable - grads)
    assert freeze_audio_path(model) == 0  # already frozen


def test_freeze_audio_path_names_an_unknown_family(tiny_phi4mm_dir):
    model, _ = load_tiny(tiny_phi4mm_dir)
    model.config.model_type = "new_audio_llm"
    with pytest.raises(ValueError, match="new_audio_llm.*AUDIO_PATH_MODULES"):
        freeze_audio_path(model)


def test_a_copy_of_a_model_trl_patched_runs_its_own_weights_once_unpatched(tiny_qwen2_audio_dir):
    """TRL's fused log-prob head is a forward bound to the instance: a deep copy (a reference made from a model that
    went through DPO or GRPO) runs the original's weights. `without_fused_lm_head` gives the class's forward back."""
    import copy

    from trl.trainer.utils import add_fused_lm_head

    from trl_audio.modeling import without_fused_lm_head

    model, processor = load_tiny(tiny_qwen2_audio_dir)
    input_ids = torch.tensor([processor.tokenizer("Ada Lovelace").input_ids])

    def copy_changed_then_run(original):
        duplicate = copy.deepcopy(original)
        with torch.no_grad():
            duplicate.get_output_embeddings().weight.mul_(2.0)
            return original(input_ids=input_ids).logits, duplicate(input_ids=input_ids).logits

    add_fused_lm_head(model)
    original, duplicate = copy_changed_then_run(model)
    torch.testing.assert_close(original, duplicate)  # the bug: the copy ran the original's weights
    original, duplicate = copy_changed_then_run(without_fused_lm_head(model))
    assert (original - duplicate).abs().max() > 1e-3
