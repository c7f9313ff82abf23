"""Audio I/O of `trl_audio.audio_utils`: decoding, resampling, down-mixing, and errors that name the bad file."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from trl_audio import audio_utils
from trl_audio.audio_utils import AudioLoadError, audio_info, init_model, load_audio, read_text_lines


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
        (missing, "missing_file", "not found"),
        (not_audio, "unreadable_audio", "Could not decode"),
        (empty, "empty_audio", "zero-length"),
    ]:
        with pytest.raises(AudioLoadError, match=words) as info:
            call(path)
        assert str(path) in str(info.value) and info.value.reason == reason
    with pytest.raises(AudioLoadError, match=r"lasts 3.0 s, over the limit of 2.5 s") as info:
        call(long, max_seconds=2.5)
    assert str(long) in str(info.value) and info.value.reason == "too_long"
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
