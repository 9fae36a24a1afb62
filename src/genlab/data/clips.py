"""Audio sources: `spoken_digits` (synthesised offline with eSpeak NG) and `audio_folder` (a user's WAV/FLAC/OGG
files, a class per subfolder). Both return `Loaded(x=(N, 1, L) waveforms in [-1, 1], modality="audio")` at
`data.sample_rate`, every clip cut or padded to `data.clip_seconds`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from genlab.data.records import Loaded
from genlab.errors import GenlabError
from genlab.media.suffixes import AUDIO_SUFFIXES

log = logging.getLogger("genlab")

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MIN_SECONDS = 0.2  # a shorter file holds no word: named and skipped
# eSpeak NG voices: English accents, and the variants that change the speaker (male, female, Klatt synthesis)
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "klatt4", "croak", "whisper")


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """A polyphase resampling (scipy's, with its anti-aliasing filter) from `rate` to `target` samples/s."""
    if rate == target:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def fit_length(wave: np.ndarray, samples: int, offset: int = 0) -> np.ndarray:
    """`wave` placed `offset` samples into a clip of `samples`: cut where it runs over, silence where it is short."""
    out = np.zeros(samples, np.float32)
    part = wave[: max(0, samples - offset)]
    out[offset : offset + len(part)] = part
    return out


# --- spoken digits -----------------------------------------------------------------------------------


def spoken_digits(cfg) -> Loaded:
    """The ten digit words spoken by eSpeak NG voices (accent x speaker variant), with speed, pitch, loudness and
    the word's place in the clip drawn from `data.split_seed`: `data.limit` clips (default 3,000), one class
    per digit, balanced. A stand-in for SC09 that needs no download."""
    rng = np.random.default_rng(cfg.split_seed)
    samples = round(cfg.sample_rate * cfg.clip_seconds)
    n = cfg.limit or 3000
    labels = np.arange(n) % 10
    voices = [f"{ACCENTS[a]}+{VARIANTS[v]}" for a, v in zip(rng.integers(len(ACCENTS), size=n),
                                                           rng.integers(len(VARIANTS), size=n))]
    speeds, pitches = rng.integers(130, 230, size=n), rng.integers(25, 76, size=n)
    gains, places = 10 ** (rng.uniform(-12, 0, size=n) / 20), rng.uniform(size=n)
    rate, words = speak([(DIGITS[k], v, int(w), int(p)) for k, v, w, p in zip(labels, voices, speeds, pitches)])
    waves = np.zeros((n, samples), np.float32)
    for i, word in enumerate(words):
        word = resample(_trim(word.astype(np.float32) / 32768), rate, cfg.sample_rate)
        word *= gains[i] * 0.9 / max(np.abs(word).max(), 1e-6)  # loudness, peak at most 0.9
        room = samples - len(word)
        waves[i] = fit_length(word, samples, int(places[i] * (room + 1)) if room > 0 else 0)
    return Loaded(torch.from_numpy(waves)[:, None], torch.from_numpy(labels).long(), list(DIGITS),
                  modality="audio", sample_rate=cfg.sample_rate)


def speak(lines: list[tuple[str, str, int, int]]) -> tuple[int, list[np.ndarray]]:
    """(rate, 16-bit samples) of each (text, voice, words per minute, pitch), spoken in a fresh process: eSpeak NG
    carries state from one utterance to the next, so the same lines in the same order give the same sound only
    from a fresh start."""
    import io
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "genlab.data.espeak"], input=json.dumps(lines).encode(),
                          capture_output=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise GenlabError(f"data.source 'spoken_digits': eSpeak NG failed: {last}")
    out = np.load(io.BytesIO(done.stdout))
    return int(out["rate"]), np.split(out["samples"], np.cumsum(out["lengths"])[:-1])


def _trim(wave: np.ndarray, level: float = 1e-3) -> np.ndarray:
    """The word without the silence eSpeak puts around it."""
    loud = np.flatnonzero(np.abs(wave) > level)
    return wave[loud[0] : loud[-1] + 1] if len(loud) else wave


# --- a user's files -----------------------------------------------------------------------------------


def read_clip(path: Path, sample_rate: int, samples: int) -> tuple[np.ndarray | None, str | None, str | None]:
    """(clip, what was changed, why it was skipped) for one file: multi-channel files are mixed down, other rates
    resampled, long files cut and short ones padded; unreadable, empty and too-short files are skipped."""
    import soundfile

    if path.stat().st_size == 0:
        return None, None, "empty file"
    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        detail = getattr(err, "error_string", None) or str(err).rsplit(": ", 1)[-1]
        return None, None, f"not readable audio ({detail.strip().rstrip('.')[:80]})"
    if not len(wave):
        return None, None, "no samples"
    declared = _declared_frames(path)
    if declared is not None and declared > len(wave):
        return None, None, f"truncated (the header declares {declared / rate:.2f} s, the file holds " \
                           f"{len(wave) / rate:.2f} s)"
    if len(wave) / rate < MIN_SECONDS:
        return None, None, f"too short ({len(wave) / rate:.2f} s; at least {MIN_SECONDS} s)"
    if not np.isfinite(wave).all():
        return None, None, "holds NaN or infinite samples"
    changes = []
    if wave.shape[1] > 1:
        changes.append(f"{wave.shape[1]} channels mixed to mono")
    wave = wave.mean(1)
    if rate != sample_rate:
        changes.append(f"resampled from {rate} Hz")
        wave = resample(wave, rate, sample_rate)
    if len(wave) != samples:
        changes.append(("cut" if len(wave) > samples else "padded") + f" from {len(wave) / sample_rate:.2f} s")
    return fit_length(np.clip(wave, -1, 1), samples), "; ".join(changes) or None, None


def _declared_frames(path: Path) -> int | None:
    """The frames a WAV file's header declares (its data chunk's size), to tell a cut-off file from a short one;
    None for other formats, whose decoders report damage themselves."""
    import struct

    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        frame_bytes = None
        while chunk := f.read(8):
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = f.read(size + size % 2)
                channels, bits = struct.unpack("<H", fmt[2:4])[0], struct.unpack("<H", fmt[14:16])[0]
                frame_bytes = max(1, channels * bits // 8)
            elif name == b"data":
                return size // frame_bytes if frame_bytes else None
            else:
                f.seek(size + size % 2, 1)
    return None


def audio_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise GenlabError(f"data.path: {root} is not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                  and not p.name.startswith("."))


def audio_folder(cfg) -> Loaded:
    """A folder of WAV/FLAC/OGG files; each subfolder is a class (files directly in the folder: no labels)."""
    if cfg.path is None:
        raise GenlabError("data.path: required for data.source 'audio_folder' (a folder of WAV/FLAC/OGG files)")
    root = Path(cfg.path).expanduser()
    files = audio_files(root)
    if not files:
        raise GenlabError(f"data.path: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) found under {root}")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."}) if root.is_dir() else []
    if classes and any(p.parent == root for p in files):
        raise GenlabError(f"data.path: {root} mixes files at the top with class subfolders; use one or the other")
    samples = round(cfg.sample_rate * cfg.clip_seconds)
    waves, labels, notes = [], [], []
    for path in files[: cfg.limit] if cfg.limit else files:
        where = path.relative_to(root).as_posix() if root.is_dir() else path.name
        wave, changed, skipped = read_clip(path, cfg.sample_rate, samples)
        if skipped:
            notes.append(f"skipped {where}: {skipped}")
            continue
        if changed:
            notes.append(f"{where}: {changed}")
        waves.append(wave)
        labels.append(classes.index(path.parent.relative_to(root).as_posix()) if classes else 0)
    skipped = [n.removeprefix("skipped ") for n in notes if n.startswith("skipped ")]
    if skipped:
        log.warning(f"skipped {len(skipped)} audio file(s) under {root}: {'; '.join(skipped[:3])}"
                    + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""))
    if not waves:
        raise GenlabError(f"data.path: none of the {len(files)} audio files under {root} could be read")
    x = torch.from_numpy(np.stack(waves))[:, None]
    return Loaded(x, torch.tensor(labels) if classes else None, classes, notes, modality="audio",
                  sample_rate=cfg.sample_rate)
