"""Simulated preference pairs: a `rejected` transcript made by injecting word errors into the reference, or by
swapping one of its listed rare words for a sound-alike from the row's biasing list (`bias_substitute_prob`)."""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

from .text import DISTRACTOR_POOL_SIZE, PiecePool, normalize_word, strip_punct, word_set


OPERATIONS = ("substitute", "delete", "insert")
# Stand-ins when no other row offers a word absent from the transcript (first rows, tiny datasets).
COMMON_WORDS = (
    "the", "of", "and", "to", "in", "that", "it", "was", "for", "on", "are", "as", "with", "his", "they", "at",
    "be", "this", "have", "from", "or", "had", "by", "but", "some", "what", "there", "we", "can", "out", "other",
    "were", "all", "your", "when", "up", "use", "word", "how", "said", "an", "each", "she", "which", "do", "their",
    "time", "if", "will", "way", "about", "many", "then", "them", "would", "write", "like", "so", "these", "her",
)  # fmt: skip


@dataclass
class ErrorSimulationConfig:
    """The `simu_preference` block of a dataset config (`simu_perference`, the reference fork's spelling, also works).

    Args:
        error_range (`tuple[float, float]` or `float`, *optional*, defaults to `(0.1, 0.25)`):
            Word error rate of `rejected` against `chosen`, drawn uniformly per row from this range; a single number
            fixes it. The realised WER lies in the range whenever the transcript's word count allows it (a 3-word
            transcript can only have WER 0, 1/3, ...): otherwise the nearest reachable rate, with at least one error
            when the range excludes 0.
        substitute_prob (`float`, *optional*, defaults to `0.1`):
            Relative weight of substitutions among the injected errors; substitutes are words of other rows (or
            common English words) absent from the transcript.
        delete_prob (`float`, *optional*, defaults to `0.1`):
            Relative weight of deletions.
        insert_prob (`float`, *optional*, defaults to `0.05`):
            Relative weight of insertions (a word added after a transcript word).
        bias_substitute_prob (`float`, *optional*, defaults to `0.0`):
            Probability that a row's `rejected` is instead its reference with one rare word swapped for a sound-alike
            from the row's biasing list (the listed word most similar in spelling to it, `"Okonkwo"` for `"Okafor"`):
            the error a biased model makes. It needs a row whose transcript holds one of its `keywords` and whose
            list holds another word absent from the transcript; other rows get the errors above. `0` (the default)
            leaves the simulation, and its random draws, as they were.
    """

    error_range: tuple[float, float] = (0.1, 0.25)
    substitute_prob: float = 0.1
    delete_prob: float = 0.1
    insert_prob: float = 0.05
    bias_substitute_prob: float = 0.0

    def __post_init__(self):
        if isinstance(self.error_range, (int, float)):
            self.error_range = (float(self.error_range), float(self.error_range))
        if len(self.error_range) != 2 or not 0.0 <= self.error_range[0] <= self.error_range[1] <= 1.0:
            raise ValueError(
                f"simu_preference.error_range must be [low, high] with 0 <= low <= high <= 1, got {self.error_range}."
            )
        self.error_range = (float(self.error_range[0]), float(self.error_range[1]))
        if not 0.0 <= self.bias_substitute_prob <= 1.0:
            raise ValueError(
                f"simu_preference.bias_substitute_prob must lie in [0, 1], got {self.bias_substitute_prob}."
            )
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(
                "simu_preference.substitute_prob, delete_prob and insert_prob must be >= 0 with at least one > 0, got "
                f"{self.weights}."
            )

    @property
    def weights(self) -> tuple[float, float, float]:
        """Weights of `OPERATIONS`, in that order."""
        return (self.substitute_prob, self.delete_prob, self.insert_prob)


def num_errors_for(num_words: int, error_range: tuple[float, float], rng: random.Random) -> int:
    """How many word errors give a rate drawn uniformly from `error_range` on a `num_words`-word transcript."""
    low, high = error_range
    k_min, k_max = math.ceil(low * num_words - 1e-9), math.floor(high * num_words + 1e-9)
    if k_min <= k_max:
        return min(max(round(rng.uniform(low, high) * num_words), k_min), k_max)
    # No whole count lands in the range (k_min == k_max + 1): take the nearer of the two neighbours.
    k = k_max if low * num_words - k_max <= k_min - high * num_words else k_min
    return max(k, 1 if low > 0 else 0)


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions of `hypothesis` against `reference` (jiwer's minimal alignment)."""
    out = jiwer.process_words(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions


def inject_errors(
    text: str,
    num_errors: int,
    rng: random.Random,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    vocabulary: PiecePool | Sequence[str] = (),
) -> str:
    """`text` with `num_errors` operations at distinct word positions, each drawn from `OPERATIONS` by `weights`.

    New words (substitutes, insertions) come from `vocabulary`, then `COMMON_WORDS`, and never occur in `text`
    (case-insensitive), so each operation costs exactly one word error -- except a deletion right next to an
    insertion, which an alignment may count as one substitution (`simulate_rejected` checks and redraws).
    """
    words = text.split()
    if not 0 <= num_errors <= len(words):
        raise ValueError(f"Cannot inject {num_errors} errors into a {len(words)}-word transcript: {text!r}.")
    pool = vocabulary if isinstance(vocabulary, PiecePool) else PiecePool(vocabulary)
    exclude = word_set(text)
    ops = dict(zip(rng.sample(range(len(words)), num_errors), rng.choices(OPERATIONS, weights, k=num_errors)))
    out = []
    for i, word in enumerate(words):
        op = ops.get(i)
        if op == "substitute":
            out.append(_new_word(rng, pool, exclude))
        elif op == "insert":
            out += [word, _new_word(rng, pool, exclude)]
        elif op != "delete":
            out.append(word)
    return " ".join(out)


def _new_word(rng: random.Random, pool: PiecePool, exclude: set[str]) -> str:
    for candidates in (pool, PiecePool(COMMON_WORDS)):
        picked = candidates.sample(rng, 1, exclude_words=exclude)
        if picked:
            return picked[0]
    n = 0  # every common word occurs in the transcript: make one up
    while f"uh{n}" in exclude:
        n += 1
    return f"uh{n}"


def simulate_rejected(
    text: str, rng: random.Random, config: ErrorSimulationConfig, vocabulary: PiecePool | Sequence[str] = ()
) -> str:
    """A corrupted copy of `text` whose word error rate against `text` lies in `config.error_range` (see there)."""
    num_words = len(text.split())
    if num_words == 0:
        return text
    k = num_errors_for(num_words, config.error_range, rng)
    for _ in range(20):
        rejected = inject_errors(text, k, rng, config.weights, vocabulary)
        if word_errors(text, rejected) == k:
            return rejected
    # Only a deletion next to an insertion can merge into fewer errors: without insertions the count is exact.
    s, d, i = config.weights
    return inject_errors(text, k, rng, (s, d, 0.0) if d > 0 else (s, d, i), vocabulary)


def swap_rare_word(
    text: str, keywords: Sequence[str], bias_words: Sequence[str], rng: random.Random
) -> tuple[str, str, str] | None:
    """`text` with one occurrence of one of its one-word `keywords` replaced by the word of `bias_words` most similar
    to it in spelling (difflib's ratio, lower case) among those absent from `text`, punctuation around it kept:
    `(rejected, keyword, substitute)`. None when no keyword occurs in `text` or the list offers no substitute."""
    words = text.split()
    present = word_set(text)
    candidates = [w for w in bias_words if " " not in w.strip() and normalize_word(w) not in present]
    positions = [i for i, w in enumerate(words) if normalize_word(w) in {normalize_word(k) for k in keywords}]
    if not positions or not candidates:
        return None
    position = rng.choice(positions)
    keyword = strip_punct(words[position])
    substitute = max(
        candidates, key=lambda w: difflib.SequenceMatcher(None, keyword.lower(), w.lower()).ratio()
    ).strip()
    words[position] = words[position].replace(keyword, substitute, 1)
    return " ".join(words), keyword, substitute


class ErrorSimulator:
    """Per-dataset simulation state: the config and a vocabulary of the previous rows' words, used as substitutes."""

    def __init__(self, config: ErrorSimulationConfig):
        self.config = config
        self.vocabulary = PiecePool(capacity=DISTRACTOR_POOL_SIZE)

    def __call__(
        self,
        text: str,
        rng: random.Random,
        keywords: Sequence[str] | None = None,
        bias_words: Sequence[str] | None = None,
    ) -> str:
        """The `rejected` side of `text`: one rare word swapped (`swap_rare_word`) with probability
        `bias_substitute_prob` where the row allows it, else errors injected at `error_range`."""
        rejected = None
        if self.config.bias_substitute_prob > 0 and rng.random() < self.config.bias_substitute_prob:
            swapped = swap_rare_word(text, keywords or [], bias_words or [], rng)
            rejected = swapped[0] if swapped is not None else None
        if rejected is None:
            rejected = simulate_rejected(text, rng, self.config, self.vocabulary)
        self.vocabulary.add(w for w in map(strip_punct, text.split()) if w)
        return rejected
