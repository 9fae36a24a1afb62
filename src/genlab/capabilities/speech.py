"""Say a class: `genlab sample` writes clips, `/v1/audio/speech` answers in OpenAI's shape, and `genlab evaluate`
scores clips as the SC09 papers do (evaluation/sc09.py).

`client.audio.speech.create(model=..., input="seven", voice="alloy", response_format="wav")` returns a WAV
of the digit: the input is a class name (any case) or a class number; the model draws its own voice, so
`voice` is accepted and not used (`seed` picks the voice, as it picks an image). Concurrent requests with the
same options share one sampler call, as images do.
"""

from __future__ import annotations

import io
import time
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from genlab.capabilities import Capability
from genlab.capabilities.images import ImageModel, ServedSamples, sample_items
from genlab.evaluation.figures import Figure
from genlab.serving.guard import Refused
from genlab.serving.schemas import ModelRequest
from genlab.serving.server import authorize, run_job, served_for

FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "application/octet-stream"}


class SpeechModel(ImageModel, Protocol):
    """A family of clips: an image family whose samples are waveforms at `spec.sample_rate`."""


class SpeechRequest(ModelRequest):
    input: str = Field(max_length=4096)
    voice: str | dict[str, Any] | None = None  # OpenAI's; the model draws its own voice (seed picks it)
    instructions: str | None = Field(None, max_length=4096)
    response_format: str = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio"] = "audio"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    # any other field is one of the model family's sampling options (its `Sampling` class), checked there
    model_config = ConfigDict(extra="allow")


router = APIRouter()


class ServedSpeech(ServedSamples):
    """A class-conditional audio model: each request one clip, WAV bytes out of the worker."""

    kind = "speech"

    def check_filters(self) -> None:
        super().check_filters()
        self.copies = None  # a clip keeps no copy check

    def encode(self, sample: Any) -> bytes:
        from genlab.media.audio import wav_bytes

        return wav_bytes(sample, self.model.spec.sample_rate)

    def label(self, text: str) -> int | None:
        """The class an input names: a class name in any case, or its number; None for an unconditional model."""
        if not self.model.takes_labels:
            return None
        names = [n.casefold() for n in self.model.spec.class_names]
        word = text.strip().casefold()
        if word in names:
            return names.index(word)
        if word.isdecimal() and word.isascii() and int(word) < len(names):
            return int(word)
        shown = ", ".join(self.model.spec.class_names)
        raise Refused(400, f"input: {text[:40]!r} is not a class this model speaks ({shown}), nor a class "
                      f"number 0 to {len(names) - 1}", code="invalid_value")


@router.post("/v1/audio/speech", tags=["audio"])
async def speech(body: SpeechRequest, request: Request, identity: str = Depends(authorize)) -> Response:
    """One clip of the class the input names, in OpenAI's speech shape (wav, flac, or 16-bit pcm at the model's
    rate); genlab's seed and the family's sampling options (guidance_scale, steps...) ride along."""
    server, served = served_for(request, body.model, ServedSpeech, "/v1/audio/speech")
    if body.response_format not in FORMATS:
        raise Refused(400, f"response_format: {body.response_format!r}; this server writes "
                      f"{', '.join(FORMATS)}", code="invalid_value")
    if body.speed != 1.0:
        raise Refused(400, "speed: this model speaks at the pace it learned; only 1.0", code="invalid_value")
    label = served.label(body.input)
    key, items = sample_items(server, served, 1, {} if label is None else {"labels": label}, body.seed,
                              body.model_extra or {})
    clip, _ = (await run_job(served, key, items, request))[0]  # (wav, copied): a clip keeps no copy check
    server.metrics.images.labels(served.name).inc(1)
    return Response(_as(clip, body.response_format, served.model.spec.sample_rate), media_type=FORMATS[
        body.response_format], headers={"x-genlab-sample-rate": str(served.model.spec.sample_rate),
                                        "x-genlab-created": str(int(time.time()))})


def _as(wav: bytes, response_format: str, sample_rate: int) -> bytes:
    """The worker's WAV in the asked format."""
    if response_format == "wav":
        return wav
    import soundfile

    wave, _ = soundfile.read(io.BytesIO(wav), dtype="float32")
    if response_format == "pcm":
        return (wave.clip(-1, 1) * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, sample_rate, format="FLAC")
    return buffer.getvalue()


ServedSpeech.router = router

AUDIO_FIGURES = (Figure("fid", "FID (digit classifier features)", False, ("fid_real_baseline", "real vs real")),
                 Figure("label_accuracy", "label accuracy", True, ("classifier_accuracy_vocoded", "real, vocoded")),
                 Figure("inception_score", "Inception Score", True, ("inception_score_real", "real")))

CAPABILITY = Capability("speech", SpeechModel, served=ServedSpeech, evaluator="genlab.evaluation.sc09:evaluate_audio",
                        headline=AUDIO_FIGURES, audit="genlab.evaluation.sc09:audit_clips", hub_task="text-to-audio")
