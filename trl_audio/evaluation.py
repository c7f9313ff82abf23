"""Transcription evaluation: greedy batched transcripts of dataset rows, their WER, B-WER and U-WER, and a report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import jiwer
import torch

from .prompt_inputs import (
    AudioPromptCollator,
    placeholder_token_ids,
    process_prompts,
    processor_sampling_rate,
    render_prompts,
    to_model_inputs,
)
from .text import bias_word_set, normalize_transcript


def transcribe(
    model: torch.nn.Module,
    processor: Any,
    rows: Iterable[dict],
    batch_size: int = 8,
    max_new_tokens: int = 128,
    max_audio_seconds: float | None = None,
) -> list[str]:
    """Greedy transcripts of `rows` (dataset rows as `AudioOnlineDPOTrainer` takes them: `prompt`, `audio`), one
    string per row, in order.

    Each batch goes through the chat template and the processor once (text and audio together, left padding), and
    the processor's outputs reach `generate` as one dict, as in the trainer. Audio and image placeholder tokens are
    never generated. `model` is put in eval mode for the call and given back in the mode it had. Raises
    `AudioLoadError` naming the row for audio that cannot be loaded: an evaluation set should not lose rows silently.
    """
    rows = list(rows)
    tokenizer = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    collate = AudioPromptCollator(processor_sampling_rate(processor), "raise", max_audio_seconds)
    was_training = model.training
    model.eval()
    transcripts = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            texts = render_prompts(processor, batch)
            inputs = to_model_inputs(
                model, process_prompts(processor, texts, batch.get("audio") or [None] * len(texts))
            )
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new_tokens,
                    suppress_tokens=placeholder_token_ids(processor) or None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            completions = output[:, inputs["input_ids"].size(1) :]
            transcripts.extend(t.strip() for t in tokenizer.batch_decode(completions, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return transcripts


def evaluate_transcripts(
    hypotheses: Sequence[str], references: Sequence[str], keywords_per_row: Sequence[Sequence[str]] | None = None
) -> dict[str, float | int]:
    """Corpus-level WER of `hypotheses` against `references`, split into biased and unbiased words.

    Both sides are normalized with `normalize_transcript` and aligned row by row with jiwer (minimum edit distance,
    each operation costing 1). A row's *bias words* are the normalized words of its keywords (`bias_word_set`), as
    in the contextual-biasing literature (Le et al., 2021, "Contextualized streaming end-to-end speech recognition
    with trie-based deep biasing and shallow fusion"); a phrase keyword contributes each of its words, so every
    occurrence of such a word in the reference counts as biased. Then, summing over rows:

    - `wer` = (S + D + I) / N, over all N reference words (errors summed over rows, not an average of row WERs);
    - `b_wer` = (substitutions and deletions of reference words that are bias words, plus insertions of hypothesis
      words that are bias words) / (number of reference words that are bias words);
    - `u_wer` = the same for the other words: (S + D of unbiased reference words + insertions of unbiased words) /
      (number of unbiased reference words).

    So `b_errors + u_errors = errors` and `bias_ref_words + unbiased_ref_words = ref_words`. A rate whose denominator
    is 0 is NaN. Returns those rates and the counts: `num_rows`, `ref_words`, `bias_ref_words`, `unbiased_ref_words`,
    `substitutions`, `deletions`, `insertions`, `errors`, `b_errors`, `u_errors`.
    """
    if keywords_per_row is None:
        keywords_per_row = [[] for _ in references]
    if not len(hypotheses) == len(references) == len(keywords_per_row):
        raise ValueError(
            f"Got {len(hypotheses)} hypotheses, {len(references)} references and {len(keywords_per_row)} keyword "
            "lists: give one of each per row."
        )
    counts = dict.fromkeys(
        ("ref_words", "bias_ref_words", "substitutions", "deletions", "insertions", "b_errors", "u_errors"), 0
    )
    for hypothesis, reference, keywords in zip(hypotheses, references, keywords_per_row):
        bias = bias_word_set(keywords)
        ref_words, hyp_words = normalize_transcript(reference).split(), normalize_transcript(hypothesis).split()
        counts["ref_words"] += len(ref_words)
        counts["bias_ref_words"] += sum(w in bias for w in ref_words)
        if not ref_words:  # jiwer aligns nothing against an empty reference: every word is inserted
            chunks = [jiwer.AlignmentChunk("insert", 0, 0, 0, len(hyp_words))] if hyp_words else []
        else:
            chunks = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words)).alignments[0]
        for chunk in chunks:
            if chunk.type == "equal":
                continue
            if chunk.type == "insert":
                counts["insertions"] += chunk.hyp_end_idx - chunk.hyp_start_idx
                errors = hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx]
            else:  # substitute, delete: the reference words decide which rate the error belongs to
                counts["substitutions" if chunk.type == "substitute" else "deletions"] += (
                    chunk.ref_end_idx - chunk.ref_start_idx
                )
                errors = ref_words[chunk.ref_start_idx : chunk.ref_end_idx]
            for word in errors:
                counts["b_errors" if word in bias else "u_errors"] += 1
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    unbiased_ref_words = counts["ref_words"] - counts["bias_ref_words"]
    return {
        "wer": _rate(errors, counts["ref_words"]),
        "b_wer": _rate(counts["b_errors"], counts["bias_ref_words"]),
        "u_wer": _rate(counts["u_errors"], unbiased_ref_words),
        "num_rows": len(references),
        **counts,
        "unbiased_ref_words": unbiased_ref_words,
        "errors": errors,
    }


def _rate(errors: int, words: int) -> float:
    return errors / words if words else math.nan


def evaluate_rows(
    model: torch.nn.Module,
    processor: Any,
    rows: Sequence[dict],
    bias_column: str = "keywords",
    batch_size: int = 8,
    max_new_tokens: int = 128,
    max_audio_seconds: float | None = None,
) -> dict[str, Any]:
    """Greedy transcripts of `rows` (see `transcribe`) scored against their `text` column by `evaluate_transcripts`,
    with the words of each row's `bias_column` as its bias words: `"keywords"` (the manifest's rare words of the
    transcript) or `"bias_words"` (the list the biasing prompt shows).

    Returns `{"metrics": <evaluate_transcripts' dict>, "transcripts": [{"id", "hypothesis"}, ...]}`.
    """
    hypotheses = transcribe(model, processor, rows, batch_size, max_new_tokens, max_audio_seconds)
    references, bias = [r["text"] for r in rows], [r[bias_column] for r in rows]
    metrics = evaluate_transcripts(hypotheses, references, bias)
    return {"metrics": metrics, "transcripts": [{"id": r["id"], "hypothesis": h} for r, h in zip(rows, hypotheses)]}


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line of `evaluate_transcripts`' figures: `WER 12.0%  B-WER 30.0%  U-WER 10.0%  (10 rows, ...)`."""
    return (
        f"WER {metrics['wer']:.1%}  B-WER {metrics['b_wer']:.1%}  U-WER {metrics['u_wer']:.1%}  "
        f"({metrics['num_rows']} rows, {metrics['ref_words']} words of which {metrics['bias_ref_words']} bias words)"
    )
