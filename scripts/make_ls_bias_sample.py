"""Writes examples/data/speech_sample/ls_bias/test-clean.biasing_20.tsv: the bundled test split's 10 utterances in the
format of the LibriSpeech biasing lists of Le et al. (2021) (facebookresearch/fbai-speech `is21_deep_bias/ref/`), for
tests and examples of the `ls_bias` dataset source. Deterministic.

Usage:
    python scripts/make_ls_bias_sample.py

As in the real lists: the text is lower case without punctuation (apostrophes kept), the rare words are the
utterance's rare words (here: the words of its keywords), and the biasing list holds them plus distractors (here:
the words of the other utterances' keywords, never a word of the utterance), N = 20 entries, sorted.
"""

import json
import random
import re
from pathlib import Path


SAMPLE = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
LIST_SIZE = 20


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def main() -> None:
    lines = (SAMPLE / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [dict(zip(("id", "audio_path", "text", "keywords"), line.split("\t"))) for line in lines]
    keyword_words = {row["id"]: sorted({w for k in row["keywords"].split("|") for w in words(k)}) for row in rows}
    pool = sorted({w for ws in keyword_words.values() for w in ws})
    rng = random.Random(0)
    out = []
    for row in rows:
        spoken = set(words(row["text"]))
        rare = keyword_words[row["id"]]
        distractors = [w for w in pool if w not in spoken]
        listed = sorted(rare + rng.sample(distractors, LIST_SIZE - len(rare)))
        out.append("\t".join([row["id"], " ".join(words(row["text"])), json.dumps(rare), json.dumps(listed)]))
    path = SAMPLE / "ls_bias" / f"test-clean.biasing_{LIST_SIZE}.tsv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(out)} rows)")


if __name__ == "__main__":
    main()
