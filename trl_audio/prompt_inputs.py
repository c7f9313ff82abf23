"""Rows (prompt + audio) to the processor's outputs, as one dict for every audio model family: the path shared by the
trainer and the evaluation."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import Phi4MultimodalFeatureExtractor, ProcessorMixin
from trl.data_utils import is_conversational, maybe_apply_chat_template

from .audio_utils import AudioLoadError, load_audio
from .skips import SkipCounter


logger = logging.getLogger(__name__)

# Batch key under which the collator reports the rows of the batch it left out (bad audio): `{reason: count}`.
SKIPPED_KEY = "_skipped_rows"


def processor_sampling_rate(processing_class: Any) -> int | None:
    """The sampling rate the processor's audio feature extractor expects, or None for a text-only tokenizer."""
    if not isinstance(processing_class, ProcessorMixin):
        return None
    for name in ("audio_processor", "feature_extractor"):
        extractor = getattr(processing_class, name, None)
        if extractor is not None and getattr(extractor, "sampling_rate", None):
            return int(extractor.sampling_rate)
    return None


def placeholder_token_ids(processing_class: Any) -> list[int]:
    """The audio/image placeholder ids of a multimodal processor (none for a tokenizer). A sampled placeholder would
    make the model look for features that are not there, so they are never generated."""
    if not isinstance(processing_class, ProcessorMixin):
        return []
    ids = [getattr(processing_class, f"{kind}_token_id", None) for kind in ("audio", "image")]
    return [i for i in ids if i is not None]


def tokenizer_of(processing_class: Any) -> Any:
    """The tokenizer of a processor, or the tokenizer itself."""
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


def end_of_turn(processing_class: Any) -> str:
    """What the chat template writes after an assistant message (Phi-4-MM: `<|end|><|endoftext|>`, Qwen2-Audio:
    `<|im_end|>\\n`), or the eos token where it writes nothing (GLM-ASR, whose generation stops at the next role token
    or at `<|endoftext|>`): what the model learns to say after a transcript (SFT) or an answer (offline DPO), so that
    generation stops there."""
    marker = "<<transcript>>"
    messages = [{"role": "user", "content": "Transcribe."}, {"role": "assistant", "content": marker}]
    rendered = processing_class.apply_chat_template(messages, tokenize=False)
    return rendered[rendered.rindex(marker) + len(marker) :] or tokenizer_of(processing_class).eos_token


def audio_rows(audios: list | None) -> list[int]:
    """The indices of the rows that carry a clip (`audios`: one clip or None per row; None for a text-only batch)."""
    return [i for i, audio in enumerate(audios or []) if audio is not None]


def row_name(row: dict, index: int) -> str:
    return f"row id={row['id']!r}" if row.get("id") is not None else f"batch row {index}"


class AudioPromptCollator:
    """Collates dataset rows into one dict of columns, decoding each row's `audio` to a mono waveform at the
    processor's rate. A row whose audio cannot be loaded is skipped with a warning (and counted by reason in the
    batch under `SKIPPED_KEY`: collators may run in DataLoader workers, whose own counters nobody would read), or
    raises naming the row, as `on_error` says."""

    def __init__(self, sampling_rate: int | None, on_error: str = "skip", max_audio_seconds: float | None = None):
        self.sampling_rate = sampling_rate
        self.on_error = on_error
        self.max_audio_seconds = max_audio_seconds

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        rows, skipped = [], Counter()
        for index, row in enumerate(features):
            if row.get("audio") is not None:
                if self.sampling_rate is None:
                    raise ValueError(
                        f"{row_name(row, index)} carries audio, but the processing class has no audio feature "
                        "extractor: pass the model's processor (AutoProcessor), not its tokenizer."
                    )
                try:
                    row = {**row, "audio": load_audio(row["audio"], self.sampling_rate, self.max_audio_seconds)}
                except AudioLoadError as e:
                    if self.on_error == "raise":
                        raise AudioLoadError(f"{row_name(row, index)}: {e}", reason=e.reason) from e
                    logger.warning("Skipping %s: %s", row_name(row, index), e)
                    skipped[e.reason] += 1
                    continue
            rows.append(row)
        keys = list(features[0]) if features else []
        batch = {key: [row.get(key) for row in rows] for key in keys}
        batch[SKIPPED_KEY] = dict(skipped)
        return batch


def normalize_prompt(prompt: list[dict], has_audio: bool) -> list[dict]:
    """A copy of a conversational prompt as chat templates expect it.

    - Content parts lose the None-valued keys that Arrow adds when one column stores parts of different shapes
      (`{"type": "audio", "text": None}`): templates that test `'text' in content` would print "None".
    - Audio parts carry an `audio` key, as in transformers' message format: Qwen2-Audio-style templates test
      `'audio' in content`, not the part's type.
    - A row with audio whose user content is a plain string gets an audio part in front of the text, as TRL does for
      images.
    """
    prompt = copy.deepcopy(prompt)
    for message in prompt:
        if isinstance(message["content"], str):
            if has_audio and message["role"] == "user":
                message["content"] = [{"type": "audio"}, {"type": "text", "text": message["content"]}]
            else:
                continue
        message["content"] = [{k: v for k, v in part.items() if v is not None} for part in message["content"]]
        for part in message["content"]:
            if part.get("type") == "audio":
                part.setdefault("audio", True)
    return prompt


def render_prompts(processing_class: Any, batch: dict[str, list]) -> list[str]:
    """The batch's prompts through the chat template (conversational ones normalized first: see `normalize_prompt`).
    Raises, naming the row, when a row's audio and its audio placeholders do not pair up one to one (unchecked when
    the processor does not name its placeholder)."""
    audios = batch.get("audio") or [None] * len(batch["prompt"])
    prompts = [
        normalize_prompt(p, a is not None) if is_conversational({"prompt": p}) else p
        for p, a in zip(batch["prompt"], audios)
    ]
    texts = [maybe_apply_chat_template({"prompt": p}, processing_class)["prompt"] for p in prompts]
    audio_token = getattr(processing_class, "audio_token", None)
    for index, (text, audio) in enumerate(zip(texts, audios)):
        if audio_token is not None and text.count(audio_token) != (audio is not None):
            row = {key: values[index] for key, values in batch.items()}
            raise ValueError(
                f"{row_name(row, index)} has {'an' if audio is not None else 'no'} audio clip but its rendered prompt "
                f"holds {text.count(audio_token)} audio placeholders: give each audio row exactly one "
                '{"type": "audio"} part in its user message, and text-only rows none.'
            )
    return texts


def process_prompts(processing_class: Any, texts: list[str], audios: list | None) -> dict[str, torch.Tensor]:
    """The processor's outputs for the rendered prompts and the rows' clips (None for text-only rows, or no list at
    all for a text-only batch), as one dict of left-padded rows; without the bookkeeping entries some processors
    return that the model does not take (Phi-4-MM: num_img_tokens).

    A batch mixing audio and text-only rows is processed in two calls, audio rows and text-only rows, whose per-token
    entries are then left-padded to one width and put back in row order: some processors (GLM-ASR, Qwen3-ASR) take
    exactly one clip per text. The audio features need no reordering: their clips follow the audio rows' order.
    """
    rows_with_audio = audio_rows(audios)
    if not rows_with_audio or len(rows_with_audio) == len(texts):
        return _call_processor(processing_class, texts, [audios[i] for i in rows_with_audio])
    text_rows = sorted(set(range(len(texts))) - set(rows_with_audio))
    with_audio = _call_processor(
        processing_class, [texts[i] for i in rows_with_audio], [audios[i] for i in rows_with_audio]
    )
    text_only = _call_processor(processing_class, [texts[i] for i in text_rows], [])
    width = max(with_audio["input_ids"].size(1), text_only["input_ids"].size(1))
    pad_token_id = tokenizer_of(processing_class).pad_token_id
    merged = dict(with_audio)
    for key in text_only:  # what a text-only call returns is per token: input_ids, attention_mask, ...
        pad = pad_token_id if key == "input_ids" else 0
        rows = with_audio[key].new_full((len(texts), width), pad)
        rows[rows_with_audio, width - with_audio[key].size(1) :] = with_audio[key]
        rows[text_rows, width - text_only[key].size(1) :] = text_only[key]
        merged[key] = rows
    return merged


def _call_processor(processing_class: Any, texts: list[str], clips: list) -> dict[str, torch.Tensor]:
    """One processor call, padding the text only: audio features keep the processor's own padding (Whisper-style
    extractors pad to their 30 s window, and models such as GLM-ASR rely on it)."""
    text_kwargs = {"padding": True, "padding_side": "left", "add_special_tokens": False}
    if isinstance(processing_class, ProcessorMixin):
        clips = _pad_clips_phi4mm_extractor_crashes_on(processing_class, clips)
        audio_kwargs = {"audio": clips, "sampling_rate": processor_sampling_rate(processing_class)} if clips else {}
        inputs = processing_class(text=texts, text_kwargs=text_kwargs, return_tensors="pt", **audio_kwargs)
    else:
        inputs = processing_class(text=texts, return_tensors="pt", **text_kwargs)
    unused = getattr(processing_class, "unused_input_names", None) or []
    return {k: v for k, v in inputs.items() if k not in unused}


def _pad_clips_phi4mm_extractor_crashes_on(processing_class: Any, clips: list) -> list:
    """`clips` (1-D arrays, as `AudioPromptCollator` gives them) with those that crash the Phi-4-MM feature extractor
    zero-padded, so that it gives the outputs it would give without its bug; for other extractors, `clips` as they are.

    The bug (transformers 5.24.0, `Phi4MultimodalFeatureExtractor._torch_extract_fbank_features`, lines 233-246): in a
    batch, each clip shorter than the longest has its frames from `(length - 400) // 160 + 1` (its frame count) up to
    `length // 160 - 1` zeroed, through the slice `frames[idxs, offset_idx:max_idx]` and a mask as wide as
    `max_idx - offset_idx`. The batch has `(longest - 400) // 160 + 1` frames, and a shorter clip in the longest clip's
    last 160-sample hop (`length // 160 == longest // 160`) reaches one frame past them when the longest ends less than
    80 samples into that hop (`longest % 160 < 80`). The slice then stops at the batch's last frame and the mask does
    not: `masked_fill_` raises "The size of tensor a (n) must match the size of tensor b (n + 1)" (unless no clip has
    fewer frames than the longest: the slice is then empty and the mask, one frame wide, broadcasts).

    Such a clip has as many frames as the longest, each ending before its last sample, so padding it to the longest
    clip's length changes none of its features nor its `audio_embed_sizes`, and takes it out of the masking (clips as
    long as the longest are not masked): every clip gets the features that a fixed extractor gives it. The common
    path costs one pass over the lengths. Remove this when
    `tests/test_prompt_inputs.py::test_phi4mm_feature_extractor_bug_is_still_there` fails: transformers fixed it.
    """
    extractor = getattr(processing_class, "audio_processor", None)
    if not isinstance(extractor, Phi4MultimodalFeatureExtractor) or len(clips) < 2:
        return clips
    hop, win = extractor.hop_length, extractor.win_length
    longest = max(len(clip) for clip in clips)
    num_frames = (longest - win) // hop + 1

    def overruns(length: int) -> bool:  # reaches past the batch's frames, with exactly as many frames as the longest
        return length < longest and length // hop - 1 > num_frames and (length - win) // hop + 1 == num_frames

    return [np.pad(np.asarray(clip), (0, longest - len(clip))) if overruns(len(clip)) else clip for clip in clips]


def to_model_inputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Moves the processor's outputs to the model's device; floating-point features take the model's dtype."""
    parameter = next(model.parameters())
    return {
        k: v.to(parameter.device, dtype=parameter.dtype) if v.is_floating_point() else v.to(parameter.device)
        for k, v in inputs.items()
    }


def select_rows(inputs: dict[str, Any], rows: list[int], audio_rows: list[int]) -> dict[str, Any]:
    """The processor's outputs for the prompt rows `rows` (repeats allowed), in that order; `audio_rows` are the rows
    of `inputs` that carry a clip.

    Per-row entries (first dimension = the number of rows: `input_ids`, `attention_mask`, ...) are indexed by row;
    per-clip entries (audio features, stacked one clip per audio row, in row order) by the clips of the selected audio
    rows. In an all-audio batch the two coincide. `select_rows(inputs, list(range(b)) * n, ...)` repeats a batch of
    `b` rows in TRL's layout (all prompts, then all prompts again).
    """
    num_rows = inputs["input_ids"].size(0)
    clip_of = {row: clip for clip, row in enumerate(audio_rows)}
    clips = [clip_of[row] for row in rows if row in clip_of]
    selected = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            selected[key] = value
        elif value.size(0) == num_rows:
            selected[key] = value[rows]
        else:
            selected[key] = value[clips]
    return selected


def without_audio_parts(prompt: Any) -> Any:
    """The prompt as text-only messages, for text reward models and judges, which cannot hear the audio."""
    if not is_conversational({"prompt": prompt}):
        return prompt
    messages = []
    for message in prompt:
        content = message["content"]
        if not isinstance(content, str):
            content = "".join(part["text"] for part in content if part.get("type") == "text" and part.get("text"))
        messages.append({"role": message["role"], "content": content})
    return messages


def prompt_text(prompt: Any) -> str:
    """The text of a prompt as a reader sees it: the messages' text parts (audio left out), one line each."""
    if not is_conversational({"prompt": prompt}):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in without_audio_parts(prompt))


def rows_that_fit(
    batch: dict[str, list], lengths: list[int], max_length: int | None, on_too_long: str, explain: Callable[[int], str]
) -> tuple[list[int], list[str]]:
    """The rule for rows longer than `max_length` tokens (`lengths[i]`: row i's tokens, audio placeholders included,
    plus what is reserved for its completion), which are never truncated: returns the indices of the rows that fit and,
    per row that does not, a message naming it (`row_name`) and saying why (`explain(i)`); with
    `on_too_long="raise"`, raises that message instead."""
    keep, messages = [], []
    for index, length in enumerate(lengths):
        if max_length is None or length <= max_length:
            keep.append(index)
            continue
        row = {key: values[index] for key, values in batch.items()}
        message = f"{row_name(row, index)}: {explain(index)}"
        if on_too_long == "raise":
            raise ValueError(message)
        messages.append(message)
    return keep, messages


def prepare_prompts(
    processing_class: Any,
    batch: dict[str, list],
    max_length: int | None,
    reserved: int,
    reserved_name: str,
    on_too_long: str,
    skip_counter: SkipCounter,
) -> tuple[dict[str, list], dict[str, torch.Tensor]]:
    """Renders the batch's prompts with the chat template and runs the processor once over them (text and audio).
    Rows whose prompt plus `reserved` completion tokens (the config field `reserved_name`) cannot fit in `max_length`
    are left out and counted in `skip_counter` (or raise, as `on_too_long` says), never truncated. Returns the kept
    rows' columns and the processor's outputs for them as one dict (empty when no row is left)."""
    prompt_inputs = process_prompts(processing_class, render_prompts(processing_class, batch), batch.get("audio"))
    prompt_lengths = prompt_inputs["attention_mask"].sum(dim=1).tolist()
    keep, messages = rows_that_fit(
        batch,
        [length + reserved for length in prompt_lengths],
        max_length,
        on_too_long,
        lambda i: (
            f"its prompt is {prompt_lengths[i]} tokens (audio placeholders included); with {reserved_name}="
            f"{reserved} it exceeds max_length={max_length}. Raise max_length or use shorter audio; prompts are never "
            "truncated."
        ),
    )
    if not messages:
        return batch, prompt_inputs
    for message in messages:
        skip_counter.add("prompt_too_long", message)
    kept = {key: [values[i] for i in keep] for key, values in batch.items()}
    if not keep:
        return kept, {}
    return prepare_prompts(processing_class, kept, max_length, reserved, reserved_name, on_too_long, skip_counter)


class AnsweredPromptCollator:
    """Base of the collators that put each row's prompt (with its clip) before answers the rows give: SFT's transcript,
    offline DPO's chosen and rejected transcripts. It decodes the clips (`AudioPromptCollator`: bad audio skipped or
    raising, as `on_error` says), renders and processes the prompts (`render_prompts`, `process_prompts`), tokenizes
    each answer column apart with the chat template's end of turn after it (`end_of_turn`: what the model learns to say
    after an answer), and leaves out (or raises on, as `on_too_long` says) a row whose prompt plus longest answer is
    longer than `max_length` tokens, never truncating; the rows left out are counted by reason under `SKIPPED_KEY`.
    Subclasses name their `answer_columns` and build the batch from the processed prompts and tokenized answers
    (`collate`), and say what a batch with no row left holds (`empty`)."""

    answer_columns: tuple[str, ...] = ()
    answer_name = "answer"  # in the too-long message

    def __init__(
        self,
        processing_class: Any,
        max_length: int | None = None,
        on_error: str = "skip",
        on_too_long: str = "skip",
        max_audio_seconds: float | None = None,
    ):
        self.processing_class = processing_class
        self.max_length = max_length
        self.on_too_long = on_too_long
        self.read_audio = AudioPromptCollator(processor_sampling_rate(processing_class), on_error, max_audio_seconds)
        self.end_of_turn = end_of_turn(processing_class)

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        batch = self.read_audio(features)
        skipped = Counter(batch.pop(SKIPPED_KEY))
        collated = self._process(batch, skipped)
        collated[SKIPPED_KEY] = dict(skipped)
        return collated

    def collate(
        self, batch: dict[str, list], prompts: dict[str, torch.Tensor], answers: list[dict[str, torch.Tensor]]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def empty(self) -> dict[str, Any]:
        raise NotImplementedError

    def _process(self, batch: dict[str, list], skipped: Counter) -> dict[str, Any]:
        if not batch["prompt"]:
            return self.empty()
        prompts = process_prompts(
            self.processing_class, render_prompts(self.processing_class, batch), batch.get("audio")
        )
        answers = [
            tokenizer_of(self.processing_class)(
                [_answer_text(answer) + self.end_of_turn for answer in batch[column]],
                padding=True,
                padding_side="right",
                add_special_tokens=False,
                return_tensors="pt",
            )
            for column in self.answer_columns
        ]
        longest = torch.stack([answer["attention_mask"].sum(1) for answer in answers]).max(0).values
        lengths = (prompts["attention_mask"].sum(1) + longest).tolist()
        keep, messages = rows_that_fit(
            batch,
            lengths,
            self.max_length,
            self.on_too_long,
            lambda i: (
                f"its prompt (audio placeholders included) and {self.answer_name} are {lengths[i]} tokens, more than "
                f"max_length={self.max_length}. Raise max_length or use shorter audio; rows are never truncated."
            ),
        )
        if messages:
            for message in messages:
                logger.warning("Skipping %s", message)
            skipped["prompt_too_long"] += len(messages)
            return self._process({key: [values[i] for i in keep] for key, values in batch.items()}, skipped)
        return self.collate(batch, prompts, answers)


def _answer_text(answer: Any) -> str:
    """An answer column's value as text: a string, or assistant messages (`create_audio_dataset`'s `chosen`)."""
    if isinstance(answer, str):
        return answer
    return "".join(message["content"] for message in answer if message["role"] == "assistant")
