"""Model loading (`init_model`) and audio I/O (`load_audio`), shared by the trainer, the datasets and the scripts."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr


logger = logging.getLogger(__name__)

CLOUD_PREFIXES = ("az://", "gs://", "s3://", "https://", "http://")


class AudioLoadError(ValueError):
    """An audio source could not be turned into a usable waveform; the message names the source and the fix.

    `reason` says why, in the words the dataset builders count skipped rows with: `missing_file`, `unreadable_audio`,
    `empty_audio` or `too_long`.
    """

    def __init__(self, message: str, reason: str = "unreadable_audio"):
        super().__init__(message)
        self.reason = reason


def _read_bytes(path: str) -> bytes:
    import blobfile

    with blobfile.BlobFile(path, "rb") as f:
        return f.read()


def read_text_lines(path: str) -> list[tuple[int, str]]:
    """`(line_number, line)` pairs of a UTF-8 text file, local or cloud (blobfile), without line ends.

    Raises `FileNotFoundError` or `ValueError` naming the file (and the line, for text that is not UTF-8).
    """
    try:
        data = _read_bytes(path) if path.startswith(CLOUD_PREFIXES) else Path(path).read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"File not found: {path}.") from e
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append((lineno, raw.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}, line {lineno}: not valid UTF-8 ({e.reason}). Re-encode the file as UTF-8."
            ) from e
    return lines


def _source_name(source: Any) -> str:
    if isinstance(source, dict):
        return source.get("path") or ("<audio bytes>" if source.get("bytes") else "<in-memory array>")
    return str(source)


def _open_audio(source: Any) -> Any:
    """What soundfile reads for `source` (a local path, or a file object for cloud objects and in-memory bytes)."""
    if isinstance(source, dict) and source.get("bytes"):
        return io.BytesIO(source["bytes"])
    name = source.get("path") if isinstance(source, dict) else source
    if not isinstance(name, str) or not name:
        raise AudioLoadError(
            f"Audio source {source!r} is neither a path nor a dict with 'array' and 'sampling_rate' (or 'bytes')."
        )
    if name.startswith(CLOUD_PREFIXES):
        try:
            return io.BytesIO(_read_bytes(name))
        except FileNotFoundError as e:
            raise AudioLoadError(f"Audio file not found: {name}. Check the URL.", reason="missing_file") from e
    if not os.path.isfile(name):  # soundfile reports a missing file as a vague "System error"
        raise AudioLoadError(
            f"Audio file not found: {name}. Check the path (relative paths resolve against the manifest's folder).",
            reason="missing_file",
        )
    return name


def _decode_error(name: str, error: Exception) -> str:
    return f"Could not decode audio file {name}: {str(error).rstrip('.')}. Convert it to WAV or FLAC."


def _check_length(name: str, num_samples: int, sr: int, max_seconds: float | None) -> None:
    if num_samples == 0:
        raise AudioLoadError(f"Audio file {name} holds no samples (zero-length audio).", reason="empty_audio")
    if max_seconds is not None and num_samples / sr > max_seconds:
        raise AudioLoadError(
            f"Audio file {name} lasts {num_samples / sr:.1f} s, over the limit of {max_seconds} s "
            "(max_audio_seconds).",
            reason="too_long",
        )


def audio_info(source: Any, max_seconds: float | None = None) -> tuple[int, int]:
    """`(num_samples, sampling_rate)` of `source` (as in `load_audio`), reading only the file header when it can.

    Raises `AudioLoadError` for the same problems as `load_audio`, so a manifest can be checked without decoding it.
    """
    name = _source_name(source)
    if isinstance(source, dict) and source.get("array") is not None:
        array = np.asarray(source["array"])
        num_samples, sr = max(array.shape) if array.size else 0, int(source["sampling_rate"])
    else:
        try:
            info = sf.info(_open_audio(source))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioLoadError(_decode_error(name, e)) from e
        num_samples, sr = info.frames, info.samplerate
    _check_length(name, num_samples, sr, max_seconds)
    return num_samples, sr


def load_audio(source: Any, target_sr: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode `source` to a mono float32 waveform at `target_sr` Hz.

    `source` is a local path, a cloud URL read through blobfile (`az://`, `gs://`, ...), or a dict in the `datasets`
    Audio layout: `array` and `sampling_rate`, or undecoded `bytes` (with an informative `path`), or a `path` only.
    Multi-channel audio is averaged to mono and resampled with soxr. Raises `AudioLoadError` naming the source when
    the file is missing, not audio, empty, or longer than `max_seconds`.
    """
    name = _source_name(source)
    if isinstance(source, dict) and source.get("array") is not None:
        array, sr = np.asarray(source["array"], dtype=np.float32), int(source["sampling_rate"])
        if array.ndim == 2:  # (channels, samples) in the datasets layout when it is wider than tall
            array = array.T if array.shape[0] < array.shape[1] else array
    else:
        try:
            array, sr = sf.read(_open_audio(source), dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioLoadError(_decode_error(name, e)) from e
    if array.ndim == 2:
        array = array.mean(axis=1)
    _check_length(name, array.size, sr, max_seconds)
    if sr != target_sr:
        array = soxr.resample(array, sr, target_sr)
    return np.ascontiguousarray(array, dtype=np.float32)


SPEECH_LORA_MODES = ("merge", "train", "off")


def init_model(
    model_id: str,
    speech_lora: str = "merge",
    dtype: str | Any = "auto",
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantization_config: Any = None,
    speech_lora_subfolder: str = "speech-lora",
):
    """Loads an audio LLM and its processor with the native transformers classes; returns `(model, processor)`.

    `model_id` is a hub id or a local directory. A Phi-4-multimodal checkpoint carries its speech ability in a LoRA
    adapter (`speech-lora/`), which `speech_lora` handles:

    - `"merge"` (default): load the adapter and merge it into the weights. The result is a plain model; a fresh LoRA
      can be trained on top (`peft_config`), and the trainer's reference (adapter disabled) is the merged model.
    - `"train"`: keep the speech adapter as a trainable PEFT adapter (named `speech`). Disabling it would remove the
      speech ability, so give the trainer an explicit reference: `init_model(model_id, speech_lora="merge")[0]`.
    - `"off"`: ignore the adapter.

    Other audio LLMs (Qwen2-Audio, Voxtral, Granite-Speech, Gemma 3n, ...) load through the Auto classes; for them
    `speech_lora` must be `"off"` unless their checkpoint has a `speech_lora_subfolder` too. `dtype`,
    `attn_implementation`, `device_map`, `revision` and `quantization_config` go to `from_pretrained` unchanged.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMultimodalLM, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES

    if speech_lora not in SPEECH_LORA_MODES:
        raise ValueError(f"speech_lora must be one of {SPEECH_LORA_MODES}, got {speech_lora!r}.")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    hub_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(model_id, **hub_kwargs)
    is_multimodal = config.model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES
    auto_class = AutoModelForMultimodalLM if is_multimodal else AutoModelForCausalLM
    model_kwargs = {"dtype": dtype, "device_map": device_map, "quantization_config": quantization_config}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    model = auto_class.from_pretrained(model_id, config=config, **hub_kwargs, **model_kwargs)
    processor = AutoProcessor.from_pretrained(model_id, **hub_kwargs)
    if processor.chat_template is None and getattr(processor.tokenizer, "chat_template", None):
        # Phi4MultimodalProcessor drops its chat template on load (transformers 5.24); the tokenizer keeps a copy.
        processor.chat_template = processor.tokenizer.chat_template
    if speech_lora != "off":
        model = load_speech_lora(model, model_id, speech_lora_subfolder, revision, trainable=speech_lora == "train")
        if speech_lora == "merge":
            model = model.merge_and_unload()
            if quantization_config is None:  # PEFT froze the base weights; merged, they are a plain model again
                model.requires_grad_(True)
    logger.info("Loaded %s (%s) with speech_lora=%s", model_id, type(model).__name__, speech_lora)
    return model, processor


def load_speech_lora(model, model_id: str, subfolder: str, revision: str | None = None, trainable: bool = False):
    """Wraps `model` in a PEFT model holding the checkpoint's speech LoRA adapter (named `speech`).

    Phi-4-MM's hub adapter was written by transformers' conversion script without PEFT's `base_model.model.` key
    prefix, which `PeftModel.from_pretrained` silently fails to match (the adapter then stays at its random init). So
    the weights are loaded here under either layout, and an adapter whose weights do not all land is an error.
    """
    from peft import LoraConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(model_id, subfolder=subfolder, revision=revision)
    config.inference_mode = not trainable
    weights = load_peft_weights(model_id, subfolder=subfolder, revision=revision)
    prefix = "base_model.model."
    weights = {key if key.startswith(prefix) else prefix + key: value for key, value in weights.items()}
    model = get_peft_model(model, config, adapter_name="speech")
    result = set_peft_model_state_dict(model, weights, adapter_name="speech")
    expected = {name for name, _ in model.named_parameters() if ".speech." in name}
    if result.unexpected_keys or len(weights) != len(expected):
        raise ValueError(
            f"The speech adapter in {model_id}/{subfolder} does not fit the model: {len(weights)} tensors for "
            f"{len(expected)} adapter parameters; unexpected keys such as {result.unexpected_keys[:3]}. "
            "Check that the adapter belongs to this checkpoint (and revision)."
        )
    return model
