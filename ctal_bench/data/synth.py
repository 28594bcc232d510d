"""The embedded synthetic speech dataset ``synth`` (version 2): generated offline with eSpeak NG.

Labels are defined so that we know which modality carries what, and version 2 plants the
effects the paper's claims are about, each with a known mechanism and size, so that a model
*can* show them; whether it does is measured, never forced.

- Text carries valence. Templated sentences hold a positive or negative adjective, or a
  neutral phrase; in NEGATION_RATE (a fifth) of them a negation ("was not", "wasn't", ...)
  stands next to it, and valence = adjective polarity x (-1 if negated). Negation is a
  minority on purpose: in version 1 it was in half the sentences, so adjective polarity alone
  said nothing about the sign, the first-order gradient of the sentiment loss at the mean
  predictor was zero and every model sat on a plateau. Now the adjective alone is right 80%
  of the time (first-order signal) and composition with the negation is still needed beyond.
- Distributional structure. With probability COMPANION_RATE a sentence ends with a companion
  clause, as real reviews do ("... i loved it", "... and i want my money back"): on a polar
  sentence its polarity agrees with the valence with probability COMPANION_AGREEMENT (else
  it has the other sign); a neutral sentence gets a neutral one. So polarity words of one
  sign share contexts, and masked language modelling on unlabelled transcripts can place
  them near each other.
- Planted lexical transfer. TRANSFER_WORDS (5 positive and 5 negative adjectives) occur in
  the pre-training, dev, test and verification transcripts but never in the labelled
  training ones (role "train" draws its adjectives from the other words only). A row's
  ``transfer`` column is 1 when its transcript holds one; those examples carry the subset
  "transfer", on which a from-scratch model has never seen the polarity word and a
  pre-trained one may have learnt where it belongs.
- Prosody carries arousal. Each speaker (an accent x variant voice) has its own baseline
  pitch, pitch range, rate and volume; an utterance's arousal level moves all four away from
  that baseline (low / high / very high = -1, +1, +2 units times STRENGTH, plus Gaussian
  jitter of JITTER units per parameter), so arousal is only readable relative to the speaker.
- Planted prosody-text link. An exclamation (MARKERS: "wow", "oh my god", ...) opens the
  sentence with probability MARKER_RATES[high] given the arousal, so about three in four
  sentences with a marker are high-arousal: cross-modal masked acoustic modelling can use
  the words, while text alone still guesses arousal only weakly (about 2 in 3).
- emotion = valence x arousal: happy = non-negative & high, angry = negative & high,
  sad = negative & low, neutral = non-negative & low (a neutral phrase said with high arousal
  is happy). Then EMOTION_FLIP_RATE of the emotion labels are replaced by a different class
  (seeded, flagged ``emotion_flipped`` in the manifest), so a perfect model stays below 100%.
- sentiment = sign(valence) x (arousal level + 1) + noise, clipped to [-3, 3], with level
  0 / 1 / 2 = low / high / very high and noise ~ N(0, SENTIMENT_NOISE) clipped at +-2.5 SD,
  so that noise never flips the sign: the sign of a polar sentence's score is its valence.
  The score is a product of the modalities, which rewards models that multiply them.
- verification: speaker identity.
- Scarce labels, abundant unlabelled speech: the pre-training pool holds at least
  PRETRAIN_RATIO times the labelled training utterances at every size (version 1 had fewer).

Speaker roles are disjoint: pre-training, fine-tuning train / dev / test, and held-out
verification speakers; each role has its own number of utterances per speaker. Speaker i
speaks with accent i % 8 and variant i % 13, so voices repeat only from speaker 104 on, and
any 8 consecutive speakers cover every accent. Everything follows from the size name and
GENERATION_SEED.

On-disk layout under ``<data_dir>/synth-<size>/``:
    audio/<speaker>/<uid>.flac   22,050 Hz int16 mono
    utterances.csv               one row per utterance (UTTERANCE_COLUMNS)
    manifest.json                size, generation parameters, speakers, versions, digest;
                                 written last, so its presence marks a finished build

eSpeak NG keeps state across utterances inside a process, so each worker initialises the
engine once, never synthesises itself, and forks a child per utterance (docs/data.md).
That alone is not enough: espeak_Initialize seeds the engine's random generator with the
wall-clock second, and the breathy variants (f2, f3, f5) mix in noise from it. Each child
therefore reseeds it (espeak_ng_SetRandSeed) from a hash of the utterance's own inputs, so
every file depends only on its parameters, whatever the number of workers or the time.
"""
from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ctal_bench.data.base import EMOTIONS, Dataset, Example, Split, csv_rows, progress_bar
from ctal_bench.data.trials import build_trials
from ctal_bench.errors import DataError, UserError
from ctal_bench.registry import DATASETS

SAMPLE_RATE = 22050
GENERATION_SEED = 2021
FORMAT_VERSION = 2  # bump when the layout, the text or the synthesis call changes

# --- sizes -----------------------------------------------------------------------------------

ROLES = ("pretrain", "train", "dev", "test", "verify")
LABELLED_ROLES = ("train", "dev", "test")
PRETRAIN_RATIO = 8  # at least this many pre-training utterances per labelled training one


@dataclass(frozen=True)
class SynthSize:
    """(speakers, utterances per speaker) for each role; speakers are contiguous blocks in ROLES order."""

    pretrain: tuple[int, int]
    train: tuple[int, int]
    dev: tuple[int, int]
    test: tuple[int, int]
    verify: tuple[int, int]
    n_trials: int  # verification trials in each of the dev and test lists

    @property
    def n_speakers(self) -> int:
        return sum(self.speakers_per_role().values())

    @property
    def n_utterances(self) -> int:
        return sum(self.utterances_per_role().values())

    def speakers_per_role(self) -> dict[str, int]:
        return {role: getattr(self, role)[0] for role in ROLES}

    def utterances_per_speaker(self) -> dict[str, int]:
        return {role: getattr(self, role)[1] for role in ROLES}

    def utterances_per_role(self) -> dict[str, int]:
        return {role: getattr(self, role)[0] * getattr(self, role)[1] for role in ROLES}


# Per-speaker counts are multiples of 8 where possible, so a speaker's arousal and valence
# shares come out exact. Any 8 consecutive speakers cover all 8 accents, so the small, default
# and large dev / test / verify groups hold every accent. Speaker i has voice i % 8 x i % 13:
# up to 104 speakers all voices differ; in `large` speakers 104-127 (pre-training) and the 80
# labelled and verification speakers repeat voices of pre-training speakers 0-103, with their
# own baselines (never a voice shared between two labelled or verification speakers).
SIZES: dict[str, SynthSize] = {
    # unit tests: 384 utterances, a few seconds
    "tiny": SynthSize(pretrain=(8, 32), train=(4, 8), dev=(4, 8), test=(4, 8), verify=(4, 8),
                      n_trials=200),
    # the smoke suite: 2,752 utterances, about half of default's
    "small": SynthSize(pretrain=(32, 48), train=(16, 12), dev=(8, 48), test=(8, 48), verify=(8, 32),
                       n_trials=1000),
    # 5,376 utterances, 104 speakers with distinct voices
    "default": SynthSize(pretrain=(64, 56), train=(16, 24), dev=(8, 64), test=(8, 64), verify=(8, 48),
                         n_trials=2000),
    # 12,032 utterances
    "large": SynthSize(pretrain=(128, 64), train=(32, 32), dev=(16, 64), test=(16, 64), verify=(16, 48),
                       n_trials=4000),
}

# --- voices and prosody ----------------------------------------------------------------------

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5")

# Each speaker's baseline, drawn uniformly (engine units; rate in words per minute).
BASELINE_RANGES = {"pitch": (30, 70), "range": (35, 65), "rate": (145, 195), "volume": (60, 95)}
# Change per unit of arousal: pitch and range additive, rate and volume relative.
AROUSAL_UNITS = {"pitch": 6.0, "range": 12.0, "rate": 0.07, "volume": 0.12}
AROUSAL_OFFSETS = (-1.0, 1.0, 2.0)  # low, high, very high (in units)
AROUSAL_SHARES = (0.5, 0.25, 0.25)
STRENGTH = 1.0  # S: arousal units scale; the prototype probes put emotion difficulty on target here (docs/data.md)
JITTER = 0.5  # J: SD of per-parameter Gaussian jitter, in arousal units (independent of S)
# Engine limits; volume is capped at 140 because the engine clips near 150.
PARAMETER_LIMITS = {"pitch": (0, 100), "range": (0, 100), "rate": (80, 450), "volume": (0, 140)}

# --- text ------------------------------------------------------------------------------------

# (template, copula): {noun} and {predicate} = copula (maybe negated) + adjective or phrase.
TEMPLATES = (
    ("the {noun} {predicate}", "was"),
    ("i think the {noun} {predicate}", "is"),
    ("honestly the {noun} {predicate}", "was"),
    ("to be fair my {noun} {predicate}", "is"),
    ("the {noun} we saw yesterday {predicate}", "was"),
    ("everyone says the {noun} {predicate}", "is"),
    ("in my opinion this {noun} {predicate}", "was"),
    ("well the new {noun} {predicate}", "is"),
    ("after all that the {noun} {predicate}", "was"),
    ("i have to say the {noun} {predicate}", "is"),
    ("as far as i can tell the {noun} {predicate} overall", "was"),
    ("you know that {noun} {predicate}", "is"),
)
NOUNS = ("movie", "film", "restaurant", "hotel", "book", "concert", "meal", "service", "phone",
         "car", "game", "show", "trip", "class", "lecture", "party", "weather", "coffee", "album",
         "camera", "room", "flight", "team", "plan", "price", "staff", "story", "garden",
         "museum", "laptop")
POSITIVE = ("good", "great", "wonderful", "excellent", "lovely", "amazing", "pleasant",
            "brilliant", "fantastic", "delightful", "superb", "nice", "enjoyable", "perfect",
            "beautiful", "impressive", "charming", "helpful", "fun", "fine")
NEGATIVE = ("bad", "terrible", "awful", "horrible", "boring", "dull", "poor", "disappointing",
            "annoying", "dreadful", "ugly", "useless", "miserable", "unpleasant", "rude",
            "painful", "lousy", "weak", "broken", "mediocre")
# Never in a labelled training transcript; in pre-training, dev, test and verification ones.
TRANSFER_WORDS = ("lovely", "brilliant", "delightful", "superb", "charming",
                  "awful", "annoying", "dreadful", "miserable", "lousy")
NEUTRAL = ("made of wood", "on the table", "in the kitchen", "from last year",
           "about three metres long", "painted blue", "next to the door", "on tuesday",
           "in the other room", "written in english", "for sale", "in the box", "round",
           "near the station", "the same as before")
NEGATIONS = {"was": ("was not", "was never", "wasn't", "was really not"),
             "is": ("is not", "is never", "isn't", "is really not")}
NEGATION_RATE = 0.2  # of all sentences, polar and neutral alike (version 1: 0.5)
VALENCE_SHARES = {-1: 0.5, 1: 0.375, 0: 0.125}  # a quarter of the non-negative half neutral
# Companion clauses appended to the sentence, by polarity; ordinary words, none of them a
# polarity adjective, a negation or a marker.
COMPANIONS = {
    1: ("and i would recommend it", "i loved it", "what a joy", "we will come back",
        "it made my day", "and i enjoyed every minute", "worth every penny", "i smiled all day"),
    -1: ("and i want my money back", "i hated it", "what a waste", "we will stay away",
         "it ruined my day", "and i regretted every minute", "a total rip off", "i wanted to leave early"),
    0: ("and that is all", "as i said before", "if you ask me", "for what it is worth",
        "as far as i know", "or so they say", "just so you know", "at least that is what i saw"),
}
COMPANION_RATE = 0.6  # of all sentences; a neutral sentence's companion is neutral
COMPANION_AGREEMENT = 0.85  # on a polar sentence: P(companion polarity == valence)
# Exclamations that open the sentence, more often under high arousal (level >= 1):
# P(high | marker) = 0.5 * 0.5 / (0.5 * 0.5 + 0.5 * 0.15) = 0.77 at the arousal shares.
MARKERS = ("wow", "oh my god", "seriously", "whoa", "oh boy", "gosh", "oh wow", "holy cow")
MARKER_RATES = {False: 0.15, True: 0.5}  # P(marker | high arousal?)

# --- labels ----------------------------------------------------------------------------------

SENTIMENT_NOISE = 0.3
SENTIMENT_NOISE_CLIP = 2.5 * SENTIMENT_NOISE  # < 1, the smallest polar intensity
EMOTION_FLIP_RATE = 0.04  # seeded label noise: a perfect emotion model scores about 96%

UTTERANCE_COLUMNS = ("uid", "audio", "text", "speaker", "role", "voice", "pitch", "range",
                     "rate", "volume", "valence", "negated", "arousal", "marker", "companion",
                     "transfer", "emotion", "emotion_flipped", "sentiment", "n_samples")
# companion: the polarity of the companion clause (-1, 0 or 1), empty when there is none.
TRANSFER_SUBSET = "transfer"
MANIFEST = "manifest.json"
UTTERANCES = "utterances.csv"
AUDIO_DIR = "audio"
CHUNK = 16  # utterances per worker task


def emotion_of(valence: int, arousal: int) -> str:
    """The noise-free emotion: valence from the words x arousal (level >= 1 = high)."""
    high = arousal >= 1
    if valence < 0:
        return "angry" if high else "sad"
    return "happy" if high else "neutral"


def sentiment_of(valence: int, arousal: int, noise: float) -> float:
    """sign(valence) x (level + 1) + clipped noise, clipped to [-3, 3], rounded to 3 decimals."""
    noise = float(np.clip(noise, -SENTIMENT_NOISE_CLIP, SENTIMENT_NOISE_CLIP))
    return round(float(np.clip(np.sign(valence) * (arousal + 1) + noise, -3.0, 3.0)), 3)


def has_transfer_word(text: str) -> bool:
    """Whether a transcript holds one of TRANSFER_WORDS (as a whole word)."""
    return not _TRANSFER.isdisjoint(text.split())


_TRANSFER = frozenset(TRANSFER_WORDS)


def lexicon(role: str, polarity: int) -> tuple[str, ...]:
    """The adjectives a role draws from for a polarity: labelled training never sees TRANSFER_WORDS."""
    words = POSITIVE if polarity > 0 else NEGATIVE
    return tuple(w for w in words if w not in _TRANSFER) if role == "train" else words


# --- the plan: every speaker and utterance, before any audio -------------------------------

def _stratified(shares: dict, n: int, rng: np.random.Generator) -> list:
    """n values in the given shares (largest-remainder rounding), in a seeded order."""
    keys = list(shares)
    exact = np.array([shares[k] for k in keys]) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    values = [k for k, c in zip(keys, counts) for _ in range(c)]
    return [values[i] for i in rng.permutation(n)]


def _speaker(index: int, role: str) -> dict:
    rng = np.random.default_rng([GENERATION_SEED, 1, index])
    baseline = {p: int(rng.integers(lo, hi + 1)) for p, (lo, hi) in BASELINE_RANGES.items()}
    return {"name": f"spk{index:03d}", "role": role, "accent": ACCENTS[index % len(ACCENTS)],
            "variant": VARIANTS[index % len(VARIANTS)], **baseline}


def _prosody(speaker: dict, arousal: int, rng: np.random.Generator) -> dict[str, int]:
    out = {}
    for p, unit in AROUSAL_UNITS.items():
        offset = STRENGTH * AROUSAL_OFFSETS[arousal] + JITTER * rng.standard_normal()
        value = speaker[p] + unit * offset if p in ("pitch", "range") else speaker[p] * (1 + unit * offset)
        lo, hi = PARAMETER_LIMITS[p]
        out[p] = int(np.clip(round(value), lo, hi))
    return out


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[rng.integers(len(options))]


def _sentence(role: str, valence: int, negated: bool, marker: bool, companion: int | None,
              rng: np.random.Generator) -> str:
    """[marker] template(noun, copula [negation] adjective-or-phrase) [companion clause]."""
    template, copula = TEMPLATES[rng.integers(len(TEMPLATES))]
    noun = _pick(NOUNS, rng)
    if valence == 0:
        words = _pick(NEUTRAL, rng)
    else:
        # Negation flips the adjective's polarity: "was not good" is negative.
        words = _pick(lexicon(role, -valence if negated else valence), rng)
    verb = _pick(NEGATIONS[copula], rng) if negated else copula
    parts = [template.format(noun=noun, predicate=f"{verb} {words}")]
    if marker:
        parts.insert(0, _pick(MARKERS, rng))
    if companion is not None:
        parts.append(_pick(COMPANIONS[companion], rng))
    return " ".join(parts)


def _utterances(speaker: dict, index: int, n: int) -> list[dict]:
    rng = np.random.default_rng([GENERATION_SEED, 2, index])
    arousals = _stratified(dict(zip(range(3), AROUSAL_SHARES)), n, rng)
    valences = _stratified(VALENCE_SHARES, n, rng)
    negations = _stratified({True: NEGATION_RATE, False: 1 - NEGATION_RATE}, n, rng)
    rows = []
    for j, (arousal, valence, negated) in enumerate(zip(arousals, valences, negations)):
        # Three draws for every utterance, used or not, so one choice never shifts the others.
        marker = bool(rng.random() < MARKER_RATES[arousal >= 1])
        has_companion = bool(rng.random() < COMPANION_RATE)
        agrees = bool(rng.random() < COMPANION_AGREEMENT)
        companion = (valence if agrees else -valence) if has_companion else None
        text = _sentence(speaker["role"], valence, negated, marker, companion, rng)
        prosody = _prosody(speaker, arousal, rng)
        emotion = emotion_of(valence, arousal)
        flipped = bool(rng.random() < EMOTION_FLIP_RATE)
        if flipped:
            others = [e for e in EMOTIONS if e != emotion]
            emotion = others[rng.integers(len(others))]
        sentiment = sentiment_of(valence, arousal, SENTIMENT_NOISE * rng.standard_normal())
        uid = f"{speaker['name']}_{j:03d}"
        rows.append({"uid": uid, "audio": f"{AUDIO_DIR}/{speaker['name']}/{uid}.flac", "text": text,
                     "speaker": speaker["name"], "role": speaker["role"],
                     "voice": f"{speaker['accent']}+{speaker['variant']}", **prosody,
                     "valence": valence, "negated": int(negated), "arousal": arousal,
                     "marker": int(marker), "companion": "" if companion is None else companion,
                     "transfer": int(has_transfer_word(text)), "emotion": emotion,
                     "emotion_flipped": int(flipped), "sentiment": sentiment})
    return rows


def _check_size(size: str) -> SynthSize:
    if size not in SIZES:
        raise UserError(f"unknown synth size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[size]


def plan(size: str) -> tuple[list[dict], list[dict]]:
    """(speakers, utterance rows without n_samples) for a size; pure and deterministic."""
    spec = _check_size(size)
    speakers, rows = [], []
    for role in ROLES:
        count, per_speaker = getattr(spec, role)
        for _ in range(count):
            speakers.append(_speaker(len(speakers), role))
            rows += _utterances(speakers[-1], len(speakers) - 1, per_speaker)
    return speakers, rows


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def generation_parameters(size: str) -> dict:
    """Everything the build depends on, JSON-ready; the plan's rows enter through their hash."""
    spec = _check_size(size)
    speakers, rows = plan(size)
    params = {
        "format_version": FORMAT_VERSION, "seed": GENERATION_SEED, "size": size,
        "speakers_per_role": spec.speakers_per_role(),
        "utterances_per_speaker": spec.utterances_per_speaker(), "n_trials": spec.n_trials,
        "sample_rate": SAMPLE_RATE, "strength": STRENGTH, "jitter": JITTER,
        "arousal_offsets": list(AROUSAL_OFFSETS), "arousal_shares": list(AROUSAL_SHARES),
        "arousal_units": AROUSAL_UNITS, "baseline_ranges": BASELINE_RANGES,
        "parameter_limits": PARAMETER_LIMITS, "valence_shares": VALENCE_SHARES,
        "negation_rate": NEGATION_RATE, "companion_rate": COMPANION_RATE,
        "companion_agreement": COMPANION_AGREEMENT, "companions": COMPANIONS,
        "markers": list(MARKERS), "marker_rates": {"low": MARKER_RATES[False], "high": MARKER_RATES[True]},
        "transfer_words": list(TRANSFER_WORDS), "sentiment_noise": SENTIMENT_NOISE,
        "sentiment_noise_clip": SENTIMENT_NOISE_CLIP,
        "emotion_flip_rate": EMOTION_FLIP_RATE, "plan_sha256": _sha256_json([speakers, rows]),
    }
    return json.loads(json.dumps(params))  # as it reads back from manifest.json (str keys, lists)


# --- the engine ------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exiting when data is missing
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAMETER_IDS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}  # espeak_PARAMETER
_EXIT_VOICE, _EXIT_PARAMETER, _EXIT_SYNTH, _EXIT_OTHER = 3, 4, 5, 6  # the child's exit codes
_EXIT_REASONS = {_EXIT_PARAMETER: "espeak_SetParameter failed", _EXIT_SYNTH: "espeak_Synth failed",
                 _EXIT_OTHER: "an exception in the child"}
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


def _load_library() -> tuple[ctypes.CDLL, str]:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib, espeakng_loader.get_data_path()


class _Engine:
    """An initialised eSpeak NG that never synthesises in its own process.

    ``render`` forks a child per utterance, so each utterance starts from the same pristine
    engine state, and seeds the engine's random generator from the utterance's inputs: the
    audio is bit-reproducible. Not thread-safe: callers hold ``_ENGINE_LOCK``.
    """

    def __init__(self):
        self.lib, data_path = _load_library()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                          _INITIALIZE_DONT_EXIT)
        if rate != SAMPLE_RATE:
            raise UserError(f"{data_path}: eSpeak NG failed to initialise (returned {rate}); "
                            "expected the voice data shipped with espeakng-loader")
        self.chunks: list[bytes] = []
        self.callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self.chunks.append(ctypes.string_at(wav, n_samples * 2))
        return 0  # 0 = continue synthesis

    def _synthesise_and_exit(self, write_fd: int, text: str, voice: str, params: dict[str, int]) -> None:
        """Child side: synthesise, write raw int16 to the pipe, exit without returning."""
        code = _EXIT_OTHER
        try:
            # espeak_Initialize seeds the engine's own random generator with time(NULL), and the
            # breathy variants (f2, f3, f5) draw noise from it: seed it from the inputs instead,
            # so the audio depends on nothing else.
            key = json.dumps([text, voice, params], sort_keys=True).encode()
            self.lib.espeak_ng_SetRandSeed(int.from_bytes(hashlib.sha256(key).digest()[:4], "little"))
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                code = _EXIT_VOICE
                return
            for name, value in params.items():
                if self.lib.espeak_SetParameter(_PARAMETER_IDS[name], value, 0) != 0:
                    code = _EXIT_PARAMETER
                    return
            encoded = text.encode("utf-8")
            if self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                     None, None) != 0:
                code = _EXIT_SYNTH
                return
            view = memoryview(b"".join(self.chunks))
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        finally:
            os._exit(code)  # never return into the parent's code (a test runner, a pool worker)

    def render(self, text: str, voice: str, params: dict[str, int]) -> np.ndarray:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._synthesise_and_exit(write_fd, text, voice, params)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()  # to EOF before waiting: the pipe buffer is smaller than the audio
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == _EXIT_VOICE:
            raise UserError(f"unknown eSpeak NG voice {voice!r}; expected e.g. 'en-us+m1'")
        if code != 0:
            reason = _EXIT_REASONS.get(code, f"exit status {code}")
            raise RuntimeError(f"eSpeak NG could not synthesise {text!r} ({voice}, {params}): {reason}")
        return np.frombuffer(data, dtype=np.int16).copy()


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def synthesize(text: str, voice: str, pitch: int, pitch_range: int, rate: int, volume: int) -> np.ndarray:
    """One utterance as int16 mono at SAMPLE_RATE, reproducible (synthesised in a forked child).

    ``voice`` is an eSpeak NG name such as "en-us+m1"; pitch and pitch_range are 0-100, rate
    in words per minute (80-450), volume 0-140.
    """
    params = {"pitch": pitch, "range": pitch_range, "rate": rate, "volume": volume}
    for name, value in params.items():
        lo, hi = PARAMETER_LIMITS[name]
        if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            label = "pitch_range" if name == "range" else name
            raise UserError(f"synthesize: {label} must be an integer in [{lo}, {hi}], got {value!r}")
    if not text.strip():
        raise UserError("synthesize: text is empty; expected at least one word")
    with _ENGINE_LOCK:
        return _engine().render(text, voice, {k: int(v) for k, v in params.items()})


# --- building --------------------------------------------------------------------------------

def _init_worker() -> None:
    _engine()  # initialise once per worker; the children it forks do the synthesis


def _render_chunk(task: tuple[str, list[tuple[str, str, str, dict[str, int]]]]) -> list[int]:
    """Synthesise and write (out_dir, [(audio path, text, voice, params), ...]); sample counts back."""
    import soundfile

    out_dir, jobs = task
    counts = []
    for rel, text, voice, params in jobs:
        samples = _engine().render(text, voice, params)
        soundfile.write(os.path.join(out_dir, rel), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        counts.append(len(samples))
    return counts


def versions() -> dict[str, str]:
    """Engine and encoder versions: a build is reused only under the same ones."""
    import soundfile

    lib, _ = _load_library()
    return {"espeak-ng": lib.espeak_Info(None).decode(),
            "espeakng-loader": metadata.version("espeakng-loader"),
            "soundfile": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__}


def _digest(root: Path, generation: dict) -> str:
    """sha256 over the generation parameters, then each file (path and content) in fixed order."""
    h = hashlib.sha256(json.dumps(generation, sort_keys=True, separators=(",", ":")).encode())
    audio = sorted((p.relative_to(root).as_posix() for p in (root / AUDIO_DIR).rglob("*.flac")))
    for rel in [UTTERANCES, *audio]:
        path = root / rel
        try:
            with open(path, "rb") as f:
                content = hashlib.file_digest(f, "sha256").digest()
        except FileNotFoundError:
            raise DataError(path, "missing; expected a file of the synth build") from None
        h.update(rel.encode() + b"\0" + content)
    return h.hexdigest()


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "missing; expected a finished synth build "
                              "(build it with `bench.py data synth`)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e}); expected the synth build manifest") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror}); expected the synth build manifest") from None
    keys = ("dataset", "size", "generation", "versions", "digest", "counts")
    complete = isinstance(manifest, dict) and all(k in manifest for k in keys)
    if not complete or manifest["dataset"] != "synth":
        raise DataError(path, f"expected a JSON object with dataset 'synth' and keys {', '.join(keys)}")
    if not isinstance(manifest["generation"], dict):
        raise DataError(path, "expected 'generation' to be an object of generation parameters")
    return manifest


def verify(root: Path) -> str:
    """Recompute the build's digest and compare it with the manifest's; the digest if equal."""
    root = Path(root)
    manifest = _read_manifest(root / MANIFEST)
    digest = _digest(root, manifest["generation"])
    if digest != manifest["digest"]:
        raise UserError(f"{root}: files do not match the digest in {MANIFEST}; "
                        "expected an unmodified build (rebuild with `bench.py data synth`)")
    return digest


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=UTTERANCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _reusable(root: Path, generation: dict, engine_versions: dict) -> bool:
    """A finished build of exactly these parameters and versions whose files verify."""
    try:
        manifest = _read_manifest(root / MANIFEST)
        if manifest["generation"] != generation or manifest["versions"] != engine_versions:
            return False
        verify(root)
    except UserError:
        return False
    return True


def _remove_stale_partials(data_dir: Path, size: str) -> None:
    """Delete leftovers of interrupted builds whose process is gone."""
    for path in data_dir.glob(f".synth-{size}.partial-*"):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _replace_dir(staged: Path, root: Path) -> None:
    """Move a finished build into place; an old one is renamed away first, then deleted."""
    if root.exists():
        ours = not any(root.iterdir()) or any((root / n).exists() for n in (MANIFEST, UTTERANCES, AUDIO_DIR))
        if not ours:
            raise UserError(f"{root}: exists and is not a synth build; expected it absent or a "
                            "previous build (move it away)")
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        os.replace(staged, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, root)


def build_root(data_dir: Path, size: str) -> Path:
    """Where ``build`` puts (and looks for) the build of a size."""
    return Path(data_dir) / f"synth-{size}"


def build(data_dir: Path, size: str = "default", workers: int = 2, progress: bool = True) -> Path:
    """Build ``data_dir / f"synth-{size}"`` (or verify and reuse a finished identical build).

    The build is staged in a hidden sibling directory with manifest.json written last, then
    renamed into place, so an interrupted build is never mistaken for a finished one.
    """
    spec = _check_size(size)
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    data_dir = Path(data_dir)
    root = build_root(data_dir, size)
    generation = generation_parameters(size)
    engine_versions = versions()
    if _reusable(root, generation, engine_versions):
        return root

    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(data_dir, size)
    staged = data_dir / f".synth-{size}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        speakers, rows = plan(size)
        for speaker in speakers:
            (staged / AUDIO_DIR / speaker["name"]).mkdir(parents=True)
        jobs = [(r["audio"], r["text"], r["voice"], {p: r[p] for p in _PARAMETER_IDS}) for r in rows]
        chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
        counts: list[int] = []
        # spawn: the workers must not inherit this process's threads (the progress bar's).
        context = multiprocessing.get_context("spawn")
        with progress_bar(progress) as bar, context.Pool(min(workers, len(chunks)), _init_worker) as pool:
            task = bar.add_task(f"synth-{size}", total=len(jobs))
            # imap keeps the chunks' order; which worker renders a chunk does not matter.
            for chunk_counts in pool.imap(_render_chunk, [(str(staged), c) for c in chunks]):
                counts += chunk_counts
                bar.advance(task, len(chunk_counts))
        for row, n_samples in zip(rows, counts, strict=True):
            row["n_samples"] = n_samples
        _write_csv(staged / UTTERANCES, rows)
        seconds = sum(counts) / SAMPLE_RATE
        manifest = {
            "dataset": "synth", "size": size, "generation": generation, "versions": engine_versions,
            "counts": {"speakers": spec.n_speakers, "utterances": len(rows),
                       "audio_hours": round(seconds / 3600, 4),
                       **{f"{role}_speakers": n for role, n in spec.speakers_per_role().items()},
                       **{f"{role}_utterances": n for role, n in spec.utterances_per_role().items()},
                       "transfer_utterances": {role: sum(r["transfer"] for r in rows if r["role"] == role)
                                               for role in ROLES}},
            "speakers": speakers, "digest": _digest(staged, generation),
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _replace_dir(staged, root)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return root


# --- the dataset -----------------------------------------------------------------------------

def _parse_row(path: Path, line: int, row: dict) -> dict:
    """Type-check one utterances.csv row; DataError naming file and line otherwise."""
    def number(key: str, kind):
        try:
            return kind(row[key])
        except (TypeError, ValueError):
            raise DataError(path, f"column {key!r} expects {kind.__name__}, got {row[key]!r}", line) from None

    parsed = {"uid": row["uid"], "audio": row["audio"], "text": row["text"], "speaker": row["speaker"],
              "role": row["role"], "voice": row["voice"], "emotion": row["emotion"]}
    for key in ("valence", "arousal", "negated", "marker", "transfer", "emotion_flipped", "n_samples",
                "pitch", "range", "rate", "volume"):
        parsed[key] = number(key, int)
    parsed["companion"] = None if row["companion"] == "" else number("companion", int)
    parsed["sentiment"] = number("sentiment", float)
    checks = (
        (parsed["uid"] and parsed["speaker"] and parsed["text"], "non-empty uid, speaker and text"),
        (parsed["role"] in ROLES, f"role one of {', '.join(ROLES)}, got {parsed['role']!r}"),
        (parsed["emotion"] in EMOTIONS, f"emotion one of {', '.join(EMOTIONS)}, got {parsed['emotion']!r}"),
        (-3.0 <= parsed["sentiment"] <= 3.0, f"sentiment in [-3, 3], got {parsed['sentiment']}"),
        (parsed["valence"] in (-1, 0, 1), f"valence -1, 0 or 1, got {parsed['valence']}"),
        (parsed["arousal"] in (0, 1, 2), f"arousal 0, 1 or 2, got {parsed['arousal']}"),
        (parsed["companion"] in (None, -1, 0, 1), f"companion -1, 0, 1 or empty, got {parsed['companion']}"),
        (all(parsed[k] in (0, 1) for k in ("negated", "marker", "transfer", "emotion_flipped")),
         "negated, marker, transfer and emotion_flipped 0 or 1"),
        (parsed["transfer"] == has_transfer_word(parsed["text"]),
         f"transfer 1 exactly when the text holds one of {', '.join(TRANSFER_WORDS)}"),
        (parsed["audio"].startswith(f"{AUDIO_DIR}/") and ".." not in parsed["audio"],
         f"audio a path under {AUDIO_DIR}/, got {parsed['audio']!r}"),
    )
    for ok, expected in checks:
        if not ok:
            raise DataError(path, f"expected {expected}", line)
    return parsed


def read_utterances(root: Path) -> list[dict]:
    """The rows of utterances.csv, typed and validated (every listed audio file must exist)."""
    path = Path(root) / UTTERANCES
    rows, seen = [], set()
    try:
        for line, row in csv_rows(path, UTTERANCE_COLUMNS):
            parsed = _parse_row(path, line, row)
            if parsed["uid"] in seen:
                raise DataError(path, f"duplicate uid {parsed['uid']!r}; expected unique uids", line)
            if not (Path(root) / parsed["audio"]).is_file():
                raise DataError(Path(root) / parsed["audio"],
                                f"missing audio file listed in {UTTERANCES} line {line}")
            seen.add(parsed["uid"])
            rows.append(parsed)
    except FileNotFoundError:
        raise DataError(path, "missing; expected the synth utterance table") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror}); expected the synth utterance table") from None
    if not rows:
        raise DataError(path, "no utterances; expected one row per utterance")
    return rows


@DATASETS.register("synth")
class SynthDataset(Dataset):
    """A finished synth build (see ``build``): emotion, sentiment, verification, pre-training.

    One fold, "0": speakers have fixed roles, so the splits are fixed and speaker-disjoint;
    ``seed`` only picks the verification trials. Examples whose transcript holds one of
    TRANSFER_WORDS (never in labelled training) carry the subset "transfer".
    """

    name = "synth"
    tasks = ("emotion", "sentiment", "verification")
    has_pretraining = True
    version = FORMAT_VERSION

    def __init__(self, root: Path):
        super().__init__(root)
        self.manifest = _read_manifest(self.root / MANIFEST)
        self.size = self.manifest["size"]
        try:
            self.n_trials = int(self.manifest["generation"]["n_trials"])
        except (KeyError, TypeError, ValueError):
            raise DataError(self.root / MANIFEST, "expected generation.n_trials, an integer") from None
        self.rows = read_utterances(self.root)
        self.by_role: dict[str, tuple[Example, ...]] = {
            role: tuple(self._example(r) for r in self.rows if r["role"] == role) for role in ROLES}

    def _example(self, row: dict) -> Example:
        labelled = row["role"] != "pretrain"
        return Example(uid=row["uid"], audio=self.root / row["audio"], text=row["text"],
                       speaker=row["speaker"], emotion=row["emotion"] if labelled else None,
                       sentiment=row["sentiment"] if labelled else None,
                       subsets=(TRANSFER_SUBSET,) if row["transfer"] else ())

    def split(self, task: str, fold: str, seed: int) -> Split:
        self.check_fold(task, fold)
        if task == "verification":
            # Train = speaker classification on the fine-tuning train speakers; dev trials come
            # from the dev speakers, test trials from the held-out verification speakers.
            dev, test = self.by_role["dev"], self.by_role["verify"]
            return Split(train=self.by_role["train"], dev=dev, test=test,
                         dev_trials=build_trials(dev, self.n_trials, seed),
                         test_trials=build_trials(test, self.n_trials, seed))
        return Split(train=self.by_role["train"], dev=self.by_role["dev"], test=self.by_role["test"])

    def pretraining(self) -> tuple[Example, ...]:
        """Unlabelled audio-transcript pairs from the pre-training speakers only."""
        return self.by_role["pretrain"]
