"""Where speech rows come from: TSV and JSONL manifests (the reference fork's legacy TSV included), LibriSpeech
biasing lists and ESB (OpenASR) splits, read into `Record`s with their audio paths resolved; no checks of the audio
and no prompts (see `audio_dataset`)."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Audio, Dataset, IterableDataset

from .audio_utils import CLOUD_PREFIXES, read_text_lines, resolve_path
from .prompts import TRANSCRIBE_PROMPT


ESB_REPO = "hf-audio/esb-datasets-test-only-sorted"
TSV_COLUMNS = ("id", "audio_path", "text", "keywords", "prompt")


class ManifestError(ValueError):
    """A manifest (TSV, JSONL, config) that cannot be parsed; the message names the file, the line and the fix."""


@dataclass
class Record:
    """One source row before its checks: `audio` is an absolute path or URL, or a `datasets` Audio dict."""

    id: str
    audio: Any
    text: str
    origin: str  # where the row comes from, for messages: "train.tsv, line 3"
    keywords: list[str] = field(default_factory=list)
    instruction: str = TRANSCRIBE_PROMPT
    bias_list: list[str] | None = None  # a biasing list the source gives with the row (ls_bias), shown as it is


def manifest_dir(manifest: str) -> str:
    """The folder a manifest's relative paths resolve against (a URL's parent for cloud manifests)."""
    return manifest.rsplit("/", 1)[0] if manifest.startswith(CLOUD_PREFIXES) else os.path.dirname(manifest) or "."


def as_path_list(paths: str | os.PathLike | list) -> list[str]:
    """One path or a list of them, as a list of strings."""
    return [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]


def _keywords(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split("|") if k.strip()]
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return value
    raise ManifestError(f"{where}: `keywords` must be a list of strings or a '|'-separated string, got {value!r}.")


def _manifest_record(
    manifest: str, where: str, audio_path: str, text: str, row_id: Any, keywords: Any, prompt: str | None
) -> Record:
    """The record of one TSV or JSONL row: audio resolved against the manifest's folder, id defaulting to the audio
    file's stem, keywords parsed, and the row's `prompt` (if any) as its instruction."""
    audio = resolve_path(audio_path.strip(), manifest_dir(manifest))
    return Record(
        id=str(row_id).strip() if row_id is not None and str(row_id).strip() else Path(audio).stem,
        audio=audio,
        text=text.strip(),
        origin=where,
        keywords=_keywords(keywords, where),
        instruction=(prompt or "").strip() or TRANSCRIBE_PROMPT,
    )


def read_tsv(path: str) -> list[Record]:
    """Rows of a TSV manifest, in either format.

    - With a header: `id<TAB>audio_path<TAB>text[<TAB>keywords]` (any order; `id` and `keywords` optional, and an
      optional `prompt` column overrides the instruction); keywords are separated by `|`.
    - Headerless legacy (the reference fork): `id<TAB>['path.flac']<TAB>[{'messages': [..., {'role': 'assistant',
      'content': 'reference'}]}]`, Python literals parsed with `ast.literal_eval` (never `eval`); the first path and
      the last message's content are used.

    Relative audio paths resolve against the TSV's folder. Raises `ManifestError` naming the file and line.
    """
    lines = [(n, line) for n, line in read_text_lines(path) if line.strip()]
    if not lines:
        raise ManifestError(f"{path} holds no rows. Give a header `id<TAB>audio_path<TAB>text` and one row a line.")
    header = lines[0][1].split("\t")
    if "audio_path" in header or "text" in header:
        return _read_tsv_with_header(path, header, lines[1:])
    return [_legacy_tsv_row(path, n, line) for n, line in lines]


def _read_tsv_with_header(path: str, header: list[str], lines: list[tuple[int, str]]) -> list[Record]:
    columns = [c.strip() for c in header]
    bad = [c for c in columns if c not in TSV_COLUMNS] + [c for c in ("audio_path", "text") if c not in columns]
    if bad or len(set(columns)) != len(columns):
        raise ManifestError(
            f"{path}, line 1: bad header {columns}. Use the columns id, audio_path, text and optionally keywords and "
            f"prompt, tab-separated, each once (allowed: {list(TSV_COLUMNS)})."
        )
    records = []
    for lineno, line in lines:
        values = line.split("\t")
        if len(values) != len(columns):
            raise ManifestError(
                f"{path}, line {lineno}: expected {len(columns)} tab-separated fields ({', '.join(columns)}), found "
                f"{len(values)}. Tabs are not allowed inside a field."
            )
        row = dict(zip(columns, values))
        where = f"{path}, line {lineno}"
        records.append(
            _manifest_record(
                path, where, row["audio_path"], row["text"], row.get("id"), row.get("keywords"), row.get("prompt")
            )
        )
    return records


def _legacy_tsv_row(path: str, lineno: int, line: str) -> Record:
    where = f"{path}, line {lineno}"
    values = line.split("\t")
    fix = (
        "Expected a header `id<TAB>audio_path<TAB>text[<TAB>keywords]`, or headerless legacy rows "
        "`id<TAB>['audio.flac']<TAB>[{'messages': [...]}]`."
    )
    if len(values) != 3:
        raise ManifestError(f"{where}: found {len(values)} tab-separated fields. {fix}")
    try:
        audio_paths, messages = ast.literal_eval(values[1].strip()), ast.literal_eval(values[2].strip())
        text = messages[0]["messages"][-1]["content"]
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError, MemoryError, RecursionError) as e:
        raise ManifestError(f"{where}: unreadable legacy row ({type(e).__name__}: {e}). {fix}") from e
    if not (isinstance(audio_paths, list) and audio_paths and isinstance(audio_paths[0], str)):
        raise ManifestError(f"{where}: the second field must be a list of audio paths, got {values[1]!r}. {fix}")
    if not isinstance(text, str):
        raise ManifestError(f"{where}: the last message's content must be the reference text, got {text!r}. {fix}")
    return _manifest_record(path, where, audio_paths[0], text, values[0], None, None)


def read_jsonl(path: str) -> list[Record]:
    """Rows of a JSONL manifest: one object a line with `audio_path` (or `audio`), `text`, and optional `id`,
    `keywords` (a list, or a `|`-separated string) and `prompt` (a task instruction replacing the default); other keys
    are ignored. Relative audio paths resolve against the file's folder. Raises `ManifestError` naming file and line.
    """
    records = []
    for lineno, line in read_text_lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: invalid JSON ({e.msg}, column {e.colno}). Write one object a line.") from e
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
        audio = obj.get("audio_path", obj.get("audio"))
        if not isinstance(audio, str) or not audio.strip():
            raise ManifestError(f"{where}: needs `audio_path` (or `audio`): the path or URL of the audio file.")
        if not isinstance(obj.get("text"), str):
            raise ManifestError(f"{where}: needs `text`, the reference transcript as a string.")
        prompt = obj.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ManifestError(f"{where}: `prompt` must be a string (a task instruction), got {prompt!r}.")
        records.append(_manifest_record(path, where, audio, obj["text"], obj.get("id"), obj.get("keywords"), prompt))
    if not records:
        raise ManifestError(f"{path} holds no rows: write one JSON object a line.")
    return records


LS_BIAS_AUDIO_PATTERN = "{speaker}/{chapter}/{id}.flac"


def read_ls_bias(path: str, audio_dir: str, audio_pattern: str = LS_BIAS_AUDIO_PATTERN) -> list[Record]:
    """Rows of a LibriSpeech contextual-biasing list (Le et al., 2021; facebookresearch/fbai-speech
    `is21_deep_bias/ref/test-{clean,other}.biasing_{N}.tsv`): four tab-separated fields a line, the utterance id, its
    reference text, the JSON list of its rare words (the ground-truth bias words: `keywords`), and the JSON list of N
    biasing words, a superset of them (`bias_list`, the list the prompt shows).

    The lists carry no audio paths: each row's audio is `audio_dir` joined with `audio_pattern` filled with the row's
    `id` and, for LibriSpeech ids (`1089-134686-0000`), `speaker` and `chapter`; `audio_dir` is the split's folder of
    a LibriSpeech copy (`.../LibriSpeech/test-clean`), local or a cloud URL. Raises `ManifestError` naming the file and
    the line.
    """
    fix = "Expected `id<TAB>text<TAB>[rare words]<TAB>[biasing words]`, the lists in JSON."
    records = []
    for lineno, line in read_text_lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        fields_ = line.split("\t")
        if len(fields_) != 4:
            raise ManifestError(f"{where}: found {len(fields_)} tab-separated fields. {fix}")
        row_id, text = fields_[0].strip(), fields_[1].strip()
        try:
            rare, listed = json.loads(fields_[2]), json.loads(fields_[3])
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: a word list is not valid JSON ({e.msg}). {fix}") from e
        for name, words in (("rare words", rare), ("biasing words", listed)):
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ManifestError(f"{where}: the {name} must be a JSON list of strings, got {words!r}. {fix}")
        parts = row_id.split("-")
        names = {"id": row_id, "speaker": parts[0], "chapter": parts[1] if len(parts) == 3 else ""}
        try:
            relative = audio_pattern.format(**names)
        except KeyError as e:
            raise ManifestError(
                f"audio_pattern {audio_pattern!r} names {e}: use {{id}}, {{speaker}}, {{chapter}}."
            ) from e
        records.append(
            Record(
                id=row_id,
                audio=resolve_path(relative, audio_dir),
                text=text,
                origin=where,
                keywords=rare,
                bias_list=listed,
            )
        )
    if not records:
        raise ManifestError(f"{path} holds no rows: write one utterance a line. {fix}")
    return records


def load_esb(name: str, split: str, data_dir: str | None, streaming: bool) -> Dataset | IterableDataset:
    """The ESB split `name`/`split` (from the hub, or from the local copy `data_dir`; see `create_audio_dataset`) as a
    `datasets` object whose `audio` is left undecoded (`datasets` would need FFmpeg)."""
    if data_dir:
        ds, where = _load_local_esb(name, split, data_dir, streaming), data_dir
    else:
        # Not covered by the tests (no hub access there): everything after loading is, through a local copy.
        where = f"{ESB_REPO} ({name}, {split})"
        try:
            ds = datasets.load_dataset(ESB_REPO, name, split=split, streaming=streaming)
        except Exception as e:  # offline, unknown name or split: all need the same advice
            raise RuntimeError(
                f"Could not load {where} from the Hugging Face Hub: {e}. Check `name` and `split`; when offline, "
                "download the split elsewhere and point `data_dir` at a `save_to_disk` folder or its parquet files."
            ) from e
    if ds.features is None:  # a streamed source that does not declare its columns: rows are checked one by one
        return ds
    missing = {"audio", "text"} - set(ds.features)
    if missing:
        raise ValueError(f"{where} lacks the column(s) {sorted(missing)}: an ESB split has audio, text and id.")
    if isinstance(ds.features["audio"], Audio):
        ds = ds.cast_column("audio", Audio(decode=False))
    return ds


def _load_local_esb(name: str, split: str, data_dir: str, streaming: bool) -> Dataset | IterableDataset:
    path = Path(data_dir)
    if (path / "dataset_dict.json").exists():
        splits = datasets.load_from_disk(str(path))
        if split not in splits:
            raise ValueError(f"{path} has no split {split!r}: set `split` to one of {list(splits)}.")
        ds = splits[split]
    elif (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
    else:
        if path.is_file():
            files = [path]
        else:
            patterns = (f"{name}/{split}-*.parquet", f"{split}-*.parquet", "*.parquet")
            files = next((found for p in patterns if (found := sorted(path.glob(p)))), [])
        if not files:
            raise FileNotFoundError(
                f"No dataset in data_dir={path}: expected a `save_to_disk` folder, a parquet file, or parquet files "
                f"named like the hub's ({name}/{split}-*.parquet)."
            )
        # Read lazily even when not streaming: the rows are copied once anyway, so no cache needs writing.
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)
    return ds.to_iterable_dataset() if streaming else ds


def esb_records(ds: Dataset | IterableDataset, name: str, split: str, data_dir: str | None) -> Iterator[Record]:
    """The records of an ESB split loaded by `load_esb` (same `name`, `split` and `data_dir`)."""
    where = data_dir or f"{ESB_REPO} ({name}, {split})"
    # A local copy may hold audio paths rather than bytes: relative ones resolve against it, as in a manifest.
    anchor = None
    if data_dir:
        anchor = data_dir if os.path.isdir(data_dir) else os.path.dirname(os.path.abspath(data_dir))
    for index, row in enumerate(ds):
        audio = row.get("audio")
        if anchor and isinstance(audio, str):
            audio = resolve_path(audio, anchor)
        elif anchor and isinstance(audio, dict) and not audio.get("bytes") and audio.get("path"):
            audio = {**audio, "path": resolve_path(audio["path"], anchor)}
        if not isinstance(row.get("text"), (str, type(None))):
            raise ManifestError(f"{where}, row {index}: `text` must be a string, got {row.get('text')!r}.")
        row_id = row.get("id")
        yield Record(
            id=str(row_id) if row_id is not None else f"{name}/{split}/{index}",
            audio=audio,
            text=(row.get("text") or "").strip(),
            origin=f"{where}, row {index}",
        )
