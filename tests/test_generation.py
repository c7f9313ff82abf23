"""`trl_audio.generation` on the three tiny families with the bundled speech: sampling continues each prompt from its
shared prefill in any sample order, generation under gradient checkpointing prefills once, and completion log-probs
equal a plain forward of (prompt with its own clip + completion)."""

import pytest
import torch
from accelerate import Accelerator
from helpers import audio_row, audio_rows
from transformers import GenerationConfig

from trl_audio import generation, prompt_inputs
from trl_audio.modeling import freeze_audio_path
from trl_audio.prompt_embeds import PromptEncoder
from trl_audio.prompt_inputs import (
    AudioPromptCollator,
    placeholder_token_ids,
    prepare_prompts,
    processor_sampling_rate,
)
from trl_audio.skips import SkipCounter
from trl_audio.testing import load_tiny


FAMILIES = ["tiny_phi4mm_dir", "tiny_qwen2_audio_dir", "tiny_glm_asr_dir"]


@pytest.fixture(params=FAMILIES)
def tiny_dir(request):
    return request.getfixturevalue(request.param)


def prompt_batch(model, processor, rows, reuse=True):
    """Rows -> decoded clips -> one processor dict -> `PromptBatch` (the audio embeddings read once when `reuse` and
    the audio path is frozen): the path every trainer takes."""
    batch = AudioPromptCollator(processor_sampling_rate(processor))(rows)
    batch.pop("_skipped_rows")
    kept, inputs = prepare_prompts(processor, batch, 1024, 8, "max_new_tokens", "raise", SkipCounter())
    encoder = PromptEncoder(Accelerator(cpu=True), placeholder_token_ids(processor), reuse)
    return kept, encoder.policy_batch(model, inputs, prompt_inputs.audio_rows(kept["audio"]))


def greedy(processor, **overrides):
    """Greedy decoding of 6 new tokens that never samples an audio placeholder, with `overrides`."""
    tokenizer = processor.tokenizer
    settings = {
        "max_new_tokens": 6,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "suppress_tokens": placeholder_token_ids(processor),
    }
    return GenerationConfig(**(settings | overrides))


def test_any_sample_order_continues_each_prompts_own_prefill(tiny_dir):
    """Greedy samples in an order that is neither TRL's online-DPO blocks nor GRPO's runs (rows 1, 0, 0, 1, 1): each
    equals the sample of its prompt generated alone, without a shared prefill."""
    model, processor = load_tiny(tiny_dir)
    model.eval()
    freeze_audio_path(model)
    rows = [audio_row(0), audio_row(0, "Write down every word spoken in this recording, please.")]
    _, batch = prompt_batch(model, processor, rows)
    eos, pad = [processor.tokenizer.eos_token_id], processor.tokenizer.pad_token_id
    order = [1, 0, 0, 1, 1]
    with torch.no_grad():
        shared, shared_mask = generation.sample(model, batch, order, greedy(processor), eos, pad, share_prefill=True)
        alone = {
            row: generation.sample(model, batch, [row], greedy(processor), eos, pad, share_prefill=False)
            for row in (0, 1)
        }
    for k, row in enumerate(order):
        ids, mask = alone[row]
        length = int(mask.sum())
        assert shared[k, :length].tolist() == ids[0, :length].tolist() and int(shared_mask[k].sum()) == length


@pytest.mark.parametrize("reuse", [True, False], ids=["embeddings_reused", "features_every_pass"])
def test_completion_logprobs_match_an_independent_computation(tiny_dir, reuse):
    model, processor = load_tiny(tiny_dir)
    model.eval()
    # Phi-4-MM's audio encoder lets padding frames leak into a clip's embedding, so its rows share one clip (the
    # prompts still differ in length, which exercises left padding); the others pad every clip to a 30 s window.
    if model.config.model_type == "phi4_multimodal":
        rows = [audio_row(0), audio_row(0, "Write down every word spoken in this recording, please.")]
    else:
        rows = [audio_row(0), audio_row(3, "Write down every word spoken in this recording, please.")]
    freeze_audio_path(model)  # so the audio embeddings may be reused
    kept, batch = prompt_batch(model, processor, rows, reuse)
    assert (batch.embeddings is not None) == reuse
    eos, pad = [processor.tokenizer.eos_token_id], processor.tokenizer.pad_token_id
    sample_rows = [0, 1, 1, 0]
    torch.manual_seed(0)
    with torch.no_grad():
        completion_ids, completion_mask = generation.sample(
            model, batch, sample_rows, greedy(processor, do_sample=True, top_k=0), eos, pad
        )
        logprobs = generation.completion_logprobs(model, batch, sample_rows, completion_ids, completion_mask)

    for k, row_index in enumerate(sample_rows):
        row = rows[row_index]
        text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        single = processor(text=[text], audio=[kept["audio"][row_index]], return_tensors="pt")
        length = int(completion_mask[k].sum())
        completion = completion_ids[k, :length]
        input_ids = torch.cat([single.pop("input_ids")[0], completion])[None]
        single.pop("attention_mask")
        with torch.no_grad():
            logits = model(input_ids=input_ids, **single).logits[0, -length - 1 : -1]
        expected = logits.log_softmax(-1).gather(-1, completion[:, None])[:, 0]
        torch.testing.assert_close(logprobs[k, :length], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_cache, share_prefill", [(True, True), (True, False), (False, False)])
def test_generation_under_gradient_checkpointing_prefills_once(tiny_phi4mm_dir, use_cache, share_prefill):
    """Shapes of the passes through the first decoder layer while 2 prompts x 3 samples are generated."""
    model, processor = load_tiny(tiny_phi4mm_dir)
    _, batch = prompt_batch(model, processor, audio_rows(2))
    shapes = []  # (rows, positions) of each pass through the first decoder layer
    model.get_decoder().layers[0].register_forward_pre_hook(lambda module, args: shapes.append(args[0].shape[:2]))
    eos, pad = [processor.tokenizer.eos_token_id], processor.tokenizer.pad_token_id
    config = greedy(processor, max_new_tokens=4, use_cache=use_cache, min_new_tokens=4)
    with torch.no_grad():
        completion_ids, _ = generation.sample(model, batch, [0, 1] * 3, config, eos, pad, share_prefill=share_prefill)
    length, new_tokens = batch.inputs["input_ids"].size(1), completion_ids.size(1)
    if share_prefill:  # each prompt once (all but its last token), then one token per pass for the 6 samples
        assert shapes == [(2, length - 1)] + [(6, 1)] * new_tokens
    elif use_cache:  # each of the 6 samples' prompt, then one token per pass
        assert shapes == [(6, length)] + [(6, 1)] * (new_tokens - 1)
    else:  # what TRL does under gradient checkpointing: the whole sequence again for every new token
        assert shapes == [(6, length + t) for t in range(new_tokens)]
