"""Model loading (`init_model`) and audio I/O (`load_audio`), shared by the trainer, the datasets and the scripts."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import soundfile as sf
import soxr


logger = logging.getLogger(__name__)

CLOUD_PREFIXES = ("az://", "gs://", "s3://", "https://", "http://")


class AudioLoadError(ValueError):
    """An audio source could not be turned into a usable waveform; the message names the source and the fix."""


def _read_bytes(path: str) -> bytes:
    import blobfile

    with blobfile.BlobFile(path, "rb") as f:
        return f.read()


def load_audio(source: Any, target_sr: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode `source` to a mono float32 waveform at `target_sr` Hz.

    `source` is a local path, a cloud URL read through blobfile (`az://`, `gs://`, ...), or a dict with `array` and
    `sampling_rate` (the `datasets` Audio layout; a `path`-only dict is read from its path). Multi-channel audio is
    averaged to mono and resampled with soxr. Raises `AudioLoadError` naming the source when the file is missing,
    not audio, empty, or longer than `max_seconds`.
    """
    if isinstance(source, dict) and source.get("array") is not None:
        name = source.get("path") or "<in-memory array>"
        array, sr = np.asarray(source["array"], dtype=np.float32), int(source["sampling_rate"])
        if array.ndim == 2:  # (channels, samples) in the datasets layout when it is wider than tall
            array = array.T if array.shape[0] < array.shape[1] else array
    else:
        name = source["path"] if isinstance(source, dict) else source
        if not isinstance(name, str) or not name:
            raise AudioLoadError(f"Audio source {source!r} is neither a path nor a dict with 'array' and 'sampling_rate'.")
        try:
            data = io.BytesIO(_read_bytes(name)) if name.startswith(CLOUD_PREFIXES) else name
            array, sr = sf.read(data, dtype="float32", always_2d=False)
        except FileNotFoundError as e:
            raise AudioLoadError(f"Audio file not found: {name}. Check the path (relative paths resolve against the manifest's folder).") from e
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioLoadError(f"Could not decode audio file {name}: {e}. Convert it to WAV or FLAC.") from e
    if array.ndim == 2:
        array = array.mean(axis=1)
    if array.size == 0:
        raise AudioLoadError(f"Audio file {name} holds no samples (zero-length audio).")
    if max_seconds is not None and array.size / sr > max_seconds:
        raise AudioLoadError(
            f"Audio file {name} lasts {array.size / sr:.1f} s, over the limit of {max_seconds} s (max_audio_seconds)."
        )
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
    if speech_lora != "off":
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            model,
            model_id,
            subfolder=speech_lora_subfolder,
            adapter_name="speech",
            is_trainable=speech_lora == "train",
            revision=revision,
        )
        if speech_lora == "merge":
            model = model.merge_and_unload()
    logger.info("Loaded %s (%s) with speech_lora=%s", model_id, type(model).__name__, speech_lora)
    return model, processor
