"""Rows left out instead of stopping a run: the reasons, and one counter that the dataset builders, the collator and
the trainer share (the trainer logs it as `data/skipped/<reason>`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping


logger = logging.getLogger(__name__)

# What to do with a bad row, wherever it is met: stop with an error naming it, or leave it out and count it.
ON_ERROR_CHOICES = ("raise", "skip")
SKIP_REASONS = (
    "empty_text",  # the row's reference transcript is empty
    "audio_missing",  # its audio file does not exist
    "audio_unreadable",  # its audio file is not audio soundfile can decode
    "audio_empty",  # its audio has no samples
    "audio_too_long",  # its audio lasts longer than max_audio_seconds
    "prompt_too_long",  # its prompt plus max_new_tokens (SFT: plus its transcript) exceeds the trainer's max_length
)


class SkipCounter:
    """Rows left out, counted by reason (`SKIP_REASONS`).

    Create one and pass it to `create_audio_dataset(..., skip_counter=...)` and `AudioOnlineDPOTrainer(...,
    skip_counter=...)` to have the trainer log the dataset's skips with its own. A streaming dataset counts rows as
    they are consumed, so the counts grow during training (and again on each pass over the data); they are counted in
    the process that iterates, not in DataLoader worker processes.
    """

    def __init__(self):
        self.by_reason: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, message: str) -> None:
        """Count one row left out for `reason`, with a warning naming it (`message`)."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"Unknown skip reason {reason!r}: use one of {list(SKIP_REASONS)}.")
        self.by_reason[reason] += 1
        logger.warning("Skipped %s [%s]", message, reason)

    def update(self, counts: Mapping[str, int]) -> None:
        """Add counts whose rows were already reported where they were left out (e.g. by a collator)."""
        self.by_reason.update(counts)

    def as_dict(self) -> dict[str, int]:
        """`{"total": n, <reason>: count, ...}` for the reasons met so far."""
        return {"total": self.total, **self.by_reason}

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"
