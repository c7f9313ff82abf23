"""Contextual-biasing lists: a row's keywords, or words or short pieces of its transcript, mixed with distractors."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .audio_utils import read_text_lines
from .prompts import TRANSCRIBE_PROMPT, make_instruction
from .text import DISTRACTOR_POOL_SIZE, PiecePool, strip_punct, word_set


HIT_SOURCES = ("transcript", "keywords")


def split_spans(num_words: int, max_piece_len: int, rng: random.Random) -> list[tuple[int, int]]:
    """Cut `range(num_words)` into consecutive `(start, end)` spans of 1 to `max_piece_len` words each."""
    spans, start = [], 0
    while start < num_words:
        end = min(num_words, start + rng.randint(1, max_piece_len))
        spans.append((start, end))
        start = end
    return spans


def read_word_file(path: str) -> list[str]:
    """Distractor words or phrases, one a line (anything after a tab is ignored, so `word<TAB>count` lists work).

    `path` is local or a cloud URL (read through blobfile). Blank lines are skipped.
    """
    try:
        lines = read_text_lines(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Biasing word file not found: {path}. Fix `biasing.word_file`.") from e
    words = [w for w in (line.split("\t")[0].strip() for _, line in lines) if w]
    if not words:
        raise ValueError(f"Biasing word file {path} holds no words: give one word or phrase per line.")
    return words


@dataclass
class BiasingConfig:
    """The `biasing` block of a dataset config.

    Args:
        bias_prob (`float`, *optional*, defaults to `0.9`):
            Probability that a row gets a biasing prompt; other rows get the plain transcription prompt.
        hit_prob (`float`, *optional*, defaults to `0.9`):
            With `hit_source="transcript"`: probability that each slot of the biasing list holds a piece of the row's
            own transcript (a hit) rather than a distractor; `1` lists only pieces of the transcript, `0` only
            distractors. With `hit_source="keywords"`: probability that each of the row's keywords is listed.
        max_piece_len (`int`, *optional*, defaults to `1`):
            Longest piece, in words: the transcript is cut into consecutive pieces of 1 to `max_piece_len` words. Not
            used with `hit_source="keywords"` (a keyword phrase is listed whole).
        max_num (`int`, *optional*, defaults to `2`):
            Longest biasing list; each biased row lists between 1 and `max_num` entries, hits and distractors.
        word_file (`str` or `None`, *optional*, defaults to `None`):
            File of distractor words or phrases, one a line (local or cloud URL). Without it, distractors are pieces
            of the previous rows' transcripts (`hit_source="transcript"`) or the previous rows' keywords
            (`hit_source="keywords"`). Either way a distractor never shares a word with the row's transcript
            (case-insensitive).
        tag (`str`, *optional*, defaults to `""`):
            When set (e.g. `"*"`), each listed piece is wrapped in it (`*Lovelace*`) and so are the hits in `text`, to
            train a model that marks the biasing words it recognised.
        hit_source (`str`, *optional*, defaults to `"transcript"`):
            Where the hits come from. `"transcript"`: random words or pieces of the row's transcript (common words
            such as "the" included). `"keywords"`: the row's `keywords` (its rare words, which B-WER and the
            bias-word recall reward score), as in the contextual-biasing literature: each is listed with probability
            `hit_prob` (at most `max_num` of them), and a list of `n ~ U{1..max_num}` entries is filled up with
            distractors. A row without keywords gets the plain prompt: transcript pieces would bring back the
            common-word lists this mode avoids, and the reward ignores such rows anyway.
    """

    bias_prob: float = 0.9
    hit_prob: float = 0.9
    max_piece_len: int = 1
    max_num: int = 2
    word_file: str | None = None
    tag: str = ""
    hit_source: str = "transcript"

    def __post_init__(self):
        if self.hit_source not in HIT_SOURCES:
            raise ValueError(f"biasing.hit_source must be one of {list(HIT_SOURCES)}, got {self.hit_source!r}.")
        for name in ("bias_prob", "hit_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"biasing.{name} must lie in [0, 1], got {getattr(self, name)}.")
        for name in ("max_piece_len", "max_num"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"biasing.{name} must be an integer >= 1, got {getattr(self, name)}.")


@dataclass
class BiasSample:
    """What biasing makes of one row: the list shown in the prompt, the hits among it, and the (tagged) transcript."""

    bias_words: list[str]
    hits: list[str] = field(default_factory=list)
    text: str = ""

    def instruction(self, instruction: str = TRANSCRIBE_PROMPT) -> str:
        return make_instruction(self.bias_words, instruction)


def sample_bias_words(
    text: str, rng: random.Random, config: BiasingConfig, distractors: PiecePool, pieces: Sequence[str] | None = None
) -> BiasSample:
    """Draw the biasing list of one row.

    With probability `config.bias_prob` the list holds `n ~ U{1..max_num}` slots, each a hit (a piece of `text`) with
    probability `hit_prob`, else a distractor from `distractors` sharing no word with `text`; duplicates and
    unavailable pieces leave slots empty (an empty list means the plain prompt), and the list is shuffled. `pieces`
    are the transcript's pieces when the caller already cut them (`cut_pieces`). Uses only `rng`, so a per-row seeded
    `rng` gives a per-row result.
    """
    if pieces is None:
        pieces = cut_pieces(text, config.max_piece_len, rng)
    if rng.random() >= config.bias_prob:
        return BiasSample(bias_words=[], text=text)
    num = rng.randint(1, config.max_num)
    num_hits = sum(rng.random() < config.hit_prob for _ in range(num))
    unique: dict[str, str] = {}  # case-insensitive: "The" and "the" are one piece, listed with its first spelling
    for piece in pieces:
        if piece:
            unique.setdefault(piece.lower(), piece)
    hits = rng.sample(list(unique.values()), min(num_hits, len(unique)))
    misses = distractors.sample(rng, num - num_hits, exclude_words=word_set(text), taken=set(hits))
    return _bias_sample(text, hits, misses, rng, config.tag)


def sample_keyword_bias(
    text: str, keywords: Sequence[str], rng: random.Random, config: BiasingConfig, distractors: PiecePool
) -> BiasSample:
    """Draw the biasing list of one row from its `keywords` (`hit_source="keywords"`).

    A row without keywords gets no list (the plain prompt). Otherwise, with probability `config.bias_prob`: a list
    length `n ~ U{1..max_num}`; each distinct keyword (case-insensitive, a phrase kept whole) is a hit with
    probability `hit_prob`, at most `max_num` of them (a random subset when more); the `n` minus hits slots left, if
    any, hold distractors from `distractors` sharing no word with `text` or the keywords. The list is shuffled. Uses
    only `rng`.
    """
    unique: dict[str, str] = {}
    for keyword in keywords:
        if keyword.strip():
            unique.setdefault(keyword.strip().lower(), keyword.strip())
    if not unique or rng.random() >= config.bias_prob:
        return BiasSample(bias_words=[], text=text)
    num = rng.randint(1, config.max_num)
    hits = [k for k in unique.values() if rng.random() < config.hit_prob]
    if len(hits) > config.max_num:
        hits = rng.sample(hits, config.max_num)
    exclude = word_set(text) | word_set(" ".join(unique.values()))
    misses = distractors.sample(rng, max(0, num - len(hits)), exclude_words=exclude, taken=set(hits))
    return _bias_sample(text, hits, misses, rng, config.tag)


def _bias_sample(text: str, hits: list[str], misses: list[str], rng: random.Random, tag: str) -> BiasSample:
    listed = hits + misses
    rng.shuffle(listed)
    if tag:
        text = tag_text(text, hits, tag)
        listed = [f"{tag}{p}{tag}" for p in listed]
    return BiasSample(bias_words=listed, hits=hits, text=text)


def cut_pieces(text: str, max_piece_len: int, rng: random.Random) -> list[str]:
    """`text` cut into consecutive pieces of 1 to `max_piece_len` words, without punctuation at their ends."""
    words = text.split()
    return [strip_punct(" ".join(words[s:e])) for s, e in split_spans(len(words), max_piece_len, rng)]


def tag_text(text: str, pieces: Sequence[str], tag: str) -> str:
    """`text` with every occurrence of each piece (whole words, case-insensitive) wrapped in `tag`."""
    for piece in sorted(pieces, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w{re.escape(tag)}]){re.escape(piece)}(?![\w{re.escape(tag)}])", re.IGNORECASE)
        text = pattern.sub(lambda m: f"{tag}{m.group(0)}{tag}", text)
    return text


class Biaser:
    """Per-dataset biasing state: the config and the distractor pool, fed with each row's pieces (or keywords, with
    `hit_source="keywords"`) after the row's list is drawn."""

    def __init__(self, config: BiasingConfig, word_list: list[str] | None = None):
        """`word_list` is `config.word_file` already read (`read_word_file`), to read it once for many passes."""
        self.config = config
        self.learns = config.word_file is None
        if self.learns:
            self.pool = PiecePool(capacity=DISTRACTOR_POOL_SIZE)
        else:
            self.pool = PiecePool(word_list if word_list is not None else read_word_file(config.word_file))

    def __call__(self, text: str, rng: random.Random, keywords: Sequence[str] = ()) -> BiasSample:
        """The biasing list of a row with transcript `text` and ground-truth `keywords` (used by `hit_source`
        `"keywords"` only)."""
        if self.config.hit_source == "keywords":
            sample = sample_keyword_bias(text, keywords, rng, self.config, self.pool)
            if self.learns:  # after drawing, as for pieces: the pool holds earlier rows only, the same when streaming
                self.pool.add(k.strip() for k in keywords if k.strip())
            return sample
        pieces = cut_pieces(text, self.config.max_piece_len, rng)
        sample = sample_bias_words(text, rng, self.config, self.pool, pieces=pieces)
        if self.learns:  # after drawing, so that a row never meets its own pieces as distractors
            self.pool.add(p for p in pieces if p)
        return sample
