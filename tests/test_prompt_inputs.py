"""Rows to processor outputs (`trl_audio.prompt_inputs`), shared by the trainer and the evaluation."""

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoProcessor

from trl_audio.audio_utils import AudioLoadError
from trl_audio.prompt_inputs import (
    SKIPPED_KEY,
    AudioPromptCollator,
    normalize_prompt,
    placeholder_token_ids,
    process_prompts,
    processor_sampling_rate,
    render_prompts,
    select_rows,
)


CLIP = str(Path(__file__).resolve().parents[1] / "examples/data/speech_sample/audio/ss_0001.flac")
AUDIO_PROMPT = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}]
TEXT_MESSAGE = {"role": "user", "content": [{"type": "text", "text": "Say hi."}]}
# The shape of Qwen/Qwen2-Audio-7B-Instruct's chat template: audio parts are recognised by an `audio` key.
QWEN2_AUDIO_HUB_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def processor(tiny_phi4mm_dir):
    processor = AutoProcessor.from_pretrained(tiny_phi4mm_dir)
    processor.chat_template = processor.tokenizer.chat_template
    return processor


def test_select_rows_indexes_rows_by_row_and_features_by_clip():
    # rows 0 and 2 carry a clip (features 10 and 20), row 1 is text-only
    inputs = {"input_ids": torch.tensor([[1, 2], [3, 4], [5, 6]]), "audio_embed_sizes": torch.tensor([10, 20])}
    out = select_rows(inputs, [2, 0, 1, 2], audio_rows=[0, 2])
    assert out["input_ids"][:, 0].tolist() == [5, 1, 3, 5]
    assert out["audio_embed_sizes"].tolist() == [20, 10, 20]  # the clips of the selected audio rows, in their order
    # TRL's block layout for N samples: all prompts, then all prompts again
    out = select_rows(
        {"input_ids": inputs["input_ids"][:2], "audio_embed_sizes": torch.tensor([7, 8])}, [0, 1] * 3, [0, 1]
    )
    assert out["input_ids"][:, 0].tolist() == [1, 3, 1, 3, 1, 3] and out["audio_embed_sizes"].tolist() == [7, 8] * 3


def test_normalize_prompt_shapes_parts_for_chat_templates():
    prompt = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Transcribe."}]
    assert normalize_prompt(prompt, has_audio=True) == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": [{"type": "audio", "audio": True}, {"type": "text", "text": "Transcribe."}]},
    ]
    assert prompt[1]["content"] == "Transcribe."  # the row itself is left as it was
    assert normalize_prompt(prompt, has_audio=False) == prompt
    # the parts Arrow gives back: every key of every part, None where a part had none
    stored = [{"role": "user", "content": [{"type": "audio", "text": None}, {"type": "text", "text": "Hi"}]}]
    assert normalize_prompt(stored, has_audio=True)[0]["content"] == [
        {"type": "audio", "audio": True},
        {"type": "text", "text": "Hi"},
    ]


def test_qwen2_audio_hub_style_template_sees_the_audio_part(tiny_qwen2_audio_dir):
    """Qwen2-Audio's hub template tests `'audio' in content` and prints any part holding a `text` key."""
    processor = AutoProcessor.from_pretrained(tiny_qwen2_audio_dir)
    processor.chat_template = QWEN2_AUDIO_HUB_TEMPLATE
    rows = Dataset.from_list([{"prompt": AUDIO_PROMPT, "audio": "x"}, {"prompt": [TEXT_MESSAGE], "audio": None}])
    (audio_text, text_only) = render_prompts(processor, rows.to_dict())  # through Arrow, as from a dataset
    assert audio_text.count("<|AUDIO|>") == 1 and "None" not in audio_text and "Transcribe." in audio_text
    assert "<|AUDIO|>" not in text_only and "Say hi." in text_only


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
    assert batch["id"] == ["a", "c"] and batch[SKIPPED_KEY] == {"audio_missing": 1}
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
    texts = render_prompts(processor, batch)
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
