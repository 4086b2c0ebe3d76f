"""Phone segments of English speech, offline: what the articulation ruler measures the mouth on.

    phones = phone_segments(audio16)      # [Phone(name, start, end), ...] in seconds, ARPAbet names

pocketsphinx 5 ships an en-us acoustic model, language model and dictionary in its wheel. The
audio is first recognised with that language model (the transcript), then the transcript is
force-aligned to the audio at the phone level (``Decoder.set_align_text`` + ``set_alignment``).
Recognition errors mostly swap words that sound alike, so the aligned phones still sit where the
sounds are; a transcript is not needed. Results are cached per audio (sha256 of its samples) under
``$XDG_CACHE_HOME/avatar3d/phones`` (``~/.cache`` by default). English only: other languages get a
UserError naming the reason, and callers leave the phone measures out.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar3d.errors import UserError

RATE = 16_000
FRAME_S = 0.01  # pocketsphinx's frame
LANGUAGES = ("en",)
CACHE_VERSION = 1
BILABIALS = frozenset({"P", "B", "M"})
OPEN_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH"})  # ARPAbet open and open-mid vowels


@dataclass(frozen=True)
class Phone:
    name: str  # ARPAbet, stress removed ("SIL" for silence)
    start: float  # seconds
    end: float

    @property
    def centre(self) -> float:
        return 0.5 * (self.start + self.end)


def phones_unavailable_reason(language: str) -> str | None:
    """None when phones of ``language`` audio can be found here, else why not (one line)."""
    if language not in LANGUAGES:
        return f"phone measures need English audio (language {language!r}; the aligner has an en-us model only)"
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return "pocketsphinx is not installed (pip install pocketsphinx)"
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avatar3d" / "phones"


def _decode(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def align(audio16: np.ndarray) -> tuple[str, list[Phone]]:
    """Recognise ``[S]`` float32 16 kHz audio and align the transcript: (transcript, phones)."""
    from pocketsphinx import Decoder

    pcm = (np.clip(audio16, -1, 1) * 32767).astype("<i2").tobytes()
    recogniser = Decoder(samprate=RATE, loglevel="FATAL")
    _decode(recogniser, pcm)
    hyp = recogniser.hyp()
    words = [w for w in (hyp.hypstr.split() if hyp is not None else []) if recogniser.lookup_word(w)]
    if not words:
        return "", []
    aligner = Decoder(samprate=RATE, loglevel="FATAL")
    aligner.set_align_text(" ".join(words))
    _decode(aligner, pcm)
    aligner.set_alignment()
    _decode(aligner, pcm)
    phones = []
    for word in aligner.get_alignment():
        for p in word:
            name = "".join(c for c in p.name if not c.isdigit())
            phones.append(Phone(name, round(p.start * FRAME_S, 3), round((p.start + p.duration) * FRAME_S, 3)))
    return " ".join(words), phones


def phone_segments(audio16: np.ndarray, language: str = "en", cache: bool = True) -> list[Phone]:
    """Phone segments of ``audio16`` ([S] float32, 16 kHz); UserError when the language or the
    aligner rules them out (:func:`phones_unavailable_reason`)."""
    reason = phones_unavailable_reason(language)
    if reason:
        raise UserError(reason)
    audio16 = np.ascontiguousarray(audio16, np.float32)
    key = hashlib.sha256(audio16.tobytes()).hexdigest()[:32]
    path = _cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            obj = json.loads(path.read_text())
            if obj.get("version") == CACHE_VERSION:
                return [Phone(*p) for p in obj["phones"]]
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a bad cache entry is recomputed
    transcript, phones = align(audio16)
    if cache:
        from avatar3d.fsutil import write_json

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"version": CACHE_VERSION, "transcript": transcript,
                              "phones": [[p.name, p.start, p.end] for p in phones]})
        except OSError:
            pass  # a read-only home: no cache, same result
    return phones
