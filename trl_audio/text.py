"""Words and text normalization: the forms transcripts are scored in (`normalize(text, how)`: `"whisper"`, Whisper's
English normalizer, or `"simple"`), and `normalize_word` (lower case, no end punctuation) for building biasing lists
and simulated errors."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
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
    """The default form transcripts are scored in (WER, B-WER, bias-word recall): Whisper's English normalization
    (case, punctuation, spelling variants, contractions, numbers: "Two" and "2" both become "2"), whitespace
    collapsed."""
    return " ".join(_whisper_normalizer()(text).split())


def normalize_simple(text: str) -> str:
    """The plain scoring form: lower case, punctuation (Unicode category P) removed, whitespace collapsed. Spelling and
    numbers stay as written (`"Two cats, don't!"` -> `"two cats dont"`)."""
    return " ".join("".join(c for c in text.lower() if not unicodedata.category(c).startswith("P")).split())


# The scoring normalizations, by the name `normalize`, the rewards and `evaluate_transcripts` take ("whisper" by
# default).
NORMALIZERS: dict[str, Callable[[str], str]] = {"whisper": normalize_transcript, "simple": normalize_simple}


def normalizer(how: str) -> Callable[[str], str]:
    """The normalization called `how` (a key of `NORMALIZERS`); raises naming the valid ones otherwise."""
    if how not in NORMALIZERS:
        raise ValueError(f"Unknown normalization {how!r}: choose one of {list(NORMALIZERS)}.")
    return NORMALIZERS[how]


def normalize(text: str, how: str = "whisper") -> str:
    """`text` in the scoring form `how`: `"whisper"` (`normalize_transcript`) or `"simple"` (`normalize_simple`)."""
    return normalizer(how)(text)


def bias_word_set(keywords: Sequence[str], how: str = "whisper") -> set[str]:
    """The scored words of a row's keywords under normalization `how`: `["Ada Lovelace", "moth"]` ->
    `{"ada", "lovelace", "moth"}`."""
    return {word for keyword in keywords for word in normalize(keyword, how).split()}


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
