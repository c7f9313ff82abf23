"""Audio I/O of `trl_audio.audio_utils`: decoding, resampling, down-mixing, and errors that name the bad file."""

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from trl_audio import audio_utils
from trl_audio.audio_utils import AudioLoadError, audio_info, load_audio, read_text_lines, resolve_path


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
CLIP = SAMPLE_DIR / "audio/ss_0001.flac"


@pytest.fixture(scope="module")
def clip():
    array, sr = sf.read(CLIP, dtype="float32")
    assert sr == 16_000 and array.ndim == 1
    return array


def write_44k_stereo(path, clip):
    """The bundled clip upsampled to 44.1 kHz, left channel as is and right channel at half amplitude."""
    up = soxr.resample(clip, 16_000, 44_100)
    sf.write(path, np.stack([up, 0.5 * up], axis=1), 44_100, subtype="FLOAT")
    return up


def test_bundled_clip_is_returned_unchanged(clip):
    array = load_audio(str(CLIP), 16_000)
    assert array.dtype == np.float32 and array.ndim == 1
    np.testing.assert_array_equal(array, clip)


def test_44k_stereo_becomes_16k_mono(tmp_path, clip):
    path = tmp_path / "stereo44k.wav"
    write_44k_stereo(path, clip)
    array = load_audio(str(path), 16_000)
    assert array.ndim == 1 and array.dtype == np.float32
    assert abs(len(array) - len(clip)) <= 2
    n = min(len(array), len(clip))
    # Mono is the channel mean: 0.75 x the clip. Resampling there and back keeps speech nearly intact.
    np.testing.assert_allclose(array[:n] / 0.75, clip[:n], atol=0.02)
    assert np.corrcoef(array[:n], clip[:n])[0, 1] > 0.999


def test_resamples_to_other_target_rate(clip):
    array = load_audio(str(CLIP), 8_000)
    assert abs(len(array) - len(clip) / 2) <= 1


def test_dict_sources_match_the_file(clip):
    from_bytes = load_audio({"bytes": CLIP.read_bytes(), "path": "ss_0001.flac"}, 16_000)
    from_path = load_audio({"path": str(CLIP), "bytes": None}, 16_000)
    channels_first = load_audio({"array": np.stack([clip, clip]), "sampling_rate": 16_000}, 16_000)
    np.testing.assert_array_equal(from_bytes, clip)
    np.testing.assert_array_equal(from_path, clip)
    np.testing.assert_allclose(channels_first, clip, atol=1e-7)


def test_cloud_url_is_read_through_blobfile(monkeypatch, clip):
    asked = []

    def fake_read_bytes(path):
        asked.append(path)
        return CLIP.read_bytes()

    monkeypatch.setattr(audio_utils, "_read_bytes", fake_read_bytes)
    np.testing.assert_array_equal(load_audio("gs://bucket/ss_0001.flac", 16_000), clip)
    assert audio_info("az://account/container/ss_0001.flac") == (len(clip), 16_000)
    assert asked == ["gs://bucket/ss_0001.flac", "az://account/container/ss_0001.flac"]


def test_audio_info_reads_length_and_rate(clip):
    assert audio_info(str(CLIP)) == (len(clip), 16_000)
    assert audio_info({"array": np.zeros((2, 480)), "sampling_rate": 48_000}) == (480, 48_000)


@pytest.mark.parametrize("check", [load_audio, audio_info], ids=["load_audio", "audio_info"])
def test_bad_files_raise_errors_naming_them(tmp_path, check):
    missing = tmp_path / "missing.flac"
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is text, not audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000)
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16_000 * 3, dtype=np.float32), 16_000)

    def call(path, **kwargs):
        return check(str(path), 16_000, **kwargs) if check is load_audio else check(str(path), **kwargs)

    for path, reason, words in [
        (missing, "audio_missing", "not found"),
        (not_audio, "audio_unreadable", "Could not decode"),
        (empty, "audio_empty", "zero-length"),
    ]:
        with pytest.raises(AudioLoadError, match=words) as info:
            call(path)
        assert str(path) in str(info.value) and info.value.reason == reason
    with pytest.raises(AudioLoadError, match=r"lasts 3.0 s, over the limit of 2.5 s") as info:
        call(long, max_seconds=2.5)
    assert str(long) in str(info.value) and info.value.reason == "audio_too_long"
    call(long, max_seconds=3.0)  # at the limit is kept


def test_neither_path_nor_array_is_rejected():
    with pytest.raises(AudioLoadError, match="neither a path"):
        load_audio(123, 16_000)


def test_read_text_lines_names_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("id\ttext\r\nrow1\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: not valid UTF-8")):
        read_text_lines(str(path))
    path.write_bytes(b"a\r\nb\n")
    assert read_text_lines(str(path)) == [(1, "a"), (2, "b"), (3, "")]


def test_resolve_path_keeps_urls_and_absolute_paths_and_anchors_relative_ones(tmp_path):
    assert resolve_path("s3://b/x.flac", str(tmp_path)) == "s3://b/x.flac"
    assert resolve_path("/abs/x.flac", str(tmp_path)) == "/abs/x.flac"
    assert resolve_path("clips/../x.flac", str(tmp_path)) == str(tmp_path / "x.flac")
    assert resolve_path("clips/x.flac", "gs://bucket/sets") == "gs://bucket/sets/clips/x.flac"


def test_init_model_stays_importable_from_audio_utils():
    from trl_audio import modeling

    assert audio_utils.init_model is modeling.init_model
