"""Speech datasets for online DPO: OpenASR (ESB), TSV and JSONL sources made into rows of audio, prompt, reference."""

from __future__ import annotations

import ast
import difflib
import json
import logging
import os
import posixpath
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
from datasets import Audio, Dataset, Features, IterableDataset, List, Value

from .audio_utils import CLOUD_PREFIXES, AudioLoadError, audio_info, load_audio, read_text_lines
from .biasing import Biaser, BiasingConfig, read_word_file
from .error_simulation import ErrorSimulationConfig, ErrorSimulator
from .prompts import TRANSCRIBE_PROMPT, make_instruction, make_prompt


logger = logging.getLogger(__name__)

ESB_REPO = "hf-audio/esb-datasets-test-only-sorted"
SOURCES = ("openasr", "tsv", "jsonl")
ON_ERROR = ("raise", "skip")
SKIP_REASONS = ("empty_text", "missing_file", "unreadable_audio", "empty_audio", "too_long")
TSV_COLUMNS = ("id", "audio_path", "text", "keywords", "prompt")
SOURCE_KEYS = {"openasr": ("name", "split", "data_dir"), "tsv": ("tsv_paths",), "jsonl": ("jsonl_paths",)}
# Paths in a config file, resolved against the file's folder by `load_dataset_config`.
PATH_KEYS = ("data_dir", "tsv_paths", "jsonl_paths")


class ManifestError(ValueError):
    """A manifest (TSV, JSONL, config) that cannot be parsed; the message names the file, the line and the fix."""


class BadRowError(ValueError):
    """A row whose transcript or audio is unusable (with `on_error="raise"`); `reason` is one of `SKIP_REASONS`."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class SkipCounter:
    """Rows dropped under `on_error="skip"`, counted by reason (`SKIP_REASONS`).

    Each skip logs one warning naming the row, its manifest line and the file. A streaming dataset counts rows as they
    are consumed, so the counts grow during training (and again on each pass over the data); they are counted in the
    process that iterates, not in DataLoader worker processes.
    """

    def __init__(self):
        self.by_reason: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, message: str) -> None:
        self.by_reason[reason] += 1
        logger.warning("Skipped %s [%s]", message, reason)

    def as_dict(self) -> dict[str, int]:
        """`{"total": n, <reason>: count, ...}`, e.g. for logging as `data/skipped`."""
        return {"total": self.total, **self.by_reason}

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


@dataclass
class Record:
    """One source row before its checks: `audio` is an absolute path or URL, or a `datasets` Audio dict."""

    id: str
    audio: Any
    text: str
    origin: str  # where the row comes from, for messages: "train.tsv, line 3"
    keywords: list[str] = field(default_factory=list)
    instruction: str = TRANSCRIBE_PROMPT


@dataclass
class DatasetConfig:
    """The validated keys of `create_audio_dataset` (documented there)."""

    name: str = "librispeech"
    split: str = "test.clean"
    data_dir: str | None = None
    tsv_paths: str | list[str] | None = None
    jsonl_paths: str | list[str] | None = None
    streaming: bool = False
    num_egs: int | None = None
    load_audio: bool = False
    sampling_rate: int = 16_000
    max_audio_seconds: float | None = None
    check_audio: bool = True
    on_error: str = "raise"
    seed: int = 0
    biasing: BiasingConfig | None = None
    simu_preference: ErrorSimulationConfig | None = None


def _valid_keys(dataset_name: str) -> list[str]:
    common = [f.name for f in fields(DatasetConfig) if not any(f.name in keys for keys in SOURCE_KEYS.values())]
    return sorted([*common, "simu_perference", *SOURCE_KEYS[dataset_name]])


def _check_keys(given: dict, valid: list[str], where: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" for k in unknown if (m := difflib.get_close_matches(k, valid, 1))]
        raise ValueError(
            f"Unknown key(s) {unknown} in {where}. "
            + (f"Suspected typos: {', '.join(hints)}. " if hints else "")
            + f"Valid keys: {valid}."
        )


def _block(value: Any, cls: type, where: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a dict of {[f.name for f in fields(cls)]}, got {value!r}.")
    _check_keys(value, [f.name for f in fields(cls)], where)
    return cls(**value)


def validate_config(dataset_name: str, **config: Any) -> DatasetConfig:
    """Check a dataset config (the keys of `create_audio_dataset`) and return it with its blocks as dataclasses.

    Raises `ValueError` for an unknown source, an unknown key (listing the valid ones), or a value out of range.
    """
    if dataset_name not in SOURCES:
        raise ValueError(f"Unknown dataset_name {dataset_name!r}: use one of {list(SOURCES)}.")
    _check_keys(config, _valid_keys(dataset_name), f"the {dataset_name!r} dataset config")
    if "simu_perference" in config:  # the reference fork's spelling
        if "simu_preference" in config:
            raise ValueError("Give either simu_preference or its alias simu_perference, not both.")
        config["simu_preference"] = config.pop("simu_perference")
    config["biasing"] = _block(config.get("biasing"), BiasingConfig, "the biasing block")
    config["simu_preference"] = _block(config.get("simu_preference"), ErrorSimulationConfig, "simu_preference")
    cfg = DatasetConfig(**config)
    if cfg.on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {cfg.on_error!r}.")
    if cfg.num_egs is not None and (int(cfg.num_egs) != cfg.num_egs or cfg.num_egs < 1):
        raise ValueError(f"num_egs must be a positive integer or None, got {cfg.num_egs!r}.")
    if int(cfg.sampling_rate) != cfg.sampling_rate or cfg.sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {cfg.sampling_rate!r}.")
    if cfg.max_audio_seconds is not None and cfg.max_audio_seconds <= 0:
        raise ValueError(f"max_audio_seconds must be > 0 or None, got {cfg.max_audio_seconds!r}.")
    if dataset_name == "openasr" and cfg.biasing and cfg.biasing.hit_source == "keywords":
        raise ValueError(
            "biasing.hit_source='keywords' lists each row's keywords, and ESB (openasr) rows have none: use "
            "hit_source='transcript', or a tsv/jsonl manifest with a `keywords` column."
        )
    paths_key = {"tsv": "tsv_paths", "jsonl": "jsonl_paths"}.get(dataset_name)
    if paths_key and not getattr(cfg, paths_key):
        raise ValueError(f"The {dataset_name!r} source needs `{paths_key}`: one manifest path or a list of them.")
    return cfg


def load_dataset_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON dataset config (one object with `dataset_name` and the keys of `create_audio_dataset`).

    Relative paths in it (`tsv_paths`, `jsonl_paths`, `data_dir`, `biasing.word_file`) resolve against the file's
    folder, so the config works from any working directory. The result is validated, and is used as
    `create_audio_dataset(**load_dataset_config(path))`.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}).") from e
    if not isinstance(config, dict) or "dataset_name" not in config:
        raise ManifestError(f"{path} must hold one JSON object with a `dataset_name` key ({' / '.join(SOURCES)}).")

    def resolve(p: str) -> str:
        return p if p.startswith(CLOUD_PREFIXES) or os.path.isabs(p) else os.path.normpath(path.parent.resolve() / p)

    for key in PATH_KEYS:
        if isinstance(config.get(key), str):
            config[key] = resolve(config[key])
        elif isinstance(config.get(key), list):
            config[key] = [resolve(p) for p in config[key]]
    if isinstance(config.get("biasing"), dict) and config["biasing"].get("word_file"):
        config["biasing"]["word_file"] = resolve(config["biasing"]["word_file"])
    try:
        validate_config(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return config


# ---------------------------------------------------------------- sources


def resolve_audio_path(audio_path: str, manifest: str) -> str:
    """`audio_path` made absolute: URLs and absolute paths as they are, relative ones against the manifest's folder."""
    if audio_path.startswith(CLOUD_PREFIXES) or os.path.isabs(audio_path):
        return audio_path
    if manifest.startswith(CLOUD_PREFIXES):
        return posixpath.join(posixpath.dirname(manifest), audio_path)
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(manifest)), audio_path))


def _paths(paths: str | list[str]) -> list[str]:
    return [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]


def _keywords(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split("|") if k.strip()]
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return value
    raise ManifestError(f"{where}: `keywords` must be a list of strings or a '|'-separated string, got {value!r}.")


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
        audio = resolve_audio_path(row["audio_path"].strip(), path)
        where = f"{path}, line {lineno}"
        records.append(
            Record(
                id=row.get("id", "").strip() or Path(audio).stem,
                audio=audio,
                text=row["text"].strip(),
                origin=where,
                keywords=_keywords(row.get("keywords"), where),
                instruction=row.get("prompt", "").strip() or TRANSCRIBE_PROMPT,
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
    audio = resolve_audio_path(audio_paths[0], path)
    return Record(id=values[0].strip(), audio=audio, text=text.strip(), origin=where)


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
        audio = resolve_audio_path(audio.strip(), path)
        records.append(
            Record(
                id=str(obj["id"]) if obj.get("id") is not None else Path(audio).stem,
                audio=audio,
                text=obj["text"].strip(),
                origin=where,
                keywords=_keywords(obj.get("keywords"), where),
                instruction=(prompt or "").strip() or TRANSCRIBE_PROMPT,
            )
        )
    if not records:
        raise ManifestError(f"{path} holds no rows: write one JSON object a line.")
    return records


def _load_esb(cfg: DatasetConfig) -> Dataset | IterableDataset:
    """The ESB split as a `datasets` object whose `audio` is left undecoded (`datasets` would need FFmpeg)."""
    if cfg.data_dir:
        ds, where = _load_local_esb(cfg), cfg.data_dir
    else:
        # Not covered by the tests (no hub access there): everything after loading is, through a local copy.
        where = f"{ESB_REPO} ({cfg.name}, {cfg.split})"
        try:
            ds = datasets.load_dataset(ESB_REPO, cfg.name, split=cfg.split, streaming=cfg.streaming)
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


def _load_local_esb(cfg: DatasetConfig) -> Dataset | IterableDataset:
    path = Path(cfg.data_dir)
    if (path / "dataset_dict.json").exists():
        splits = datasets.load_from_disk(str(path))
        if cfg.split not in splits:
            raise ValueError(f"{path} has no split {cfg.split!r}: set `split` to one of {list(splits)}.")
        ds = splits[cfg.split]
    elif (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
    else:
        if path.is_file():
            files = [path]
        else:
            patterns = (f"{cfg.name}/{cfg.split}-*.parquet", f"{cfg.split}-*.parquet", "*.parquet")
            files = next((found for p in patterns if (found := sorted(path.glob(p)))), [])
        if not files:
            raise FileNotFoundError(
                f"No dataset in data_dir={path}: expected a `save_to_disk` folder, a parquet file, or parquet files "
                f"named like the hub's ({cfg.name}/{cfg.split}-*.parquet)."
            )
        # Read lazily even when not streaming: the rows are copied once anyway, so no cache needs writing.
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)
    return ds.to_iterable_dataset() if cfg.streaming else ds


def _esb_records(cfg: DatasetConfig, ds: Dataset | IterableDataset) -> Iterator[Record]:
    where = cfg.data_dir or f"{ESB_REPO} ({cfg.name}, {cfg.split})"
    # A local copy may hold audio paths rather than bytes: relative ones resolve against it, as in a manifest.
    anchor = os.path.join(cfg.data_dir, "_") if cfg.data_dir and os.path.isdir(cfg.data_dir) else cfg.data_dir
    for index, row in enumerate(ds):
        audio = row.get("audio")
        if anchor and isinstance(audio, str):
            audio = resolve_audio_path(audio, anchor)
        elif anchor and isinstance(audio, dict) and not audio.get("bytes") and audio.get("path"):
            audio = {**audio, "path": resolve_audio_path(audio["path"], anchor)}
        if not isinstance(row.get("text"), (str, type(None))):
            raise ManifestError(f"{where}, row {index}: `text` must be a string, got {row.get('text')!r}.")
        row_id = row.get("id")
        yield Record(
            id=str(row_id) if row_id is not None else f"{cfg.name}/{cfg.split}/{index}",
            audio=audio,
            text=(row.get("text") or "").strip(),
            origin=f"{where}, row {index}",
        )


# ---------------------------------------------------------------- rows


def _features(decoded: bool, preference: bool) -> Features:
    message = {"role": Value("string"), "content": Value("string")}
    features = {
        "id": Value("string"),
        "prompt": List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}),
        "audio": {"array": List(Value("float32")), "sampling_rate": Value("int32")} if decoded else Value("string"),
        "text": Value("string"),
        "keywords": List(Value("string")),
        "bias_words": List(Value("string")),
    }
    if preference:
        features |= {"chosen": List(message), "rejected": List(message)}
    return Features(features)


class _RowBuilder:
    """Turns source records into rows; one pass of `rows()` is the dataset (called again for each streaming pass)."""

    def __init__(self, dataset_name: str, cfg: DatasetConfig):
        self.cfg = cfg
        self.skipped = SkipCounter()
        # ESB rows carry audio bytes rather than files, so their audio is always decoded.
        self.decode = cfg.load_audio or dataset_name == "openasr"
        # The streaming path hands rows to `datasets` as they are: lists there equal what a table gives back.
        self.array_as_list = cfg.streaming
        self.word_list = read_word_file(cfg.biasing.word_file) if cfg.biasing and cfg.biasing.word_file else None
        self.esb, self.records = None, []
        if dataset_name == "openasr":
            self.esb = _load_esb(cfg)
        else:  # manifests are small: parse them now, so that a malformed line fails before any training
            reader = read_tsv if dataset_name == "tsv" else read_jsonl
            self.records = [r for p in _paths(cfg.tsv_paths or cfg.jsonl_paths) for r in reader(p)]
            if cfg.biasing and cfg.biasing.hit_source == "keywords" and not any(r.keywords for r in self.records):
                raise ValueError(
                    f"biasing.hit_source='keywords', but no row of {_paths(cfg.tsv_paths or cfg.jsonl_paths)} has "
                    "keywords, so every prompt would be plain: add a `keywords` column or use "
                    "hit_source='transcript'."
                )

    def source(self) -> Iterator[Record]:
        return iter(self.records) if self.esb is None else _esb_records(self.cfg, self.esb)

    def rows(self) -> Iterator[dict]:
        cfg = self.cfg
        biaser = Biaser(cfg.biasing, self.word_list) if cfg.biasing else None  # fresh state: every pass is the same
        simulator = ErrorSimulator(cfg.simu_preference) if cfg.simu_preference else None
        emitted = 0
        for index, record in enumerate(self.source()):
            if cfg.num_egs is not None and emitted >= cfg.num_egs:
                return
            row = self._row(index, record, biaser, simulator)
            if row is not None:
                emitted += 1
                yield row

    def _audio(self, record: Record) -> Any:
        cfg = self.cfg
        if self.decode:
            array = load_audio(record.audio, cfg.sampling_rate, cfg.max_audio_seconds)
            return {"array": array.tolist() if self.array_as_list else array, "sampling_rate": cfg.sampling_rate}
        if cfg.check_audio:
            audio_info(record.audio, cfg.max_audio_seconds)
        return record.audio

    def _row(self, index: int, record: Record, biaser: Biaser | None, simulator: ErrorSimulator | None) -> dict | None:
        try:
            if not record.text:
                raise BadRowError("empty transcript", reason="empty_text")
            audio = self._audio(record)
        except (AudioLoadError, BadRowError) as e:
            message = f"row {record.id!r} ({record.origin}): {str(e).rstrip('.')}"
            if self.cfg.on_error == "raise":
                raise BadRowError(
                    f"Bad {message}. Fix or remove the row, or set on_error='skip' to drop such rows (they are "
                    "counted).",
                    reason=e.reason,
                ) from e
            self.skipped.add(e.reason, message)
            return None
        text, bias_words = record.text, []
        if biaser is not None:  # seeded per row, so a row's prompt does not depend on global random state
            sample = biaser(text, random.Random(f"{self.cfg.seed}-{index}-biasing"), record.keywords)
            text, bias_words = sample.text, sample.bias_words
        row = {
            "id": record.id,
            "prompt": make_prompt(make_instruction(bias_words, record.instruction)),
            "audio": audio,
            "text": text,
            "keywords": record.keywords,
            "bias_words": bias_words,
        }
        if simulator is not None:
            rejected = simulator(text, random.Random(f"{self.cfg.seed}-{index}-preference"))
            row["chosen"] = [{"role": "assistant", "content": text}]
            row["rejected"] = [{"role": "assistant", "content": rejected}]
        return row


def _generate(builder: _RowBuilder) -> Iterator[dict]:
    yield from builder.rows()


def create_audio_dataset(dataset_name: str = "openasr", **config: Any) -> Dataset | IterableDataset:
    """Build a speech dataset for `AudioOnlineDPOTrainer` from OpenASR (ESB), TSV or JSONL sources.

    Each row has `id`, `prompt` (one user turn: an `{"type": "audio"}` part, then the instruction text), `audio` (an
    absolute path or URL, or `{"array", "sampling_rate"}` when decoded), `text` (the reference), `keywords` (the
    manifest's ground-truth rare words), `bias_words` (the list the prompt shows) and, with `simu_preference`,
    `chosen` / `rejected` (`[{"role": "assistant", "content": ...}]`).

    Args:
        dataset_name (`str`, defaults to `"openasr"`):
            `"openasr"` (an ESB test set, `hf-audio/esb-datasets-test-only-sorted`, or a local copy), `"tsv"` or
            `"jsonl"` (manifests pointing at audio files; see `read_tsv` / `read_jsonl` for the formats).
        name (`str`, *optional*, defaults to `"librispeech"`):
            openasr only: the ESB config (librispeech, ami, earnings22, gigaspeech, spgispeech, tedlium, voxpopuli).
        split (`str`, *optional*, defaults to `"test.clean"`):
            openasr only: the split.
        data_dir (`str`, *optional*):
            openasr only: a local copy with the ESB columns (`audio`, `text`, `id`): a `save_to_disk` folder (of a
            split or of a DatasetDict holding `split`), a parquet file, or a folder of parquet files (the hub layout
            `{name}/{split}-*.parquet` is recognised). Without it the split is loaded from the hub.
        tsv_paths (`str` or `list[str]`):
            tsv only, required: one or more TSV manifests (local or cloud URLs).
        jsonl_paths (`str` or `list[str]`):
            jsonl only, required: one or more JSONL manifests (local or cloud URLs).
        streaming (`bool`, *optional*, defaults to `False`):
            Return an `IterableDataset` that checks and decodes rows as they are consumed; it yields the same rows as
            the non-streaming `Dataset`.
        num_egs (`int`, *optional*):
            Keep only the first `num_egs` rows (counted after skipped rows).
        load_audio (`bool`, *optional*, defaults to `False`):
            Decode audio into `{"array", "sampling_rate"}` (mono, resampled to `sampling_rate`) instead of giving
            paths. openasr rows are always decoded: ESB stores audio bytes, not files.
        sampling_rate (`int`, *optional*, defaults to `16000`):
            Target rate of decoded audio.
        max_audio_seconds (`float`, *optional*):
            Longest audio kept; longer rows are bad rows (see `on_error`). Checked on the real duration.
        check_audio (`bool`, *optional*, defaults to `True`):
            Without `load_audio`, open each audio file's header when the row is built, so missing, non-audio, empty or
            too long files are caught here rather than in the trainer. Set `False` to skip this (e.g. for millions of
            cloud files, each of which would be fetched).
        on_error (`str`, *optional*, defaults to `"raise"`):
            What to do with a bad row (missing, unreadable or non-audio file, zero-length or too long audio, empty
            transcript): `"raise"` a `BadRowError` naming the row, its manifest line and the file, or `"skip"` it with
            one warning, counted in `dataset.skipped`. Malformed manifest lines always raise `ManifestError`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of biasing and error simulation, combined with each row's index: the same config gives the same
            dataset.
        biasing (`dict`, *optional*):
            Contextual-biasing prompts: `bias_prob`, `hit_prob`, `max_piece_len`, `max_num`, `word_file`, `tag`,
            `hit_source` (see `trl_audio.biasing.BiasingConfig`). `{}` uses the defaults; absent or `None` gives every
            row the plain transcription prompt. `hit_source` says where the listed hits come from: `"transcript"`
            (the default) cuts random words or pieces from the transcript, common ones included; `"keywords"` lists
            the row's `keywords` (each with probability `hit_prob`, a phrase whole, at most `max_num` entries with the
            distractors), the words B-WER and the bias-word recall reward score, with distractors from the previous
            rows' keywords (or `word_file`), never sharing a word with the row's transcript. With `"keywords"`, rows
            without keywords get the plain prompt, and a source without any keywords (openasr, or manifests lacking
            the column) is an error.
        simu_preference (`dict`, *optional*):
            Simulated preference pairs: `error_range`, `substitute_prob`, `delete_prob`, `insert_prob` (see
            `trl_audio.error_simulation.ErrorSimulationConfig`); `chosen` is the reference, `rejected` a corrupted
            copy. `simu_perference` (the reference fork's spelling) is accepted too.

    Returns:
        `datasets.Dataset`, or `datasets.IterableDataset` when `streaming`. Its `skipped` attribute is the
        `SkipCounter` of rows dropped under `on_error="skip"` (`dataset.skipped.total`, `.as_dict()`); transforms such
        as `map` or `shuffle` return datasets without it, so read it from the dataset returned here.
    """
    cfg = validate_config(dataset_name, **config)
    builder = _RowBuilder(dataset_name, cfg)
    features = _features(builder.decode, cfg.simu_preference is not None)
    if cfg.streaming:
        ds = IterableDataset.from_generator(_generate, features=features, gen_kwargs={"builder": builder})
    else:
        rows = list(builder.rows())
        if builder.skipped.total:
            logger.warning("%s dataset: kept %d rows, skipped %s", dataset_name, len(rows), builder.skipped.as_dict())
        if not rows:
            raise ValueError(f"The {dataset_name!r} dataset has no rows left (skipped: {builder.skipped.as_dict()}).")
        ds = Dataset.from_list(rows, features=features)
    ds.skipped = builder.skipped
    return ds
