"""Manifest readers: TSV (with a header, and the reference fork's legacy rows) and JSONL, with errors that name the
file and the line."""

import pytest

from trl_audio.audio_dataset import create_audio_dataset
from trl_audio.manifests import ManifestError, read_ls_bias, read_tsv


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("short.tsv", "id\taudio_path\ttext\nx\ta.flac\thi\ny\tb.flac\n", r"short\.tsv, line 3: expected 3"),
        ("header.tsv", "id\taudio\ttext\nx\ta.flac\thi\n", r"header\.tsv, line 1: bad header"),
        ("legacy.tsv", "x\t['a.flac']\t[{'messages': [oops]}]\n", r"legacy\.tsv, line 1: unreadable legacy row"),
        ("legacy2.tsv", "x\ta.flac\n", r"legacy2\.tsv, line 1: found 2 tab-separated fields"),
        ("empty.tsv", "\n\n", r"empty\.tsv holds no rows"),
        (
            "latin1.tsv",
            "id\taudio_path\ttext\nx\ta.flac\tcaf\xe9\n".encode("latin-1"),
            r"latin1\.tsv, line 2: not valid",
        ),
        (
            "bad.jsonl",
            '{"audio_path": "a.flac", "text": "hi"}\n{"audio_path": "b.flac", \n',
            r"bad\.jsonl, line 2: invalid",
        ),
        ("list.jsonl", '["a.flac", "hi"]\n', r"list\.jsonl, line 1: expected a JSON object"),
        ("notext.jsonl", '\n{"audio_path": "a.flac"}\n', r"notext\.jsonl, line 2: needs `text`"),
        ("noaudio.jsonl", '{"text": "hi"}\n', r"noaudio\.jsonl, line 1: needs `audio_path`"),
        ("kw.jsonl", '{"audio": "a.flac", "text": "hi", "keywords": 3}\n', r"kw\.jsonl, line 1: `keywords` must"),
    ],
)
def test_malformed_manifests_name_file_and_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    source = "tsv" if name.endswith(".tsv") else "jsonl"
    with pytest.raises(ValueError, match=match):
        create_audio_dataset(source, **{f"{source}_paths": str(path), "on_error": "skip"})


def test_read_tsv_accepts_columns_in_any_order(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("text\taudio_path\tprompt\nhello\ta.flac\tSay it.\n", encoding="utf-8")
    (record,) = read_tsv(str(path))
    assert (record.id, record.audio, record.text, record.instruction) == (
        "a",
        str(tmp_path / "a.flac"),
        "hello",
        "Say it.",
    )


def test_ls_bias_rows_carry_rare_words_and_the_biasing_list(tmp_path):
    path = tmp_path / "test-clean.biasing_3.tsv"
    path.write_text('1089-134686-0000\the hoped there would be stew\t["stew"]\t["beefsteak", "stew", "zwingli"]\n')
    (record,) = read_ls_bias(str(path), "/data/LibriSpeech/test-clean")
    assert record.id == "1089-134686-0000" and record.text == "he hoped there would be stew"
    assert record.keywords == ["stew"] and record.bias_list == ["beefsteak", "stew", "zwingli"]
    assert record.audio == "/data/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac"
    (record,) = read_ls_bias(str(path), "gs://bucket/test-clean", audio_pattern="{id}.wav")
    assert record.audio == "gs://bucket/test-clean/1089-134686-0000.wav"


@pytest.mark.parametrize(
    "content, match",
    [
        ("x\ttext\t[]\n", r"biasing_3\.tsv, line 1: found 3 tab-separated fields"),
        ('x\ttext\t["a"\t["a"]\n', r"line 1: a word list is not valid JSON"),
        ('x\ttext\t{"a": 1}\t["a"]\n', r"line 1: the rare words must be a JSON list of strings"),
        ("\n", r"holds no rows"),
    ],
)
def test_malformed_ls_bias_lists_name_file_and_line(tmp_path, content, match):
    path = tmp_path / "test-clean.biasing_3.tsv"
    path.write_text(content)
    with pytest.raises(ManifestError, match=match):
        read_ls_bias(str(path), str(tmp_path))
