"""Rows to processor outputs (`trl_audio.prompt_inputs`), shared by the trainer and the evaluation."""

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoProcessor

from trl_audio import AudioOnlineDPOConfig, AudioOnlineDPOTrainer
from trl_audio.audio_utils import AudioLoadError
from trl_audio.evaluation import transcribe
from trl_audio.prompt_inputs import (
    SKIPPED_KEY,
    AudioPromptCollator,
    _pad_clips_phi4mm_extractor_crashes_on,
    normalize_prompt,
    placeholder_token_ids,
    process_prompts,
    processor_sampling_rate,
    render_prompts,
    select_rows,
)
from trl_audio.testing import load_tiny


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
# Lengths (16 kHz samples) of three real clips whose batch crashed training on transformers 5.24.0's Phi-4-MM feature
# extractor: 57281 lies in the last 160-sample hop of 57315, which ends 35 (< 80) samples into it, and 31472 has fewer
# frames than 57315 (see `prompt_inputs._pad_clips_phi4mm_extractor_crashes_on`).
CRASH_LENGTHS = (57315, 57281, 31472)
NUM_FRAMES = (57315 - 400) // 160 + 1  # 356, the batch's frames (the extractor's window 400, hop 160)


def noise_clips(lengths=CRASH_LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(length)).astype(np.float32) for length in lengths]


def noise_rows():
    return [
        {"prompt": AUDIO_PROMPT, "audio": {"array": clip, "sampling_rate": 16000}, "text": "a b"}
        for clip in noise_clips()
    ]


def grid_batches():
    """Batches of a longest clip (ending 35, 79, 80 and 159 samples into its last hop), a clip in or near that hop and
    an 8000-sample one, seeded noise (seed 0): the extractor crashes on six of them, those of the first two longest
    clips with the three clips in their last hop."""
    rng = np.random.default_rng(0)
    for longest in (16035, 16079, 16080, 16159):
        hop_start = longest // 160 * 160
        for length in (longest - 1, longest - 30, hop_start, hop_start - 1, longest - 200):
            yield [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (longest, length, 8000)]


def extractor_call(processor):
    return partial(processor.audio_processor, sampling_rate=16000, return_tensors="pt")


def extractor_error(extract, clips):
    """The message of the RuntimeError that `extract(clips)` raises, or None."""
    try:
        extract(clips)
    except RuntimeError as e:
        return str(e)
    return None


# One training step on one batch of the three clips, on the CPU, writing nothing.
ONE_STEP = dict(per_device_train_batch_size=3, max_steps=1, max_new_tokens=4, num_generations=2)
CPU_RUN = dict(report_to="none", bf16=False, save_strategy="no", disable_tqdm=True)


def token_sum_reward(completion_ids, **kwargs):
    return [float(sum(ids)) for ids in completion_ids]


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


def test_phi4mm_feature_extractor_bug_is_still_there(processor):
    """transformers 5.24.0's Phi4MultimodalFeatureExtractor crashes on the three clips in one batch, though not on the
    longest with either of the others, and over `grid_batches` exactly where the workaround's docstring says. The day
    this fails, transformers fixed it: remove the workaround (`prompt_inputs._pad_clips_phi4mm_extractor_crashes_on`)
    and this test."""
    extract = extractor_call(processor)
    error = extractor_error(extract, noise_clips())
    assert error is not None, (
        "transformers fixed Phi4MultimodalFeatureExtractor's batch masking: remove "
        "prompt_inputs._pad_clips_phi4mm_extractor_crashes_on and this test."
    )
    assert "The size of tensor a (161) must match the size of tensor b (162)" in error
    longest, same_hop, shorter = noise_clips()
    assert extractor_error(extract, [longest, same_hop]) is None
    assert extractor_error(extract, [longest, shorter]) is None
    for clips in grid_batches():
        longest, length = len(clips[0]), len(clips[1])
        in_last_hop = longest % 160 < 80 and length // 160 == longest // 160  # and 8000 has fewer frames
        assert (extractor_error(extract, clips) is not None) == in_last_hop, (longest, length)


def test_phi4mm_batch_that_crashes_the_extractor_gets_its_outputs_for_each_clip(processor):
    """`process_prompts` takes the three clips in one call, and each clip's outputs are the extractor's own for it.

    The reference: in a batched call, a clip's feature rows are computed from its own samples (then zeros) and masked
    by its own length only, so they depend on the clip and on the batch's width, which the longest clip (57315) sets.
    The extractor takes 57315 with 31472, which gives those two clips' rows at that width; 57281 crashes beside 57315,
    but it has as many frames as 57315 (356), so alone it fills that width. Its embed size, like every clip's, is the
    one it gets alone, and each clip's frames are the ones it gets alone."""
    clips = noise_clips()
    padded = _pad_clips_phi4mm_extractor_crashes_on(processor, clips)
    assert padded[0] is clips[0] and padded[2] is clips[2] and len(padded[1]) == CRASH_LENGTHS[0]  # the culprit only
    texts = render_prompts(processor, {"prompt": [AUDIO_PROMPT] * 3, "audio": clips})
    inputs = process_prompts(processor, texts, clips)

    extract = extractor_call(processor)
    pair, alone = extract([clips[0], clips[2]]), extract([clips[1]])
    assert pair["audio_input_features"].shape[1] == alone["audio_input_features"].shape[1] == NUM_FRAMES
    expected = {
        key: torch.cat([pair[key][:1], rows, pair[key][1:]])
        for key, rows in [
            ("audio_input_features", alone["audio_input_features"]),
            ("audio_attention_mask", torch.ones(1, NUM_FRAMES, dtype=torch.bool)),  # alone: no mask, every frame
            ("audio_embed_sizes", alone["audio_embed_sizes"]),
        ]
    }
    for key, value in expected.items():
        assert torch.equal(inputs[key], value), key
    for row, clip in enumerate(clips):
        own = extract([clip])
        frames = own["audio_input_features"].size(1)
        assert torch.equal(inputs["audio_input_features"][row, :frames], own["audio_input_features"][0])
        assert (inputs["input_ids"][row] == processor.audio_token_id).sum() == own["audio_embed_sizes"][0]


def test_phi4mm_padding_is_exact_wherever_it_applies(processor):
    """Over `grid_batches`, six of which crash the extractor, the workaround gives each clip the rows it gets beside a
    longer clip that crashes nothing (its length ends 100 samples into a hop), cut to the batch's width: the rows of a
    fixed extractor; and the embed size it gets alone."""
    extract = extractor_call(processor)
    for clips in grid_batches():
        out = extract(_pad_clips_phi4mm_extractor_crashes_on(processor, clips))
        longest = len(clips[0])
        width = (longest - 400) // 160 + 1
        filler = np.zeros(longest // 160 * 160 + 260, dtype=np.float32)
        rows = torch.cat([extract([clip, filler])["audio_input_features"][:1, :width] for clip in clips])
        assert torch.equal(out["audio_input_features"], rows), longest
        assert out["audio_embed_sizes"].tolist() == [extract([clip])["audio_embed_sizes"].item() for clip in clips]


def test_trainer_trains_on_a_batch_that_crashes_the_phi4mm_extractor(tiny_phi4mm_dir, tmp_path):
    """The batch that killed a run: without the workaround, the trainer's processor call raises the RuntimeError."""
    model, processor = load_tiny(tiny_phi4mm_dir)
    args = AudioOnlineDPOConfig(str(tmp_path), **ONE_STEP, **CPU_RUN)
    rows = Dataset.from_list(noise_rows())
    trainer = AudioOnlineDPOTrainer(
        model, reward_funcs=token_sum_reward, args=args, train_dataset=rows, processing_class=processor
    )
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_transcribe_takes_a_batch_that_crashes_the_phi4mm_extractor(tiny_phi4mm_dir):
    """The evaluation's path to the processor is the trainer's: the three rows are one batch, and each gets a
    transcript."""
    model, processor = load_tiny(tiny_phi4mm_dir)
    transcripts = transcribe(model, processor, noise_rows(), batch_size=3, max_new_tokens=4)
    assert len(transcripts) == 3 and all(isinstance(t, str) for t in transcripts)
