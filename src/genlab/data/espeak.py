"""eSpeak NG through ctypes (the library and its voice data come in the `espeakng-loader` wheel): text in,
16-bit samples out. numpy and ctypes only, so that a fresh process starts it quickly: `python -m
genlab.data.espeak` reads lines as JSON on stdin and writes their samples as .npz on stdout (`audio.speak`)."""

from __future__ import annotations

import ctypes
import io
import json
import sys

import numpy as np

SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the text is spoken, through the callback
RATE, PITCH = 1, 3  # espeak_PARAMETER
POS_CHARACTER = 1


class Speaker:
    """One libespeak-ng in this process."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise RuntimeError("data.source 'spoken_digits' needs eSpeak NG: pip install espeakng-loader") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.rate = self.lib.espeak_Initialize(SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("eSpeak NG did not start")
        self.chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_ng_SetRandSeed(0)

    def _collect(self, wave, n: int, events) -> int:
        if wave and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wave, (n,)).copy())
        return 0

    def say(self, text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
        """The spoken text as int16 samples at `self.rate`."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(PITCH, pitch, 0)
        self.chunks = []
        data = text.encode() + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def speak_all(lines: list[tuple[str, str, int, int]]) -> tuple[int, list[np.ndarray]]:
    """(sample rate, int16 samples of each (text, voice, words per minute, pitch)), in order."""
    speaker = Speaker()
    return speaker.rate, [speaker.say(*line) for line in lines]


def main() -> None:
    rate, waves = speak_all([tuple(line) for line in json.load(sys.stdin)])
    buffer = io.BytesIO()
    np.savez(buffer, rate=rate, lengths=np.array([len(w) for w in waves]),
             samples=np.concatenate(waves) if waves else np.zeros(0, np.int16))
    sys.stdout.buffer.write(buffer.getvalue())


if __name__ == "__main__":
    main()
