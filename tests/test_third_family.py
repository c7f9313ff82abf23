"""The third model family, GLM-ASR (`trl_audio.testing.build_tiny_glm_asr`): it loads through the Auto classes, hears
the audio, generates, trains and rebuilds identically from the same seed. The trainer's own tests run on it through
`FAMILIES` in tests/test_trainer.py."""

from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoProcessor,
    GlmAsrForConditionalGeneration,
    GlmAsrProcessor,
    WhisperFeatureExtractor,
)

from trl_audio.testing import build_tiny_glm_asr, load_tiny


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
CLIP_LONG, CLIP_SHORT = SAMPLE_DIR / "audio/ss_0001.flac", SAMPLE_DIR / "audio/ss_0003.flac"  # 5.8 s, 3.8 s
MESSAGES = [
    {"role": "system", "content": "Transcribe."},
    {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]},
]


def read_clip(path):
    audio, sampling_rate = sf.read(path, dtype="float32")
    assert sampling_rate == 16000
    return audio


def prompt_inputs(processor, clips, **kwargs):
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return processor(text=[text] * len(clips), audio=clips, sampling_rate=16000, padding_side="left", **kwargs)


def test_loads_with_auto_classes(tiny_glm_asr_dir):
    model, processor = load_tiny(tiny_glm_asr_dir)
    assert type(model) is GlmAsrForConditionalGeneration and model.dtype == torch.float32
    assert type(processor) is GlmAsrProcessor
    assert type(processor.feature_extractor) is WhisperFeatureExtractor
    assert processor.feature_extractor.feature_size == model.config.audio_config.num_mel_bins == 128
    assert model.config.audio_token_id == processor.audio_token_id
    assert processor.audio_token_id == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    # GlmAsrProcessor keeps its chat template on load (unlike Phi-4-MM's), so init_model needs no workaround for it.
    assert AutoProcessor.from_pretrained(tiny_glm_asr_dir).chat_template is not None
    assert type(AutoModelForMultimodalLM.from_pretrained(tiny_glm_asr_dir)) is GlmAsrForConditionalGeneration
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_pretrained(tiny_glm_asr_dir)

    tokenizer = processor.tokenizer
    assert 300 <= len(tokenizer) <= 1000
    stop_ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    assert sorted(model.generation_config.eos_token_id) == sorted(stop_ids)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == stop_ids[0]
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as GlmAsrConfig defaults


def test_chat_template(tiny_glm_asr_dir):
    _, processor = load_tiny(tiny_glm_asr_dir)
    assert processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == (
        "<|system|>\nTranscribe.<|user|>\n<|begin_of_audio|><|pad|><|end_of_audio|>\nWhat is said?<|assistant|>\n"
    )
    # the trainer's normalized audio parts carry an `audio` key; the template renders them the same
    audio_part = [{"role": "user", "content": [{"type": "audio", "audio": True}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(audio_part, tokenize=False) == (
        "<|user|>\n<|begin_of_audio|><|pad|><|end_of_audio|>\nHi"
    )


def test_processor_expands_each_clip_to_its_audio_tokens(tiny_glm_asr_dir):
    _, processor = load_tiny(tiny_glm_asr_dir)
    batch = prompt_inputs(processor, [read_clip(CLIP_LONG), read_clip(CLIP_SHORT)])
    assert set(batch) == {"input_ids", "attention_mask", "input_features", "input_features_mask"}
    assert batch["input_features"].shape == (2, 128, 3000)  # one 30 s window per clip
    frames = batch["input_features_mask"].sum(-1)
    assert frames.tolist() == [-(-len(read_clip(path)) // 160) for path in (CLIP_LONG, CLIP_SHORT)]  # 10 ms hops
    # a stride-2 conv, then 4 encoder frames per audio token
    n_audio_tokens = (batch["input_ids"] == processor.audio_token_id).sum(1)
    assert n_audio_tokens.tolist() == ((((frames - 1) // 2 + 1) - 4) // 4 + 1).tolist()
    assert n_audio_tokens[0] > n_audio_tokens[1] > 0
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][1, 0]


def test_generates_from_a_clip(tiny_glm_asr_dir):
    model, processor = load_tiny(tiny_glm_asr_dir)
    inputs = prompt_inputs(processor, [read_clip(CLIP_LONG), read_clip(CLIP_SHORT)])
    prompt_length = inputs["input_ids"].shape[1]
    first = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    again = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert prompt_length < first.shape[1] <= prompt_length + 8
    assert torch.equal(first, again)
    assert all(isinstance(text, str) for text in processor.batch_decode(first[:, prompt_length:]))


def test_backward_reaches_decoder_projector_and_encoder(tiny_glm_asr_dir):
    model, processor = load_tiny(tiny_glm_asr_dir)
    model.train()
    inputs = prompt_inputs(processor, [read_clip(CLIP_SHORT)])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.audio_token_id, -100)
    model(**inputs, labels=labels).loss.backward()
    for prefix in ("model.language_model.layers.", "model.multi_modal_projector.", "model.audio_tower."):
        grads = [
            p.grad.norm() for name, p in model.named_parameters() if name.startswith(prefix) and p.grad is not None
        ]
        assert grads and torch.stack(grads).sum() > 0, prefix


def test_different_clips_give_different_logits(tiny_glm_asr_dir):
    model, processor = load_tiny(tiny_glm_asr_dir)
    short = read_clip(CLIP_SHORT)
    other = read_clip(CLIP_LONG)[: len(short)]  # same length, so the same prompt tokens
    inputs_a, inputs_b = prompt_inputs(processor, [short]), prompt_inputs(processor, [other])
    assert torch.equal(inputs_a["input_ids"], inputs_b["input_ids"])
    with torch.no_grad():
        logits_a, logits_b = model(**inputs_a).logits[0, -1], model(**inputs_b).logits[0, -1]
        again = model(**prompt_inputs(processor, [short])).logits[0, -1]
    assert torch.equal(logits_a, again)
    assert (logits_a - logits_b).abs().max() > 1e-3


def test_encoder_sees_padding_unless_clips_keep_their_30s_windows(tiny_glm_asr_dir):
    """GLM-ASR's encoder does not mask padding frames. The processor pads each clip to a 30 s window (as GLM-ASR's
    reference code does), so a clip's embeddings do not depend on its batch; but a `padding=True` passed to the
    processor as a whole also reaches the feature extractor, which then pads to the batch's longest clip: the audio
    embeddings change with the batch, and the model fails to reshape the encoder output when the longest clip's
    encoder frames are not a multiple of 4. `text_kwargs={"padding": True}` pads only the text. If the `padding=True`
    case fails, GlmAsrProcessor now keeps the 30 s windows and the caveat is gone."""
    model, processor = load_tiny(tiny_glm_asr_dir)
    clips, short = [read_clip(CLIP_LONG), read_clip(CLIP_SHORT)], read_clip(CLIP_SHORT)
    with torch.no_grad():
        for kwargs, batch_invariant in [({"text_kwargs": {"padding": True}}, True), ({"padding": True}, False)]:
            batch, alone = prompt_inputs(processor, clips, **kwargs), prompt_inputs(processor, [short], **kwargs)
            assert (batch["input_features"].shape[-1] == 3000) == batch_invariant
            difference = (model(**batch).logits[1, -1] - model(**alone).logits[0, -1]).abs().max()
            assert (difference < 1e-5) == batch_invariant, kwargs


def test_same_seed_same_files_other_seed_other_weights(tiny_glm_asr_dir, tmp_path):
    rng_state = torch.get_rng_state()
    same = build_tiny_glm_asr(tmp_path / "same", seed=0)
    other = build_tiny_glm_asr(tmp_path / "other", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state), "building must not move the caller's RNG"
    for name in ["model.safetensors", "tokenizer.json", "config.json", "processor_config.json"]:
        assert (same / name).read_bytes() == (tiny_glm_asr_dir / name).read_bytes(), name

    reference, different = load_file(tiny_glm_asr_dir / "model.safetensors"), load_file(other / "model.safetensors")
    assert reference.keys() == different.keys()
    assert all(tensor.dtype == torch.float32 for tensor in reference.values())
    random_init = [key for key, tensor in reference.items() if tensor.unique().numel() > 2]  # not 0/1 constants
    assert len(random_init) > 10
    for key in random_init:
        assert not torch.equal(reference[key], different[key]), key


def test_overrides_and_sizes(tmp_path):
    model, _ = load_tiny(
        build_tiny_glm_asr(tmp_path / "deeper", num_hidden_layers=3, audio_config={"num_hidden_layers": 2})
    )
    assert model.config.text_config.num_hidden_layers == len(model.model.language_model.layers) == 3
    assert model.config.audio_config.num_hidden_layers == len(model.model.audio_tower.layers) == 2
    model, _ = load_tiny(build_tiny_glm_asr(tmp_path / "small", size="small"))
    assert 1_000_000 < model.num_parameters() < 10_000_000
    with pytest.raises(ValueError, match="size='huge'"):
        build_tiny_glm_asr(tmp_path / "huge", size="huge")
