"""Rows to processor outputs (`trl_audio.prompt_inputs`), shared by the trainer and the evaluation."""

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor

from trl_audio.audio_utils import AudioLoadError
from trl_audio.prompt_inputs import (
    SKIPPED_KEY,
    AudioPromptCollator,
    placeholder_token_ids,
    process_prompts,
    processor_sampling_rate,
    render_prompts,
    repeat_batch,
    with_audio_part,
)


CLIP = str(Path(__file__).resolve().parents[1] / "examples/data/speech_sample/audio/ss_0001.flac")
AUDIO_PROMPT = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}]


@pytest.fixture(scope="module")
def processor(tiny_phi4mm_dir):
    processor = AutoProcessor.from_pretrained(tiny_phi4mm_dir)
    processor.chat_template = processor.tokenizer.chat_template
    return processor


def test_repeat_batch_keeps_trl_block_layout():
    inputs = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "audio_embed_sizes": torch.tensor([7]), "names": ["a"]}
    out = repeat_batch(inputs, 3)
    assert out["input_ids"][:, 0].tolist() == [1, 3, 1, 3, 1, 3]
    assert out["audio_embed_sizes"].tolist() == [7, 7, 7]
    assert out["names"] == ["a", "a", "a"]


def test_with_audio_part_only_touches_plain_user_strings():
    prompt = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Transcribe."}]
    assert with_audio_part(prompt) == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]},
    ]
    assert prompt[1]["content"] == "Transcribe."  # the row itself is left as it was
    assert with_audio_part(AUDIO_PROMPT) == AUDIO_PROMPT


def test_collator_decodes_audio_and_counts_bad_rows(processor, tmp_path):
    missing = str(tmp_path / "missing.flac")
    collate = AudioPromptCollator(processor_sampling_rate(processor), on_error="skip")
    batch = collate(
        [
            {"id": "a", "prompt": AUDIO_PROMPT, "audio": CLIP},
            {"id": "b", "prompt": AUDIO_PROMPT, "audio": missing},
            {"id": "c", "prompt": "text only", "audio": None},
        ]
    )
    assert batch["id"] == ["a", "c"] and batch[SKIPPED_KEY] == 1
    assert batch["audio"][0].dtype.name == "float32" and batch["audio"][0].ndim == 1 and batch["audio"][1] is None
    with pytest.raises(AudioLoadError, match=r"row id='b'.*missing\.flac"):
        AudioPromptCollator(16000, on_error="raise")([{"id": "b", "prompt": AUDIO_PROMPT, "audio": missing}])
    with pytest.raises(ValueError, match="not its tokenizer"):
        AudioPromptCollator(processor_sampling_rate(processor.tokenizer))([{"prompt": AUDIO_PROMPT, "audio": CLIP}])


def test_mixed_batch_is_one_processor_call_with_audio_in_the_right_rows(processor):
    batch = AudioPromptCollator(processor_sampling_rate(processor))(
        [
            {"prompt": [{"role": "user", "content": "Say hi."}], "audio": None},
            {"prompt": AUDIO_PROMPT, "audio": CLIP},
        ]
    )
    batch.pop(SKIPPED_KEY)
    _, texts = render_prompts(processor, batch)
    inputs = process_prompts(processor, texts, batch["audio"])
    audio_tokens = (inputs["input_ids"] == processor.audio_token_id).sum(dim=1)
    assert audio_tokens[0] == 0 and audio_tokens[1] == inputs["audio_embed_sizes"][0] > 0
    assert inputs["attention_mask"][0, 0] == 0  # left padding on the shorter, text-only row
    assert placeholder_token_ids(processor) == [processor.audio_token_id, processor.image_token_id]
    assert placeholder_token_ids(processor.tokenizer) == []


def test_two_audio_parts_for_one_clip_is_an_error_naming_the_row(processor):
    prompt = [{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Hi"}]}]
    with pytest.raises(ValueError, match=r"row id='x' has an audio clip but its rendered prompt holds 2"):
        render_prompts(processor, {"id": ["x"], "prompt": [prompt], "audio": [[0.0] * 1600]})
