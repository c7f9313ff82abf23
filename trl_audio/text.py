"""Words and text normalization, in two strengths: `normalize_transcript` (Whisper's English normalizer) for scoring
transcripts, and `normalize_word` (lower case, no end punctuation) for building biasing lists and simulated errors."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from functools import cache

from whisper_normalizer.english import EnglishTextNormalizer


# Pieces of the last rows kept as distractors or substitutes: enough variety, bounded memory when streaming.
DISTRACTOR_POOL_SIZE = 10_000
_LEADING_PUNCT = re.compile(r"^[^\w]+")
_TRAILING_PUNCT = re.compile(r"[^\w]+$")


@cache
def _whisper_normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize_transcript(text: str) -> str:
    """The form transcripts are scored in (WER, B-WER, bias-word recall): Whisper's English normalization (case,
    punctuation, spelling variants, numbers), whitespace collapsed."""
    return " ".join(_whisper_normalizer()(text).split())


def bias_word_set(keywords: Sequence[str]) -> set[str]:
    """The scored words of a row's keywords: `["Ada Lovelace", "moth"]` -> `{"ada", "lovelace", "moth"}`."""
    return {word for keyword in keywords for word in normalize_transcript(keyword).split()}


def strip_punct(piece: str) -> str:
    """`piece` without punctuation at its two ends (inner apostrophes, hyphens and commas stay)."""
    return _TRAILING_PUNCT.sub("", _LEADING_PUNCT.sub("", piece))


def normalize_word(word: str) -> str:
    """The light form used to compare words when building biasing lists and simulated errors: lower case, no
    punctuation at the ends (`"Babbage,"` -> `"babbage"`). Spelling is kept, unlike `normalize_transcript`."""
    return strip_punct(word.lower())


def word_set(text: str) -> set[str]:
    """The words of `text` under `normalize_word`."""
    return {w for w in map(normalize_word, text.split()) if w}


class PiecePool:
    """Words or phrases to draw from: a fixed list (a word file), or a ring buffer of the pieces of the last rows
    seen (biasing distractors, substitutes of simulated errors)."""

    def __init__(self, items: Iterable[str] = (), capacity: int | None = None):
        self.items: list[str] = list(items)
        self.capacity = capacity
        self._next = 0  # slot overwritten next once the buffer is full

    def __len__(self) -> int:
        return len(self.items)

    def add(self, pieces: Iterable[str]) -> None:
        for piece in pieces:
            if self.capacity is None or len(self.items) < self.capacity:
                self.items.append(piece)
            else:
                self.items[self._next] = piece
                self._next = (self._next + 1) % self.capacity

    def sample(self, rng: random.Random, k: int, exclude_words: set[str], taken: set[str] = frozenset()) -> list[str]:
        """Up to `k` distinct pieces none of whose words is in `exclude_words` and not already in `taken`.

        Draws at random with a bounded number of tries, so a pool made mostly of excluded words gives fewer pieces.
        """
        chosen: list[str] = []
        seen = {p.lower() for p in taken}
        for _ in range(20 * k + 20):
            if len(chosen) == k or not self.items:
                break
            piece = self.items[rng.randrange(len(self.items))]
            words = [normalize_word(w) for w in piece.split()]
            if piece.lower() in seen or not any(words) or any(w in exclude_words for w in words):
                continue
            seen.add(piece.lower())
            chosen.append(piece)
        return chosen
