"""Speech datasets for online DPO: the dataset config (its keys, validation and JSON files) and the rows made from a
source's records (audio checked or decoded, biasing prompt, reference, simulated preferences)."""

from __future__ import annotations

import difflib
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, IterableDataset, List, Value

from .audio_utils import AudioLoadError, audio_info, load_audio, resolve_path
from .biasing import Biaser, BiasingConfig, read_word_file
from .error_simulation import ErrorSimulationConfig, ErrorSimulator
from .manifests import (
    LS_BIAS_AUDIO_PATTERN,
    ManifestError,
    Record,
    as_path_list,
    esb_records,
    load_esb,
    read_jsonl,
    read_ls_bias,
    read_tsv,
)
from .prompts import make_instruction, make_prompt
from .skips import ON_ERROR_CHOICES, SkipCounter


logger = logging.getLogger(__name__)

SOURCES = ("openasr", "tsv", "jsonl", "ls_bias")
SOURCE_KEYS = {
    "openasr": ("name", "split", "data_dir"),
    "tsv": ("tsv_paths",),
    "jsonl": ("jsonl_paths",),
    "ls_bias": ("ls_bias_paths", "audio_dir", "audio_pattern"),
}
# Paths in a config file, resolved against the file's folder by `load_dataset_config`.
PATH_KEYS = ("data_dir", "tsv_paths", "jsonl_paths", "ls_bias_paths", "audio_dir")


class BadRowError(ValueError):
    """A row whose transcript or audio is unusable (with `on_error="raise"`); `reason` is one of
    `trl_audio.skips.SKIP_REASONS`."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class DatasetConfig:
    """The validated keys of `create_audio_dataset` (documented there)."""

    name: str = "librispeech"
    split: str = "test.clean"
    data_dir: str | None = None
    tsv_paths: str | list[str] | None = None
    jsonl_paths: str | list[str] | None = None
    ls_bias_paths: str | list[str] | None = None
    audio_dir: str | None = None
    audio_pattern: str = LS_BIAS_AUDIO_PATTERN
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
    if cfg.on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {list(ON_ERROR_CHOICES)}, got {cfg.on_error!r}.")
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
    paths_key = {"tsv": "tsv_paths", "jsonl": "jsonl_paths", "ls_bias": "ls_bias_paths"}.get(dataset_name)
    if paths_key and not getattr(cfg, paths_key):
        raise ValueError(f"The {dataset_name!r} source needs `{paths_key}`: one manifest path or a list of them.")
    if dataset_name == "ls_bias":
        if not cfg.audio_dir:
            raise ValueError(
                "The 'ls_bias' source needs `audio_dir`: the LibriSpeech split's folder (.../LibriSpeech/test-clean), "
                "where each utterance's audio lies at `audio_pattern` (default '{speaker}/{chapter}/{id}.flac')."
            )
        if cfg.biasing is not None:
            raise ValueError("ls_bias rows bring their own biasing lists: remove the `biasing` block.")
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
        return resolve_path(p, str(path.parent))

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

    def __init__(self, dataset_name: str, cfg: DatasetConfig, skipped: SkipCounter):
        self.cfg = cfg
        self.skipped = skipped
        # ESB rows carry audio bytes rather than files, so their audio is always decoded.
        self.decode = cfg.load_audio or dataset_name == "openasr"
        # The streaming path hands rows to `datasets` as they are: lists there equal what a table gives back.
        self.array_as_list = cfg.streaming
        self.word_list = read_word_file(cfg.biasing.word_file) if cfg.biasing and cfg.biasing.word_file else None
        self.esb, self.records = None, []
        manifests = as_path_list(cfg.tsv_paths or cfg.jsonl_paths or cfg.ls_bias_paths or [])
        if dataset_name == "openasr":
            self.esb = load_esb(cfg.name, cfg.split, cfg.data_dir, cfg.streaming)
        else:  # manifests are small: parse them now, so that a malformed line fails before any training
            readers = {"tsv": read_tsv, "jsonl": read_jsonl}
            readers["ls_bias"] = lambda path: read_ls_bias(path, cfg.audio_dir, cfg.audio_pattern)
            self.records = [r for p in manifests for r in readers[dataset_name](p)]
            if cfg.biasing and cfg.biasing.hit_source == "keywords" and not any(r.keywords for r in self.records):
                raise ValueError(
                    f"biasing.hit_source='keywords', but no row of {manifests} has "
                    "keywords, so every prompt would be plain: add a `keywords` column or use "
                    "hit_source='transcript'."
                )

    def source(self) -> Iterator[Record]:
        cfg = self.cfg
        return iter(self.records) if self.esb is None else esb_records(self.esb, cfg.name, cfg.split, cfg.data_dir)

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
        text, bias_words = record.text, record.bias_list or []
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
            rng = random.Random(f"{self.cfg.seed}-{index}-preference")
            rejected = simulator(text, rng, record.keywords, bias_words)
            row["chosen"] = [{"role": "assistant", "content": text}]
            row["rejected"] = [{"role": "assistant", "content": rejected}]
        return row


def _generate(builder: _RowBuilder) -> Iterator[dict]:
    yield from builder.rows()


def create_audio_dataset(
    dataset_name: str = "openasr", skip_counter: SkipCounter | None = None, **config: Any
) -> Dataset | IterableDataset:
    """Build a speech dataset for `AudioOnlineDPOTrainer` from OpenASR (ESB), TSV or JSONL sources.

    Each row has `id`, `prompt` (one user turn: an `{"type": "audio"}` part, then the instruction text), `audio` (an
    absolute path or URL, or `{"array", "sampling_rate"}` when decoded), `text` (the reference), `keywords` (the
    manifest's ground-truth rare words), `bias_words` (the list the prompt shows) and, with `simu_preference`,
    `chosen` / `rejected` (`[{"role": "assistant", "content": ...}]`).

    Args:
        dataset_name (`str`, defaults to `"openasr"`):
            `"openasr"` (an ESB test set, `hf-audio/esb-datasets-test-only-sorted`, or a local copy), `"tsv"` and
            `"jsonl"` (manifests pointing at audio files; see `trl_audio.manifests.read_tsv` / `read_jsonl` for the
            formats), or `"ls_bias"` (LibriSpeech biasing lists, below).
        skip_counter (`SkipCounter`, *optional*):
            Where rows left out under `on_error="skip"` are counted by reason; pass the same counter to
            `AudioOnlineDPOTrainer(skip_counter=...)` to have the trainer log them as `data/skipped/<reason>`.
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
        ls_bias_paths (`str` or `list[str]`):
            ls_bias only, required: one or more LibriSpeech biasing lists of Le et al. (2021), e.g.
            `test-clean.biasing_100.tsv` from facebookresearch/fbai-speech `is21_deep_bias/ref/` (see
            `trl_audio.manifests.read_ls_bias`). Each row's prompt lists its utterance's N biasing words as they are;
            `keywords` are its ground-truth rare words, the words B-WER and the bias-word recall reward score.
        audio_dir (`str`):
            ls_bias only, required: the LibriSpeech split's folder (`.../LibriSpeech/test-clean`).
        audio_pattern (`str`, *optional*, defaults to `"{speaker}/{chapter}/{id}.flac"`):
            ls_bias only: where an utterance's audio lies under `audio_dir`, from its `id`, `speaker` and `chapter`.
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
            one warning, counted in `skip_counter`. Malformed manifest lines always raise `ManifestError`.
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
            Simulated preference pairs: `error_range`, `substitute_prob`, `delete_prob`, `insert_prob` and
            `bias_substitute_prob` (see `trl_audio.error_simulation.ErrorSimulationConfig`); `chosen` is the
            reference, `rejected` a corrupted copy: word errors at `error_range`, or, with probability
            `bias_substitute_prob`, one of the row's keywords swapped for the most similar word of its biasing list
            (the targeted error of a biased model). `simu_perference` (the reference fork's spelling) is accepted too.

    Returns:
        `datasets.Dataset`, or `datasets.IterableDataset` when `streaming`.
    """
    cfg = validate_config(dataset_name, **config)
    builder = _RowBuilder(dataset_name, cfg, skip_counter if skip_counter is not None else SkipCounter())
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
    return ds


def dataset_config_from_args(
    config_path: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    default_config: str | os.PathLike | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The dataset config a command line describes, validated (so a bad one fails before any model loads): a JSON
    config file's keys (`config_path`, read by `load_dataset_config`), its source replaced by `dataset_name` (the
    file's source-specific keys are then dropped: they describe the other source), and `overrides` on top (keys of
    `create_audio_dataset`; None values are ignored). Manifest paths given without a source imply theirs
    (`tsv_paths` -> "tsv"). Without a file, a source or manifest paths, `default_config` is read.

    >>> dataset_config_from_args(dataset_name="openasr")  # the ESB LibriSpeech test.clean split, nothing else
    {'dataset_name': 'openasr'}
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    implied = [name for name, keys in SOURCE_KEYS.items() if name != "openasr" and keys[0] in overrides]
    if dataset_name is None and len(implied) == 1:
        dataset_name = implied[0]
    if config_path is None and dataset_name is None:
        config_path = default_config
    config = load_dataset_config(config_path) if config_path is not None else {}
    if dataset_name is not None and dataset_name != config.get("dataset_name"):
        for key in SOURCE_KEYS.get(config.get("dataset_name"), ()):
            config.pop(key, None)
        config["dataset_name"] = dataset_name
    config |= overrides
    if "dataset_name" not in config:
        raise ValueError(f"No dataset: give a dataset config file or a source ({' / '.join(SOURCES)}).")
    validate_config(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()})
    return config


def dataset_from_config(
    path: str | os.PathLike, dataset_name: str | None = None, skip_counter: SkipCounter | None = None
) -> Dataset | IterableDataset:
    """The dataset a JSON config file describes (`create_audio_dataset(**load_dataset_config(path))`), with its source
    replaced by `dataset_name` when given, and its skipped rows counted in `skip_counter`."""
    config = load_dataset_config(path)
    if dataset_name is not None:
        config["dataset_name"] = dataset_name
    return create_audio_dataset(skip_counter=skip_counter, **config)
