"""Waveforms as the audio family sees them: log-mel "images" and back (Griffin-Lim), WAV files, audio on a page.

Everything here is torch, so the spectrograms and the vocoder run on the model's device. A waveform batch is
(N, 1, L) or (N, L), float in [-1, 1]; a mel image is (N, 1, n_mels, frames) in [-1, 1], as a UNet takes it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.media.formats import Media, png_tag

MIN_MAGNITUDE = 1e-5  # the floor under every log


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, evenly spaced on the HTK mel scale from 0 Hz to Nyquist."""
    top = 2595 * math.log10(1 + sample_rate / 2 / 700)
    hz = 700 * (10 ** (torch.linspace(0, top, n_mels + 2, dtype=torch.float64) / 2595) - 1)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)[:, None]
    rising = (freqs - hz[:-2]) / (hz[1:-1] - hz[:-2])
    falling = (hz[2:] - freqs) / (hz[2:] - hz[1:-1])
    return torch.minimum(rising, falling).clamp(min=0).float()


class MelSpectrogram(torch.nn.Module):
    """Waveforms <-> log-mel images in [-1, 1]: `max_db` maps to 1 and `max_db - top_db` (and below) to -1."""

    def __init__(self, sample_rate: int, samples: int, n_mels: int, frames: int, n_fft: int, max_db: float,
                 top_db: float) -> None:
        super().__init__()
        self.sample_rate, self.samples, self.frames, self.n_fft = sample_rate, samples, frames, n_fft
        self.hop = math.ceil(samples / frames)
        if self.hop > n_fft:
            raise ValueError(f"n_fft {n_fft} is shorter than the hop of {self.hop} samples: raise n_fft or frames")
        self.max_db, self.top_db = max_db, top_db
        filters = mel_filters(sample_rate, n_fft, n_mels)
        self.register_buffer("filters", filters, persistent=False)
        self.register_buffer("unfilter", torch.linalg.pinv(filters), persistent=False)  # mel -> linear, least squares
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def stft(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.stft(waves, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)

    def encode(self, waves: torch.Tensor) -> torch.Tensor:
        """(N, [1,] L) waveforms -> (N, 1, n_mels, frames) log-mel images in [-1, 1]."""
        magnitude = self.stft(waves.reshape(len(waves), -1).float()).abs()[..., : self.frames]
        mel = (magnitude.transpose(1, 2) @ self.filters).transpose(1, 2)
        db = 20 * mel.clamp(min=MIN_MAGNITUDE).log10()
        return ((db - self.max_db) / self.top_db * 2 + 1).clamp(-1, 1)[:, None]

    def magnitudes(self, images: torch.Tensor) -> torch.Tensor:
        """Log-mel images -> linear-frequency magnitudes (N, n_fft // 2 + 1, frames + 1), for the vocoder."""
        db = (images.float()[:, 0].clamp(-1, 1) - 1) / 2 * self.top_db + self.max_db
        mel = 10 ** (db / 20)
        linear = (mel.transpose(1, 2) @ self.unfilter).transpose(1, 2).clamp(min=0)
        frames = self.samples // self.hop + 1  # what the STFT of a whole clip holds; the last ones are silence
        return torch.nn.functional.pad(linear, (0, frames - linear.shape[-1]))

    def decode(self, images: torch.Tensor, iterations: int = 32) -> torch.Tensor:
        """Log-mel images -> (N, L) waveforms by fast Griffin-Lim (Perraudin et al., momentum 0.99)."""
        return self.griffin_lim(self.magnitudes(images), iterations)

    def griffin_lim(self, magnitude: torch.Tensor, iterations: int) -> torch.Tensor:
        """Phases for `magnitude` from zero phase: no randomness, so a clip is the same alone or in a batch."""
        angles = torch.complex(torch.ones_like(magnitude), torch.zeros_like(magnitude))
        previous = torch.zeros_like(angles)
        momentum = 0.99 / 1.99
        for _ in range(iterations):
            rebuilt = self.stft(self.istft(magnitude * angles))
            angles = rebuilt - momentum * previous
            angles = angles / angles.abs().clamp(min=1e-16)
            previous = rebuilt
        return self.istft(magnitude * angles).clamp(-1, 1)

    def istft(self, spectrum: torch.Tensor) -> torch.Tensor:
        return torch.istft(spectrum, self.n_fft, self.hop, window=self.window, center=True, length=self.samples)

    def spectral_convergence(self, waves: torch.Tensor, rebuilt: torch.Tensor) -> float:
        """|| |S| - |S'| ||_F / || |S| ||_F of two waveform batches: 0 is the same magnitudes."""
        a = self.stft(waves.reshape(len(waves), -1).float()).abs()
        b = self.stft(rebuilt.reshape(len(rebuilt), -1).float()).abs()
        return float((a - b).norm() / a.norm().clamp(min=1e-12))


# --- files and pages -------------------------------------------------------------------------------


def wav_bytes(wave: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """One waveform in [-1, 1] as 16-bit PCM WAV."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, _mono(wave), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_wav(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """A WAV file, written whole then renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(wav_bytes(wave, sample_rate))
    tmp.replace(path)
    return path


def audio_tag(wave: torch.Tensor | np.ndarray, sample_rate: int, title: str = "") -> str:
    """An <audio> element with the WAV inline, so a page plays it with no file beside it."""
    data = base64.b64encode(wav_bytes(wave, sample_rate)).decode()
    return (f"<audio controls style='width:170px' title='{html.escape(title)}' "
            f"src='data:audio/wav;base64,{data}'></audio>")


def _mono(wave: torch.Tensor | np.ndarray) -> np.ndarray:
    array = wave.detach().float().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    return np.clip(array.reshape(-1), -1, 1).astype(np.float32)


@dataclass(frozen=True)
class Clips(Media):
    """Waveforms (N, L): a folder of WAV files (or one .wav for one clip); players and spectrograms on a page."""

    sample_rate: int = 16_000
    mel: Any = field(default=None, compare=False)  # a MelSpectrogram: the page shows what the model drew

    def _write(self, samples: torch.Tensor, path: Path) -> Path:
        if path.suffix.lower() == ".wav":
            if len(samples) != 1:
                raise ValueError(f"{path}: one .wav file holds one clip, not {len(samples)}; give a folder")
            return write_wav(path, samples[0], self.sample_rate)
        path.mkdir(parents=True, exist_ok=True)
        for i, wave in enumerate(samples):
            write_wav(path / f"{i:03d}.wav", wave, self.sample_rate)
        return path

    def log(self, experiment: Any, samples: torch.Tensor, step: int) -> None:
        if hasattr(experiment, "add_audio"):
            for i, wave in enumerate(samples[:8]):
                experiment.add_audio(f"samples/{i}", wave.reshape(1, -1).float().cpu(), step, self.sample_rate)

    def html(self, samples: torch.Tensor, limit: int = 8) -> str:
        """Each clip as its spectrogram (low pitches at the bottom) over its player."""
        shown = samples[:limit]
        images = None
        if self.mel is not None:
            with torch.no_grad():
                images = self.mel.encode(shown.to(self.mel.window.device)).flip(-2).cpu() / 2 + 0.5
        cells = [f"<figure>{png_tag(images[i : i + 1], scale=4) if images is not None else ''}<br>"
                 f"{audio_tag(wave, self.sample_rate, f'clip {i}')}</figure>" for i, wave in enumerate(shown)]
        return f"<div class=row>{''.join(cells)}</div>"
