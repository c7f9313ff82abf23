"""Transcription evaluation: greedy batched transcripts of dataset rows, their WER, B-WER and U-WER, and a report."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jiwer
import torch
from transformers import TrainerCallback

from .prompt_inputs import (
    AudioPromptCollator,
    placeholder_token_ids,
    process_prompts,
    processor_sampling_rate,
    render_prompts,
    to_model_inputs,
)
from .text import bias_word_set, normalizer


logger = logging.getLogger(__name__)


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
    hypotheses: Sequence[str],
    references: Sequence[str],
    keywords_per_row: Sequence[Sequence[str]] | None = None,
    normalization: str = "whisper",
) -> dict[str, float | int]:
    """Corpus-level WER of `hypotheses` against `references`, split into biased and unbiased words.

    Both sides are normalized with `normalization` (`"whisper"`, Whisper's English normalizer, or `"simple"`: see
    `text.normalize`, the rewards take the same choice) and aligned row by row with jiwer (minimum edit distance,
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
    is 0 is NaN. `cer` is the same as `wer` over characters of the normalized texts (spaces included, as jiwer counts
    them): character edits summed over rows / reference characters. Returns those rates and the counts: `num_rows`,
    `ref_words`, `bias_ref_words`, `unbiased_ref_words`, `substitutions`, `deletions`, `insertions`, `errors`,
    `b_errors`, `u_errors`, `ref_chars`, `char_errors`.
    """
    normalize = normalizer(normalization)
    if keywords_per_row is None:
        keywords_per_row = [[] for _ in references]
    if not len(hypotheses) == len(references) == len(keywords_per_row):
        raise ValueError(
            f"Got {len(hypotheses)} hypotheses, {len(references)} references and {len(keywords_per_row)} keyword "
            "lists: give one of each per row."
        )
    counts = dict.fromkeys(
        ("ref_words", "bias_ref_words", "substitutions", "deletions", "insertions", "b_errors", "u_errors"), 0
    ) | {"ref_chars": 0, "char_errors": 0}
    for hypothesis, reference, keywords in zip(hypotheses, references, keywords_per_row):
        bias = bias_word_set(keywords, normalization)
        ref_words, hyp_words = normalize(reference).split(), normalize(hypothesis).split()
        counts["ref_words"] += len(ref_words)
        counts["bias_ref_words"] += sum(w in bias for w in ref_words)
        ref_text, hyp_text = " ".join(ref_words), " ".join(hyp_words)
        counts["ref_chars"] += len(ref_text)
        if ref_text:
            chars = jiwer.process_characters(ref_text, hyp_text)
            counts["char_errors"] += chars.substitutions + chars.deletions + chars.insertions
        else:
            counts["char_errors"] += len(hyp_text)
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
        "cer": _rate(counts["char_errors"], counts["ref_chars"]),
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
    normalization: str = "whisper",
) -> dict[str, Any]:
    """Greedy transcripts of `rows` (see `transcribe`) scored against their `text` column by `evaluate_transcripts`
    (under `normalization`),
    with the words of each row's `bias_column` as its bias words: `"keywords"` (the manifest's rare words of the
    transcript) or `"bias_words"` (the list the biasing prompt shows).

    Returns `{"metrics": <evaluate_transcripts' dict>, "transcripts": [{"id", "hypothesis"}, ...]}`.
    """
    hypotheses = transcribe(model, processor, rows, batch_size, max_new_tokens, max_audio_seconds)
    references, bias = [r["text"] for r in rows], [r[bias_column] for r in rows]
    metrics = evaluate_transcripts(hypotheses, references, bias, normalization)
    return {"metrics": metrics, "transcripts": [{"id": r["id"], "hypothesis": h} for r, h in zip(rows, hypotheses)]}


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line of `evaluate_transcripts`' figures: `WER 12.0%  CER 6.0%  B-WER 30.0%  U-WER 10.0%  (10 rows, ...)`."""
    return (
        f"WER {metrics['wer']:.1%}  CER {metrics['cer']:.1%}  B-WER {metrics['b_wer']:.1%}  "
        f"U-WER {metrics['u_wer']:.1%}  "
        f"({metrics['num_rows']} rows, {metrics['ref_words']} words of which {metrics['bias_ref_words']} bias words)"
    )


def utterance_table(
    rows: Sequence[dict], hypotheses: Sequence[str], bias_column: str = "keywords", normalization: str = "whisper"
) -> list[dict]:
    """One record per row: `id`, `reference`, `hypothesis`, its `wer`, and the bias words (the normalized words of its
    `bias_column`, as B-WER counts them) that its reference holds, split into `bias_hit` (in the hypothesis) and
    `bias_missed`."""
    normalize, table = normalizer(normalization), []
    for row, hypothesis in zip(rows, hypotheses):
        reference, keywords = row["text"], row[bias_column] or []
        spoken = bias_word_set(keywords, normalization) & set(normalize(reference).split())
        heard = set(normalize(hypothesis).split())
        table.append(
            {
                "id": row["id"],
                "reference": reference,
                "hypothesis": hypothesis,
                "wer": evaluate_transcripts([hypothesis], [reference], [keywords], normalization)["wer"],
                "bias_hit": sorted(spoken & heard),
                "bias_missed": sorted(spoken - heard),
            }
        )
    return table


class TranscriptionEvalCallback(TrainerCallback):
    """Greedy transcription of one or more evaluation sets, scored by WER, CER, B-WER and U-WER (`evaluate_rows`), at
    the start of training, at the trainer's evaluation points (`eval_strategy` "steps" with `eval_steps`, or "epoch")
    and at the end.

    The figures go through `trainer.log` (so to every logger in `report_to`) as `eval/<set>/wer`, `eval/<set>/cer`,
    `eval/<set>/b_wer` and `eval/<set>/u_wer`; each evaluation's per-utterance table (`utterance_table`: reference,
    hypothesis, WER, bias words hit and missed) is written to `<output_dir>/eval/<set>/step-<step>.jsonl`, and
    `history[<set>]` keeps every evaluation's result. The trainer's own evaluation (a loss over `eval_dataset`) is
    replaced: these rows have no preference pairs or rewards to compute one from. With several processes every process
    transcribes (the model is sharded or replicated) and the main one logs and writes. A run stopped before its last
    step (pre-empted, see `trl_audio.preemption`) is not evaluated at its end: the resumed run will be.

    Args:
        trainer: the audio trainer (online DPO, GRPO, offline DPO) whose model is evaluated (its processor
            transcribes).
        eval_sets: `{name: rows}`, rows as `create_audio_dataset` makes them (`id`, `prompt`, `audio`, `text` and
            the bias column).
        bias_column: the column whose words count as bias words: `"keywords"` (the manifest's rare words) or
            `"bias_words"` (the list the prompt shows).
        batch_size, max_new_tokens: of the greedy transcription; default to the trainer's
            `per_device_eval_batch_size` and `max_new_tokens` (GRPO: `max_completion_length`; offline DPO: 128).
        normalization: of the scoring (`evaluate_transcripts`): `"whisper"` or `"simple"`.
    """

    def __init__(
        self,
        trainer: Any,
        eval_sets: dict[str, Iterable[dict]],
        bias_column: str = "keywords",
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
        normalization: str = "whisper",
    ):
        self.trainer = trainer
        self.normalization = normalization
        self.eval_sets = {name: list(rows) for name, rows in eval_sets.items()}
        self.bias_column = bias_column
        self.batch_size = batch_size or trainer.args.per_device_eval_batch_size
        # the trainer's sampling budget: online DPO's `max_new_tokens`, GRPO's `max_completion_length`; offline DPO
        # samples nothing (TRL's config has neither): 128
        budget = getattr(trainer.args, "max_new_tokens", None) or getattr(trainer.args, "max_completion_length", None)
        self.max_new_tokens = max_new_tokens or budget or 128
        self.history: dict[str, list[dict]] = {name: [] for name in self.eval_sets}
        self._evaluated_at: int | None = None

    def evaluate(self, step: int) -> dict[str, float]:
        """Transcribes and scores every set now (once per step), logs the figures and writes the tables."""
        if step == self._evaluated_at:
            return {}
        self._evaluated_at = step
        args, metrics = self.trainer.args, {}
        for name, rows in self.eval_sets.items():
            result = evaluate_rows(
                self.trainer.model,
                self.trainer.processing_class,
                rows,
                bias_column=self.bias_column,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                max_audio_seconds=args.max_audio_seconds,
                normalization=self.normalization,
            )
            self.history[name].append({"step": step, **result})
            metrics |= {f"eval/{name}/{key}": result["metrics"][key] for key in ("wer", "cer", "b_wer", "u_wer")}
            if self.trainer.is_world_process_zero():
                hypotheses = [t["hypothesis"] for t in result["transcripts"]]
                path = Path(args.output_dir, "eval", name, f"step-{step}.jsonl")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    for record in utterance_table(rows, hypotheses, self.bias_column, self.normalization):
                        f.write(json.dumps(record) + "\n")
            logger.info("Step %d, %s: %s", step, name, format_metrics(result["metrics"]))
        self.trainer.log(metrics)
        return metrics

    def on_train_begin(self, args, state, control, **kwargs):
        self.evaluate(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            self.evaluate(state.global_step)
            control.should_evaluate = False

    def on_epoch_end(self, args, state, control, **kwargs):
        self.on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step < state.max_steps:
            return  # stopped before its end (pre-empted): the run that resumes evaluates at its end
        self.evaluate(state.global_step)
