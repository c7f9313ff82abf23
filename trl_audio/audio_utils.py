"""Audio and text-file I/O, local or cloud: decoding and resampling clips (`load_audio`), checking them without
decoding (`audio_info`), reading manifests' lines (`read_text_lines`), and resolving relative paths (`resolve_path`).

`init_model` lives in `trl_audio.modeling`; it stays importable from here, where users first met it."""

from __future__ import annotations

import io
import logging
import os
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr


logger = logging.getLogger(__name__)

CLOUD_PREFIXES = ("az://", "gs://", "s3://", "https://", "http://")


class AudioLoadError(ValueError):
    """An audio source could not be turned into a usable waveform; the message names the source and the fix.

    `reason` says why, in the words skipped rows are counted with (`trl_audio.skips.SKIP_REASONS`): `audio_missing`,
    `audio_unreadable`, `audio_empty` or `audio_too_long`.
    """

    def __init__(self, message: str, reason: str = "audio_unreadable"):
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
            raise AudioLoadError(f"Audio file not found: {name}. Check the URL.", reason="audio_missing") from e
    if not os.path.isfile(name):  # soundfile reports a missing file as a vague "System error"
        raise AudioLoadError(
            f"Audio file not found: {name}. Check the path (relative paths resolve against the manifest's folder).",
            reason="audio_missing",
        )
    return name


def _decode_error(name: str, error: Exception) -> str:
    return f"Could not decode audio file {name}: {str(error).rstrip('.')}. Convert it to WAV or FLAC."


def _check_length(name: str, num_samples: int, sr: int, max_seconds: float | None) -> None:
    if num_samples == 0:
        raise AudioLoadError(f"Audio file {name} holds no samples (zero-length audio).", reason="audio_empty")
    if max_seconds is not None and num_samples / sr > max_seconds:
        raise AudioLoadError(
            f"Audio file {name} lasts {num_samples / sr:.1f} s, over the limit of {max_seconds} s "
            "(max_audio_seconds).",
            reason="audio_too_long",
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


def resolve_path(path: str, base_dir: str) -> str:
    """`path` made absolute: URLs and absolute paths as they are, relative ones against `base_dir` (a local folder or
    a cloud URL). Manifests resolve their audio paths against their own folder, configs their paths against theirs."""
    if path.startswith(CLOUD_PREFIXES) or os.path.isabs(path):
        return path
    if base_dir.startswith(CLOUD_PREFIXES):
        return posixpath.join(base_dir, path)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), path))


from .modeling import init_model  # noqa: E402, F401  (the name users rely on: trl_audio.audio_utils.init_model)
