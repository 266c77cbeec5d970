"""What the audio modules share: the errors, a header's facts, and the count of repairs."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
from collections.abc import Iterator

# One logger for the whole package, named as the module was before the split (callers and tests
# listen on "automaster.audio").
logger = logging.getLogger("automaster.audio")

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"})

# More non-finite samples than this (a fraction of all samples read) means the file is garbage.
MAX_NONFINITE_FRACTION = 0.01

_REPAIRS: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("automaster_repairs", default=None)


class AudioError(Exception):
    """An input that cannot be read as audio. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path!r}: {reason}")

    def __reduce__(self):  # picklable across Ray workers despite the two-argument constructor
        return (type(self), (self.path, self.reason))


class FileError(Exception):
    """One input that a job cannot use (too short, silent, ...): recorded with its reason, never
    stops a batch. (:class:`AudioError` is the reader's; this is a job's policy.)"""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, without decoding it."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str  # libsndfile major format: "WAV", "FLAC", "OGG", "MP3", ...
    subtype: str  # "PCM_16", "PCM_24", "FLOAT", "VORBIS", "MPEG_LAYER_III", ...


def is_audio_file(path: str | os.PathLike) -> bool:
    """True if the extension is one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in AUDIO_EXTENSIONS


@contextlib.contextmanager
def repairs() -> Iterator[dict[str, int]]:
    """Collect the repairs the reads inside the block make: ``{"nonfinite_zeroed": samples}``.

    A batch job wraps each item in it, so that the summary counts what was changed in its input.
    """
    counts: dict[str, int] = {}
    token = _REPAIRS.set(counts)
    try:
        yield counts
    finally:
        _REPAIRS.reset(token)


def note_repair(kind: str, count: int = 1) -> None:
    """Count ``count`` repairs of ``kind`` in the enclosing :func:`repairs` block (if any)."""
    counts = _REPAIRS.get()
    if counts is not None and count:
        counts[kind] = counts.get(kind, 0) + int(count)
