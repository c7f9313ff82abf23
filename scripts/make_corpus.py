"""Writes a synthetic speech corpus (`trl_audio.corpus`): template sentences naming rare surnames, read by espeak-ng
in 10 voices, 7 speeds and 3 pitches, with a held-out test split of new combinations; deterministic from the seed.

Usage:
    python scripts/make_corpus.py --out_dir /tmp/corpus --workers 2   # the recipe's corpus (trl_audio.recipe.CORPUS)
    python scripts/make_corpus.py --out_dir /tmp/corpus_small --num_sentences 300 --seed 1 --test_fraction 0.2 \
        --workers 2

Needs espeak-ng: `pip install espeakng-loader` or `apt-get install espeak-ng`. The corpus is read with
`create_audio_dataset("jsonl", jsonl_paths="/tmp/corpus/train.jsonl")`.
"""

import argparse
import json
import logging
import time

from trl_audio.corpus import make_corpus
from trl_audio.recipe import CORPUS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="Where to write the corpus; must be new or empty.")
    parser.add_argument("--num_sentences", type=int, default=CORPUS["num_sentences"], help="Train and test together.")
    parser.add_argument("--seed", type=int, default=CORPUS["seed"], help="Seed of the sentences.")
    parser.add_argument("--test_fraction", type=float, default=CORPUS["test_fraction"], help="Held-out share.")
    parser.add_argument("--workers", type=int, default=1, help="Synthesis processes (one per core).")
    parser.add_argument("--train_rows", type=int, default=None, help="Synthesize only the first train rows.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.info("Arguments: %s", vars(args))
    start = time.perf_counter()
    info = make_corpus(
        args.out_dir, args.num_sentences, args.seed, args.test_fraction, args.workers, train_rows=args.train_rows
    )
    logging.info("%s", json.dumps({k: v for k, v in info.items() if k != "description"}))
    logging.info("Wrote %s in %.1f s", args.out_dir, time.perf_counter() - start)


if __name__ == "__main__":
    main()
