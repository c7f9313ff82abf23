"""Tests of `trl_audio.testing`: the tiny Phi-4-multimodal, Qwen2-Audio and GLM-ASR checkpoints load with the native
transformers classes, hear the audio, generate, train, and rebuild identically from the same seed. Tests taking
`family` run on each entry of `FAMILIES`; the others check what differs by family."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoProcessor,
    GlmAsrForConditionalGeneration,
    GlmAsrProcessor,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalProcessor,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

import trl_audio.testing
from trl_audio.testing import build_tiny_glm_asr, build_tiny_phi4mm, build_tiny_qwen2_audio, load_tiny


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
CLIP_LONG, CLIP_SHORT = SAMPLE_DIR / "audio/ss_0001.flac", SAMPLE_DIR / "audio/ss_0003.flac"  # 5.8 s, 3.8 s

FAMILIES = {
    "phi4mm": {
        "fixture": "tiny_phi4mm_dir",
        "build": build_tiny_phi4mm,
        "model_class": Phi4MultimodalForCausalLM,
        "processor_class": Phi4MultimodalProcessor,
        "audio_processor": ("audio_processor", Phi4MultimodalFeatureExtractor),
        "processor_keys": {
            "input_ids",
            "attention_mask",
            "audio_input_features",
            "audio_embed_sizes",
            "audio_attention_mask",
        },
        "trained_prefixes": ["model.layers.", "model.embed_tokens_extend.audio_embed.encoder."],
        "stop_tokens": ["<|end|>", "<|endoftext|>"],
        "audio_encoder": "model.embed_tokens_extend.audio_embed.encoder",
        "encoder_frames_per_audio_token": 1,
    },
    "qwen2_audio": {
        "fixture": "tiny_qwen2_audio_dir",
        "build": build_tiny_qwen2_audio,
        "model_class": Qwen2AudioForConditionalGeneration,
        "processor_class": Qwen2AudioProcessor,
        "audio_processor": ("feature_extractor", WhisperFeatureExtractor),
        "processor_keys": {"input_ids", "attention_mask", "input_features", "feature_attention_mask"},
        "trained_prefixes": ["model.language_model.layers.", "model.audio_tower."],
        "stop_tokens": ["<|endoftext|>", "<|im_end|>"],
        "audio_encoder": "model.audio_tower",
        "encoder_frames_per_audio_token": 1,
    },
    "glm_asr": {
        "fixture": "tiny_glm_asr_dir",
        "build": build_tiny_glm_asr,
        "model_class": GlmAsrForConditionalGeneration,
        "processor_class": GlmAsrProcessor,
        "audio_processor": ("feature_extractor", WhisperFeatureExtractor),
        "processor_keys": {"input_ids", "attention_mask", "input_features", "input_features_mask"},
        "trained_prefixes": ["model.language_model.layers.", "model.multi_modal_projector.", "model.audio_tower."],
        "stop_tokens": ["<|endoftext|>", "<|user|>", "<|observation|>"],
        "audio_encoder": "model.audio_tower",
        "encoder_frames_per_audio_token": 4,  # the projector merges 4 encoder frames into one audio token
    },
}
MESSAGES = [
    {"role": "system", "content": "Transcribe."},
    {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is said?"}]},
]


@pytest.fixture(params=list(FAMILIES))
def family(request):
    """(spec, checkpoint dir) for each model family."""
    spec = FAMILIES[request.param]
    return spec, request.getfixturevalue(spec["fixture"])


def read_clip(path):
    audio, sampling_rate = sf.read(path, dtype="float32")
    assert sampling_rate == 16000
    return audio


def prompt_inputs(processor, clips, **kwargs):
    """One prompt per clip (GLM-ASR's processor takes exactly one clip per text), padding only the text unless told a
    `padding`, as `trl_audio.prompt_inputs` does: a `padding=True` for the whole call also reaches the audio feature
    extractor, which GLM-ASR's 30 s windows must not see (`test_glm_asr_encoder_sees_padding_unless_...`)."""
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    if "padding" not in kwargs:
        kwargs = {"text_kwargs": {"padding": True}} | kwargs
    return processor(text=[text] * len(clips), audio=clips, sampling_rate=16000, return_tensors="pt", **kwargs)


def test_loads_with_native_classes(family):
    spec, save_dir = family
    model, processor = load_tiny(save_dir)
    assert type(model) is spec["model_class"]
    assert type(processor) is spec["processor_class"]
    attribute, audio_processor_class = spec["audio_processor"]
    assert type(getattr(processor, attribute)) is audio_processor_class
    assert type(AutoProcessor.from_pretrained(save_dir)) is spec["processor_class"]
    assert model.dtype == torch.float32
    tokenizer = processor.tokenizer
    assert 300 <= len(tokenizer) <= 1000
    assert processor.audio_token_id == tokenizer.convert_tokens_to_ids(processor.audio_token)
    stop_ids = tokenizer.convert_tokens_to_ids(spec["stop_tokens"])
    assert sorted(model.generation_config.eos_token_id) == sorted(stop_ids)
    assert (
        model.generation_config.pad_token_id
        == tokenizer.pad_token_id
        == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    )


def test_phi4mm_auto_classes(tiny_phi4mm_dir):
    assert type(AutoModelForCausalLM.from_pretrained(tiny_phi4mm_dir)) is Phi4MultimodalForCausalLM
    # transformers 5.24 drops Phi4MultimodalProcessor's chat template on load (its __init__ does not name the
    # argument); load_tiny copies the tokenizer's. If this fails, the workaround can go.
    assert AutoProcessor.from_pretrained(tiny_phi4mm_dir).chat_template is None
    model, processor = load_tiny(tiny_phi4mm_dir)
    assert model.config.audio_config.audio_token_id == processor.audio_token_id
    assert model.config.vision_config.image_token_id == processor.image_token_id
    assert model.config.audio_config.input_size == processor.audio_processor.feature_size == 80


def test_qwen2_audio_auto_classes(tiny_qwen2_audio_dir):
    # transformers maps qwen2_audio to AutoModelForMultimodalLM (what load_tiny uses), not to AutoModelForCausalLM.
    model = AutoModelForMultimodalLM.from_pretrained(tiny_qwen2_audio_dir)
    assert type(model) is Qwen2AudioForConditionalGeneration
    processor = AutoProcessor.from_pretrained(tiny_qwen2_audio_dir)
    assert model.config.audio_token_id == processor.audio_token_id
    assert model.config.audio_config.num_mel_bins == processor.feature_extractor.feature_size == 80
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_pretrained(tiny_qwen2_audio_dir)


def test_glm_asr_auto_classes(tiny_glm_asr_dir):
    model, processor = load_tiny(tiny_glm_asr_dir)
    assert processor.feature_extractor.feature_size == model.config.audio_config.num_mel_bins == 128
    assert model.config.audio_token_id == processor.audio_token_id
    # GlmAsrProcessor keeps its chat template on load (unlike Phi-4-MM's), so init_model needs no workaround for it.
    assert AutoProcessor.from_pretrained(tiny_glm_asr_dir).chat_template is not None
    assert type(AutoModelForMultimodalLM.from_pretrained(tiny_glm_asr_dir)) is GlmAsrForConditionalGeneration
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_pretrained(tiny_glm_asr_dir)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as GlmAsrConfig defaults


def test_chat_templates(tiny_phi4mm_dir, tiny_qwen2_audio_dir, tiny_glm_asr_dir):
    _, phi = load_tiny(tiny_phi4mm_dir)
    assert phi.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == (
        "<|system|>Transcribe.<|end|><|user|><|audio|>What is said?<|end|><|assistant|>"
    )
    assert phi.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == (
        "<|user|>Hi<|end|><|endoftext|>"
    )
    _, qwen = load_tiny(tiny_qwen2_audio_dir)
    assert qwen.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nTranscribe.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is said?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert qwen.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    _, glm = load_tiny(tiny_glm_asr_dir)
    assert glm.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == (
        "<|system|>\nTranscribe.<|user|>\n<|begin_of_audio|><|pad|><|end_of_audio|>\nWhat is said?<|assistant|>\n"
    )
    # the trainer's normalized audio parts carry an `audio` key; the template renders them the same
    audio_part = [{"role": "user", "content": [{"type": "audio", "audio": True}, {"type": "text", "text": "Hi"}]}]
    assert glm.apply_chat_template(audio_part, tokenize=False) == (
        "<|user|>\n<|begin_of_audio|><|pad|><|end_of_audio|>\nHi"
    )


def test_processor_batches_clips_with_left_padding(family):
    spec, save_dir = family
    _, processor = load_tiny(save_dir)
    batch = prompt_inputs(processor, [read_clip(CLIP_LONG), read_clip(CLIP_SHORT)], padding_side="left")
    assert set(batch) == spec["processor_keys"]
    n_audio_tokens = (batch["input_ids"] == processor.audio_token_id).sum(1)
    if "audio_embed_sizes" in batch:
        assert n_audio_tokens.tolist() == batch["audio_embed_sizes"].tolist()
    elif "feature_attention_mask" in batch:  # Qwen2-Audio: two stride-2 stages over the unpadded mel frames
        frames = batch["feature_attention_mask"].sum(-1)
        assert n_audio_tokens.tolist() == ((((frames - 1) // 2 + 1) - 2) // 2 + 1).tolist()
    else:  # GLM-ASR
        assert batch["input_features"].shape == (2, 128, 3000)  # one 30 s window per clip
        frames = batch["input_features_mask"].sum(-1)
        assert frames.tolist() == [-(-len(read_clip(path)) // 160) for path in (CLIP_LONG, CLIP_SHORT)]  # 10 ms hops
        # a stride-2 conv, then 4 encoder frames per audio token
        assert n_audio_tokens.tolist() == ((((frames - 1) // 2 + 1) - 4) // 4 + 1).tolist()
    assert n_audio_tokens[0] > n_audio_tokens[1] > 0
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][1, 0]


def test_left_padded_row_matches_unbatched(family):
    _, save_dir = family
    model, processor = load_tiny(save_dir)
    clip = read_clip(CLIP_SHORT)
    short_prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    long_prompt = processor.apply_chat_template(
        [{"role": "system", "content": "Transcribe the speech, word for word."}, *MESSAGES[1:]],
        add_generation_prompt=True,
        tokenize=False,
    )
    kwargs = {"sampling_rate": 16000, "return_tensors": "pt", "text_kwargs": {"padding": True}, "padding_side": "left"}
    batch = processor(text=[long_prompt, short_prompt], audio=[clip, clip], **kwargs)
    alone = processor(text=[short_prompt], audio=[clip], **kwargs)
    assert not batch["attention_mask"][1].all()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits[1, -1], model(**alone).logits[0, -1], rtol=1e-4, atol=1e-5)


def test_qwen2_audio_batched_clip_matches_unbatched(tiny_qwen2_audio_dir):
    # Whisper features are padded to 30 s whatever the batch, and the encoder masks the padding.
    model, processor = load_tiny(tiny_qwen2_audio_dir)
    short = read_clip(CLIP_SHORT)
    batch = prompt_inputs(processor, [read_clip(CLIP_LONG), short], padding_side="left")
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).logits[1, -1],
            model(**prompt_inputs(processor, [short])).logits[0, -1],
            rtol=1e-4,
            atol=1e-5,
        )


def test_phi4mm_audio_encoder_sees_padding(tiny_phi4mm_dir):
    """Phi-4-multimodal's conformer adds its boolean padding mask to the attention scores as 0/1 (as Microsoft's
    original code does) instead of masking, so a clip's audio embeddings depend on the longest clip of its batch.
    Log-probs of one completion must thus be compared within the same batching. If this fails, transformers now
    masks the padding and the caveat is gone."""
    model, processor = load_tiny(tiny_phi4mm_dir)
    short = read_clip(CLIP_SHORT)
    features = processor.audio_processor([read_clip(CLIP_LONG), short], sampling_rate=16000, return_tensors="pt")
    alone = processor.audio_processor([short], sampling_rate=16000, return_tensors="pt")
    n_frames, n_embeds = alone["audio_input_features"].shape[1], alone["audio_embed_sizes"][0]
    assert torch.equal(features["audio_input_features"][1, :n_frames], alone["audio_input_features"][0])
    encoder = model.model.embed_tokens_extend.audio_embed.encoder
    with torch.no_grad():
        batched = encoder(features["audio_input_features"], features["audio_attention_mask"])[1, :n_embeds]
        unbatched = encoder(alone["audio_input_features"], None)[0, :n_embeds]
    assert not torch.allclose(batched, unbatched, rtol=1e-4, atol=1e-5)


def test_glm_asr_encoder_sees_padding_unless_clips_keep_their_30s_windows(tiny_glm_asr_dir):
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
            batch = prompt_inputs(processor, clips, padding_side="left", **kwargs)
            alone = prompt_inputs(processor, [short], padding_side="left", **kwargs)
            assert (batch["input_features"].shape[-1] == 3000) == batch_invariant
            difference = (model(**batch).logits[1, -1] - model(**alone).logits[0, -1]).abs().max()
            assert (difference < 1e-5) == batch_invariant, kwargs


def test_generates_from_a_clip(family):
    _, save_dir = family
    model, processor = load_tiny(save_dir)
    inputs = prompt_inputs(processor, [read_clip(CLIP_LONG), read_clip(CLIP_SHORT)], padding_side="left")
    prompt_length = inputs["input_ids"].shape[1]
    first = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    again = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert prompt_length < first.shape[1] <= prompt_length + 8
    assert torch.equal(first, again)
    assert all(isinstance(text, str) for text in processor.batch_decode(first[:, prompt_length:]))


def test_backward_reaches_text_model_and_audio_encoder(family):
    spec, save_dir = family
    model, processor = load_tiny(save_dir)
    model.train()
    inputs = prompt_inputs(processor, [read_clip(CLIP_SHORT)])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.audio_token_id, -100)
    model(**inputs, labels=labels).loss.backward()

    for prefix in spec["trained_prefixes"]:  # the text model, the audio encoder (and GLM-ASR's projector)
        grads = [
            p.grad.norm() for name, p in model.named_parameters() if name.startswith(prefix) and p.grad is not None
        ]
        assert grads and torch.stack(grads).sum() > 0, prefix


def test_audio_reaches_the_model(family):
    _, save_dir = family
    model, processor = load_tiny(save_dir)
    clip = read_clip(CLIP_SHORT)
    other = read_clip(CLIP_LONG)[: len(clip)]  # same length, so the same prompt tokens
    speech = prompt_inputs(processor, [clip])
    with torch.no_grad():
        logits = model(**speech).logits[0, -1]
        assert torch.equal(logits, model(**prompt_inputs(processor, [clip])).logits[0, -1])
        for different_clip in (np.zeros_like(clip), other):
            different = prompt_inputs(processor, [different_clip])
            assert torch.equal(speech["input_ids"], different["input_ids"])
            assert (logits - model(**different).logits[0, -1]).abs().max() > 1e-3


def test_encoder_output_depends_on_the_clip(family):
    """The audio encoder hears: its output differs from clip to clip by much more than a deaf encoder's.

    Eight bundled clips, each cut to its first 3 s (so that every clip gives the same frames, and a deaf encoder the
    same output), go through the model; a hook reads the encoder's output as the model calls it (padding masks
    included). Spread = the standard deviation across clips of each output feature at each frame, averaged over
    features and frames, relative to the output's root mean square (a deaf encoder: 0; outputs as unlike as
    independent draws: about 1). Measured over seeds 0, 1 and 2, tiny and small:

    - the old init (every weight N(0, 0.02), Phi-4-MM's log-mels unnormalised): Phi-4-MM 0.05 to 0.13, deaf: its
      five-layer conv stem shrinks the signal below the final LayerNorm's epsilon (output RMS 0.002 to 0.004 for tiny);
      Qwen2-Audio 0.32 to 0.47 and GLM-ASR 0.26 to 0.59: their two convs shrink the signal too, but the LayerNorms
      scale it back, so they heard, if faintly next to Qwen2-Audio's position embeddings;
    - the variance-preserving init with normalised log-mels (`trl_audio.testing._init_front_end`): 0.52 to 0.75 for
      every family.

    The threshold, 0.3, is more than twice the deaf encoder's highest value and well under the hearing ones.
    """
    spec, save_dir = family
    model, processor = load_tiny(save_dir)
    outputs = []
    hook = model.get_submodule(spec["audio_encoder"]).register_forward_hook(
        lambda module, args, output: outputs.append(output if torch.is_tensor(output) else output.last_hidden_state)
    )
    clips = [read_clip(path)[: 3 * 16000] for path in sorted((SAMPLE_DIR / "audio").glob("*.flac"))[:8]]
    with torch.no_grad():
        for clip in clips:
            inputs = prompt_inputs(processor, [clip])
            model(**inputs)
    hook.remove()
    n_frames = int((inputs["input_ids"] == processor.audio_token_id).sum()) * spec["encoder_frames_per_audio_token"]
    frames = torch.stack([output[0, :n_frames] for output in outputs])  # (clips, frames, features)
    spread = frames.std(0).mean() / frames.pow(2).mean().sqrt()
    assert spread > 0.3, f"{spread:.3f}"


def test_speech_lora_loads_and_changes_logits(tiny_phi4mm_dir):
    adapter_dir = tiny_phi4mm_dir / "speech-lora"
    assert sorted(path.name for path in adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["lora_alpha"] / adapter_config["r"] == 640 / 320  # the hub adapter's ratio

    model, processor = load_tiny(tiny_phi4mm_dir)
    inputs = prompt_inputs(processor, [read_clip(CLIP_SHORT)])
    with torch.no_grad():
        base_logits = model(**inputs).logits
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    wrapped = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert all(
        ".model.layers." in name and "embed_tokens_extend" not in name
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A")
    )
    with torch.no_grad():
        lora_logits = peft_model(**inputs).logits
    assert (lora_logits - base_logits).abs().max() > 1e-3


def test_same_seed_same_files_other_seed_other_weights(family, tmp_path):
    spec, save_dir = family
    rng_state = torch.get_rng_state()
    same = spec["build"](tmp_path / "same", seed=0)
    other = spec["build"](tmp_path / "other", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state), "building must not move the caller's RNG"

    files = ["model.safetensors", "tokenizer.json", "config.json", "processor_config.json"]
    if (save_dir / "speech-lora").is_dir():
        files.append("speech-lora/adapter_model.safetensors")
    for name in files:
        assert (same / name).read_bytes() == (save_dir / name).read_bytes(), name

    reference, rebuilt, different = (load_file(d / "model.safetensors") for d in (save_dir, same, other))
    assert reference.keys() == rebuilt.keys() == different.keys()
    for key, tensor in reference.items():
        assert torch.equal(tensor, rebuilt[key]), key
        assert tensor.dtype == torch.float32, key
    # Phi-4-MM's input normalisation is fitted to the bundled speech, not drawn: the same for every seed.
    fitted = [key for key in reference if key.endswith(("global_mean", "global_invstd"))]
    for key in fitted:
        assert torch.equal(reference[key], different[key]), key
    random_init = [key for key, t in reference.items() if t.unique().numel() > 2 and key not in fitted]  # not 0/1
    assert len(random_init) > 10
    for key in random_init:
        assert not torch.equal(reference[key], different[key]), key
    assert (other / "model.safetensors").read_bytes() != (save_dir / "model.safetensors").read_bytes()


def test_overrides_and_sizes(tmp_path):
    phi = build_tiny_phi4mm(tmp_path / "phi", num_hidden_layers=3, audio_config={"num_blocks": 2})
    model, _ = load_tiny(phi)
    assert model.config.num_hidden_layers == len(model.model.layers) == 3
    assert model.config.audio_config.num_blocks == 2

    qwen = build_tiny_qwen2_audio(tmp_path / "qwen", num_hidden_layers=3, audio_config={"encoder_layers": 2})
    model, _ = load_tiny(qwen)
    assert model.config.text_config.num_hidden_layers == 3
    assert model.config.audio_config.encoder_layers == 2

    glm = build_tiny_glm_asr(tmp_path / "glm", num_hidden_layers=3, audio_config={"num_hidden_layers": 2})
    model, _ = load_tiny(glm)
    assert model.config.text_config.num_hidden_layers == len(model.model.language_model.layers) == 3
    assert model.config.audio_config.num_hidden_layers == len(model.model.audio_tower.layers) == 2

    for build in (build_tiny_phi4mm, build_tiny_qwen2_audio, build_tiny_glm_asr):
        model, _ = load_tiny(build(tmp_path / f"{build.__name__}_small", size="small"))
        assert 1_000_000 < model.num_parameters() < 10_000_000
    for build in (build_tiny_phi4mm, build_tiny_glm_asr):
        with pytest.raises(ValueError, match="size='huge'"):
            build(tmp_path / "huge", size="huge")


def test_tokenizer_corpus(tmp_path, monkeypatch):
    save_dir = build_tiny_qwen2_audio(tmp_path / "custom", corpus=["zebra quokka " * 20] * 5)
    tokenizer = AutoProcessor.from_pretrained(save_dir).tokenizer
    assert tokenizer.tokenize(" quokka") == ["Ġquokka"]

    missing = tmp_path / "no_such_dir/metadata.jsonl"
    monkeypatch.setattr(trl_audio.testing, "SPEECH_SAMPLE_METADATA", missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_tiny_phi4mm(tmp_path / "default_corpus")
