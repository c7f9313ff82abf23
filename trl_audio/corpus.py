"""A synthetic speech corpus for showing that training learns: template sentences that each name one or two rare
surnames (their `keywords`), a test split of new combinations of words seen in training, read by espeak-ng in
several voices, speeds and pitches; deterministic from a seed. Writes manifests that `create_audio_dataset` reads.

Synthesis runs in small helper processes (this file run as a script: no torch) that fork once per utterance from a
freshly initialized espeak-ng: the library keeps state between utterances (pitch flutter, a time-seeded random
generator), so an utterance synthesized in a long-lived process would depend on what was read before it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


logger = logging.getLogger(__name__)

# Uncommon but pronounceable surnames: the bias words. Each sentence names one or two of them.
SURNAMES = (
    "Abernathy", "Achterberg", "Adeyemi", "Ambrosetti", "Ashcombe", "Belmonte", "Blomqvist", "Brannigan",
    "Castellanos", "Cavendish", "Delacroix", "Dragomir", "Eberhardt", "Fairweather", "Fenwick", "Galbraith",
    "Gunderson", "Halvorsen", "Haverkamp", "Iwasaki", "Jablonski", "Jorgensen", "Kaczmarek", "Kilbride",
    "Kowalczyk", "Lindqvist", "Lockhart", "Marchetti", "Mbatha", "Nakashima", "Nightingale", "Okafor",
    "Okonkwo", "Oyelaran", "Pemberton", "Petrakis", "Pettigrew", "Quarshie", "Quintanilla", "Radcliffe",
    "Rasmussen", "Sandoval", "Soderberg", "Szymanski", "Thistlewood", "Trevelyan", "Ugarte", "Underhill",
    "Valderrama", "Vandermeer", "Villanueva", "Wainwright", "Wojcik", "Yamamoto", "Yoshida", "Zielinski",
    "Zimmerly", "Ferreira", "Montalban", "Ostrowski",
)  # fmt: skip
FIRST_NAMES = (
    "Anna", "David", "Maria", "Peter", "Laura", "James", "Sofia", "Thomas", "Emma", "Daniel",
    "Clara", "Henry", "Julia", "Oscar", "Nora", "Victor", "Helen", "Martin", "Alice", "Simon",
)  # fmt: skip
TITLES = ("Doctor", "Professor", "Captain", "Judge", "Officer")
PLACES = (
    "Lisbon", "Denver", "Oslo", "Nairobi", "Glasgow", "Toronto", "Madrid", "Dublin", "Boston", "Vienna",
    "Seattle", "Prague", "Sydney", "Chicago", "Berlin", "Helsinki", "Montreal", "Cairo", "Houston", "Geneva",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
OBJECTS = (
    "report", "package", "contract", "invoice", "letter", "budget", "schedule", "proposal",
    "ticket", "laptop", "samples", "keys", "map", "camera", "documents", "painting",
)  # fmt: skip
VERBS = ("signed", "reviewed", "delivered", "approved", "lost", "found", "forgot", "sent", "checked", "printed")
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen".split()
_ONES += ["seventeen", "eighteen", "nineteen"]
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
# Spelled out: digits would be read aloud in a way the transcript cannot match.
NUMBERS = tuple(
    _ONES[n] if n < 20 else f"{_TENS[n // 10]} {_ONES[n % 10]}".removesuffix(" zero") for n in range(2, 100)
)

# Slots: {S} {S2} surnames, {F} {F2} first names, {T} {T2} titles, {P} {P2} places, {D} a day, {O} {O2} objects,
# {V} a verb in the past tense, {N} a number from two to ninety-nine. Slots of one kind take different values.
TEMPLATES = (
    "{T} {S} will arrive in {P} on {D}.",
    "Please send the {O} to {F} {S} before {D}.",
    "{F} {S} {V} the {O} yesterday.",
    "I had lunch with {T} {S} and {T2} {S2} in {P}.",
    "The meeting between {S} and {S2} moved to {D}.",
    "{T} {S} asked for {N} copies of the {O}.",
    "Call {F} {S} about the {O} from {P}.",
    "{F} {S} and {F2} {S2} {V} the {O} together.",
    "Has anyone seen the {O} that {T} {S} left in room {N}?",
    "The {O} for {F} {S} is on desk number {N}.",
    "{T} {S} told {F} {S2} to check the {O} again.",
    "We booked {N} rooms in {P} for the {S} family.",
    "According to {T} {S} the {O} costs {N} dollars.",
    "{F} {S} moved from {P} to {P2} last year.",
    "On {D} {T} {S} will visit {P} with {F} {S2}.",
    "The flight from {P} with {T} {S} lands at gate {N}.",
    "My neighbor {F} {S} {V} the {O} on {D}.",
    "Nobody expected {T} {S} to win the prize in {P}.",
    "{F} {S} wrote {N} pages about the history of {P}.",
    "Ask {T} {S} whether the {O} is ready for {F} {S2}.",
    "The {S} and {S2} families live next to each other in {P}.",
    "{T} {S} {V} the {O} and the {O2} on {D}.",
    "I think {F} {S} is still waiting at the station in {P}.",
    "Yesterday {T} {S} gave {N} interviews in {P}.",
    "The new {O} was designed by {F} {S} and {F2} {S2}.",
    "Let me introduce {T} {S} from the office in {P}.",
    "{F} {S} will be {N} years old on {D}.",
    "The {O} from {T} {S} arrived {N} minutes late.",
    "Tell {F} {S} that {T} {S2} {V} the {O}.",
    "Every {D} {F} {S} runs {N} miles along the river.",
    "The contract was signed by {T} {S} in {P}.",
    "{T} {S} and {F} {S2} met in {P} on {D}.",
    "Could you remind {T} {S} to bring the {O} on {D}?",
    "The award went to {F} {S} for the work in {P}.",
    "{F} {S} borrowed the {O} from {T} {S2} last {D}.",
    "There are {N} messages waiting for {T} {S}.",
)
_SLOT_VALUES = {"S": SURNAMES, "F": FIRST_NAMES, "T": TITLES, "P": PLACES, "D": DAYS, "O": OBJECTS, "V": VERBS}
_SLOT_VALUES["N"] = NUMBERS
_SLOT = re.compile(r"\{([A-Z])(2?)\}")

# Cycle lengths 10, 7 and 3 are pairwise coprime, so all 210 combinations occur before any repeats. Every voice
# name is one that espeak-ng 1.51 and 1.52 both accept.
VOICES = (
    "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-us+f3", "en+m3", "en+f2", "en-gb-x-rp+f4",
)  # fmt: skip
SPEEDS = (130, 140, 150, 160, 170, 180, 190)  # words per minute
PITCHES = (35, 50, 65)  # 0-99
SAMPLING_RATE = 16_000
PEAK_DBFS = -3.0  # peak-normalized, as in scripts/make_speech_sample.sh: espeak's full-scale output would clip
SILENCE_THRESHOLD = 0.005  # of full scale: leading and trailing audio quieter than this is cut
PAD_SECONDS = 0.1
_MAX_DRAWS = 20_000
INSTALL_HINT = "Install it with `pip install espeakng-loader` (no root needed) or `apt-get install espeak-ng`."


@dataclass(frozen=True)
class CorpusRow:
    """One sentence: `keywords` are the rare surnames it names, each a verbatim substring of `text`; `template` is
    the index of its template in `TEMPLATES`. A test row's `(template, keywords)` never occurs in the train split."""

    id: str
    text: str
    keywords: tuple[str, ...]
    split: str
    template: int


def words(text: str) -> set[str]:
    """The lower-cased words of `text`, punctuation dropped."""
    return set(re.findall(r"[a-z']+", text.lower()))


def _fill(rng: random.Random) -> tuple[int, str, tuple[str, ...]]:
    template = rng.randrange(len(TEMPLATES))
    slots = _SLOT.findall(TEMPLATES[template])
    drawn: dict[str, list[str]] = {}
    for kind in dict.fromkeys(kind for kind, _ in slots):  # in order of first use, for determinism
        drawn[kind] = rng.sample(_SLOT_VALUES[kind], sum(k == kind for k, _ in slots))
    text = _SLOT.sub(lambda m: drawn[m.group(1)][1 if m.group(2) else 0], TEMPLATES[template])
    return template, text, tuple(drawn["S"])


def make_sentences(n: int, seed: int = 0, test_fraction: float = 0.1) -> list[CorpusRow]:
    """`n` distinct sentences, the train rows first, then `round(n * test_fraction)` test rows; the same arguments
    give the same rows. Test rows are held-out combinations: no train row has a test row's template with the same
    surnames (in the same slots), yet every word of a test row occurs in the train split.

    Raises `ValueError` when `n` is too small to find such test rows.
    """
    if n < 1 or not 0 <= test_fraction < 1:
        raise ValueError(f"Need n >= 1 and 0 <= test_fraction < 1, got n={n}, test_fraction={test_fraction}.")
    rng = random.Random(seed)
    n_test = round(n * test_fraction)
    texts: set[str] = set()

    def draw(accept) -> tuple[int, str, tuple[str, ...]]:
        for _ in range(_MAX_DRAWS):
            template, text, names = _fill(rng)
            if text not in texts and accept(template, text, names):
                texts.add(text)
                return template, text, names
        raise ValueError(
            f"Found no sentence for a held-out test split in {_MAX_DRAWS} draws (n={n}, test_fraction="
            f"{test_fraction}): the train split is too small to hold every word of a test sentence. Raise n or lower "
            "test_fraction (0 for no test split)."
        )

    # Test rows first, so that they are an unbiased sample of the grammar; train rows then avoid their combinations.
    test = [draw(lambda *_: True) for _ in range(n_test)]
    test_keys = {(template, names) for template, _, names in test}
    train = [draw(lambda template, _, names: (template, names) not in test_keys) for _ in range(n - n_test)]
    train_keys = {(template, names) for template, _, names in train}
    vocabulary = set().union(*(words(text) for _, text, _ in train)) if train else set()
    test = [row for row in test if words(row[1]) <= vocabulary]
    while len(test) < n_test:  # a test row with a word the train split lacks is replaced
        test.append(draw(lambda t, text, names: (t, names) not in train_keys and words(text) <= vocabulary))
    return [
        CorpusRow(id=f"{split}_{i:05d}", text=text, keywords=names, split=split, template=template)
        for split, part in (("train", train), ("test", test))
        for i, (template, text, names) in enumerate(part)
    ]


def find_espeak() -> tuple[str, str | None]:
    """`(library, data folder)` of espeak-ng: the pip package `espeakng-loader`'s if installed, else the system's
    `libespeak-ng` with its built-in data folder (`None`). Raises `RuntimeError` saying how to install one."""
    try:
        import espeakng_loader
    except ImportError:
        library = ctypes.util.find_library("espeak-ng")
        if library is None:
            raise RuntimeError(f"espeak-ng is needed to synthesize speech and was not found. {INSTALL_HINT}") from None
        return library, None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def synthesize(
    rows: list[CorpusRow],
    out_dir: str | os.PathLike,
    voices: tuple[str, ...] = VOICES,
    speeds: tuple[int, ...] = SPEEDS,
    pitches: tuple[int, ...] = PITCHES,
    workers: int = 1,
    metadata: dict | None = None,
    positions: list[int] | None = None,
) -> dict:
    """Read `rows` aloud with espeak-ng and write the corpus to `out_dir` (which must not hold files yet):

    - `audio/<id>.flac`: 16 kHz mono 16-bit FLAC, peak-normalized to -3 dBFS, leading and trailing silence cut, then
      0.1 s of silence on each side;
    - `train.jsonl` / `test.jsonl`: one row a line, the JSONL manifest `create_audio_dataset("jsonl", ...)` reads
      (`id`, `audio_path`, `text`, `keywords`), plus `voice`, `speed`, `pitch` and `duration` (seconds);
    - `corpus.json`: sizes, hours, voices, speeds, pitches, the espeak-ng version and `metadata`; returned too.

    Row i (in the order given) gets voice, speed and pitch by cycling the three lists at position `positions[i]`
    (default: i), so that a part of a corpus, given the rows' positions in the whole, is read as in the whole. With
    the same espeak-ng, soxr and libsndfile, the same rows give byte-identical files, whatever `workers` (helper
    processes, one per core).
    """
    if not rows:
        raise ValueError("No rows to synthesize.")
    if positions is not None and len(positions) != len(rows):
        raise ValueError(f"positions must give one position per row: {len(positions)} for {len(rows)} rows.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already holds files: give a new or empty out_dir.")
    find_espeak()  # fail here, with the install hint, rather than in every helper
    stage = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "audio").mkdir(parents=True)
    start = time.perf_counter()
    jobs = [
        {
            "path": str(stage / "audio" / f"{row.id}.flac"),
            "text": row.text,
            "voice": voices[i % len(voices)],
            "speed": speeds[i % len(speeds)],
            "pitch": pitches[i % len(pitches)],
            "seed": i + 1,
        }
        for i, row in zip(range(len(rows)) if positions is None else positions, rows)
    ]
    try:
        frames, engine = _run_helpers(jobs, rows, max(1, min(workers, len(jobs))))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    manifests: dict[str, list[str]] = {"train": [], "test": []}
    for row, job, n_frames in zip(rows, jobs, frames):
        entry = {"id": row.id, "audio_path": f"audio/{row.id}.flac", "text": row.text, "keywords": list(row.keywords)}
        entry |= {k: job[k] for k in ("voice", "speed", "pitch")} | {"duration": round(n_frames / SAMPLING_RATE, 3)}
        manifests[row.split].append(json.dumps(entry))
    for split, lines in manifests.items():
        (stage / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    seconds = sum(frames) / SAMPLING_RATE
    info = {
        "description": "Synthetic English speech from trl_audio.corpus: template sentences naming rare surnames "
        "(keywords); the test split holds new (template, surnames) combinations of words seen in training.",
        **(metadata or {}),
        "sizes": {split: len(lines) for split, lines in manifests.items()},
        "hours": round(seconds / 3600, 4),
        "duration_range": [round(min(frames) / SAMPLING_RATE, 3), round(max(frames) / SAMPLING_RATE, 3)],
        "voices": list(voices),
        "speeds": list(speeds),
        "pitches": list(pitches),
        "engine": engine,
        "sampling_rate": SAMPLING_RATE,
    }
    (stage / "corpus.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        out_dir.rmdir()
    stage.rename(out_dir)
    logger.info(
        f"Synthesized {len(rows)} utterances ({info['hours']} h) into {out_dir} in {time.perf_counter() - start:.1f} s"
    )
    return info


def make_corpus(
    out_dir: str | os.PathLike,
    num_sentences: int = 1500,
    seed: int = 0,
    test_fraction: float = 0.1,
    workers: int = 1,
    train_rows: int | None = None,
) -> dict:
    """`make_sentences` then `synthesize`: the corpus in `out_dir`; returns what `corpus.json` holds.

    `train_rows` synthesizes only the first that many train rows (0: the test split alone), each read exactly as in
    the whole corpus; `None` synthesizes them all. `corpus.json` then says so (`train_rows`)."""
    rows = make_sentences(num_sentences, seed, test_fraction)
    vocabulary = set().union(*(words(row.text) for row in rows))
    metadata = {"seed": seed, "num_sentences": num_sentences, "test_fraction": test_fraction}
    metadata |= {"templates": len(TEMPLATES), "surnames": len(SURNAMES), "vocabulary_size": len(vocabulary)}
    if train_rows is None:
        return synthesize(rows, out_dir, workers=workers, metadata=metadata)
    n_train = sum(row.split == "train" for row in rows)  # the train rows come first
    if not 0 <= train_rows <= n_train:
        raise ValueError(f"train_rows must be between 0 and the {n_train} train rows, got {train_rows}.")
    positions = [*range(train_rows), *range(n_train, len(rows))]
    metadata["train_rows"] = train_rows
    return synthesize([rows[i] for i in positions], out_dir, workers=workers, metadata=metadata, positions=positions)


def _run_helpers(jobs: list[dict], rows: list[CorpusRow], workers: int) -> tuple[list[int], str]:
    """Each of `workers` threads drives one helper process, taking the next job as it finishes one."""
    frames: list[int] = [0] * len(jobs)
    engines: list[str] = []
    next_job = iter(range(len(jobs)))
    lock = threading.Lock()
    failed = threading.Event()  # one helper's error stops the others

    def drive() -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # the helper forks: no threads
        command = [sys.executable, "-I", str(Path(__file__).resolve())]
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as helper:
            try:
                started = helper.stdout.readline()
                if not started:
                    raise RuntimeError("The synthesis helper process failed to start: see its messages above.")
                engines.append(json.loads(started)["engine"])
                while not failed.is_set() and (index := _next(next_job, lock)) is not None:
                    helper.stdin.write(json.dumps(jobs[index]) + "\n")
                    helper.stdin.flush()
                    reply = json.loads(helper.stdout.readline() or '{"error": "the helper process died"}')
                    if "error" in reply:
                        raise RuntimeError(f"Synthesis of {rows[index].id} ({rows[index].text!r}): {reply['error']}")
                    frames[index] = reply["frames"]
            except BaseException:
                failed.set()
                raise
            finally:
                helper.stdin.close()

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(drive) for _ in range(workers)]:
            future.result()
    return frames, engines[0]


def _next(iterator, lock: threading.Lock) -> int | None:
    with lock:
        return next(iterator, None)


class _Espeak:
    """libespeak-ng through ctypes, synthesizing into memory (AUDIO_OUTPUT_SYNCHRONOUS)."""

    def __init__(self, library: str, data: str | None):
        self.lib = ctypes.CDLL(library)
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
        self.lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = self.lib.espeak_Initialize(2, 0, data.encode() if data else None, 0)
        if self.rate <= 0:
            raise RuntimeError(f"espeak-ng ({library}) failed to initialize with data folder {data}. {INSTALL_HINT}")
        self.version = self.lib.espeak_Info(None).decode()
        self.chunks: list[bytes] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self.callback = callback_type(self._collect)  # kept referenced: espeak-ng holds only the pointer
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self.chunks.append(ctypes.string_at(wav, 2 * n_samples))
        return 0

    def synthesize(self, text: str, voice: str, speed: int, pitch: int, seed: int) -> np.ndarray:
        # espeak-ng >= 1.52 seeds its generator with the time on initialization; 1.51 has no generator of its own.
        if hasattr(self.lib, "espeak_ng_SetRandSeed"):
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (`trl_audio.corpus.VOICES` lists some it has).")
        self.lib.espeak_SetParameter(1, speed, 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
        self.chunks = []
        encoded = text.encode()
        # position 0 of type POS_CHARACTER (1), no end, flags espeakCHARS_UTF8 (1)
        if self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, 1, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed on {text!r}")
        self.lib.espeak_Synchronize()
        return np.frombuffer(b"".join(self.chunks), dtype=np.int16)


def _postprocess(pcm: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz int16 audio, peak-normalized, silence trimmed and padded, as `synthesize` describes."""
    audio = soxr.resample(pcm.astype(np.float32) / 32768, rate, SAMPLING_RATE)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak == 0:
        raise ValueError("espeak-ng produced silence")
    audio *= 10 ** (PEAK_DBFS / 20) / peak
    loud = np.flatnonzero(np.abs(audio) > SILENCE_THRESHOLD)
    pad = np.zeros(round(PAD_SECONDS * SAMPLING_RATE), dtype=np.float32)
    audio = np.concatenate([pad, audio[loud[0] : loud[-1] + 1], pad])
    return np.round(audio * 32767).astype(np.int16)


def _serve() -> None:
    """The helper process: one JSON job a line on stdin, one JSON reply a line on stdout (`frames` or `error`)."""
    engine = _Espeak(*find_espeak())
    print(json.dumps({"engine": f"espeak-ng {engine.version}"}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: synthesize from the state espeak-ng had right after initialization
            os.close(read_end)
            status = 0
            try:
                pcm = engine.synthesize(job["text"], job["voice"], job["speed"], job["pitch"], job["seed"])
                sf.write(job["path"], _postprocess(pcm, engine.rate), SAMPLING_RATE, format="FLAC", subtype="PCM_16")
            except BaseException as e:
                if not isinstance(e, ValueError):  # not one of ours: the traceback goes to the inherited stderr
                    traceback.print_exc()
                os.write(write_end, "".join(traceback.format_exception_only(e)).strip().encode())
                status = 1
            os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            error = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            reply = {"error": error or f"the synthesis process ended with status {status}"}
        else:
            reply = {"frames": sf.info(job["path"]).frames}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    _serve()
