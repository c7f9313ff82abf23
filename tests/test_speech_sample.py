"""Checks the bundled speech sample (examples/data/speech_sample/) that the tests and demos use as real speech."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples/data/speech_sample"
TSV_HEADER = "id\taudio_path\ttext\tkeywords"
# espeak-ng speech peak-normalized to -3 dBFS has an RMS of 0.07-0.12; silence or a near-empty clip is far below.
MIN_RMS = 0.01


def read_metadata():
    with open(SAMPLE_DIR / "metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_split(name):
    path = SAMPLE_DIR / f"{name}.tsv"
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\n")
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert header == TSV_HEADER, f"{path}: header {header!r}"
    for row in rows:
        assert len(row) == 4, f"{path}: row {row}"
    return [
        {"id": id_, "audio_path": audio_path, "text": text, "keywords": keywords.split("|")}
        for id_, audio_path, text, keywords in rows
    ]


METADATA = read_metadata()


def test_metadata_rows():
    assert len(METADATA) >= 40
    ids = [row["id"] for row in METADATA]
    assert len(set(ids)) == len(ids), "duplicate ids"
    texts = [row["text"] for row in METADATA]
    assert len(set(texts)) == len(texts), "duplicate transcripts"
    for row in METADATA:
        assert set(row) == {"id", "audio_path", "text", "keywords"}, row
        assert row["audio_path"] == f"audio/{row['id']}.flac", row
        assert row["text"].strip(), row
        assert not any(c.isdigit() for c in row["text"]), f"{row['id']}: digits are spoken unpredictably"
        assert 1 <= len(row["keywords"]) <= 4, row
        for keyword in row["keywords"]:
            assert keyword and keyword in row["text"], f"{row['id']}: keyword {keyword!r} not in {row['text']!r}"


@pytest.mark.parametrize("row", METADATA, ids=lambda row: row["id"])
def test_clip(row):
    path = SAMPLE_DIR / row["audio_path"]
    audio, sampling_rate = sf.read(path, dtype="float32", always_2d=True)
    assert sampling_rate == 16000, path
    assert audio.shape[1] == 1, path
    assert sf.info(path).subtype == "PCM_16", path
    assert 2.0 <= len(audio) / sampling_rate <= 8.0, f"{path}: {len(audio) / sampling_rate:.2f} s"
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > MIN_RMS, f"{path}: RMS {rms:.4f}"


def test_splits_partition_metadata():
    train, test = read_split("train"), read_split("test")
    train_ids, test_ids = {row["id"] for row in train}, {row["id"] for row in test}
    assert len(train_ids) == len(train) and len(test_ids) == len(test), "duplicate ids in a split"
    assert not train_ids & test_ids, f"in both splits: {sorted(train_ids & test_ids)}"
    assert train and test
    by_id = {row["id"]: row for row in METADATA}
    assert train_ids | test_ids == set(by_id)
    for row in train + test:
        assert row == by_id[row["id"]], row
        # TSV paths are relative to the TSV's folder, which is also the metadata's folder.
        assert (SAMPLE_DIR / row["audio_path"]).is_file(), row


def test_no_stray_audio():
    listed = {SAMPLE_DIR / row["audio_path"] for row in METADATA}
    assert set((SAMPLE_DIR / "audio").iterdir()) == listed


def test_folder_size():
    size = sum(path.stat().st_size for path in SAMPLE_DIR.rglob("*") if path.is_file())
    assert size < 5 * 1024 * 1024, f"{SAMPLE_DIR} holds {size / 2**20:.2f} MiB"
