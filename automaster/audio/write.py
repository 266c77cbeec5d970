"""Writing audio atomically; the format comes from the extension, nothing is clipped silently."""

from __future__ import annotations

import contextlib
import io
import math
import os

import numpy as np
import soundfile as sf

from automaster import storage

_WRITE_BLOCK = 1 << 16
_MAX_CHANNELS = 64

_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".mp3": "MP3"}
_PCM_SUBTYPES = ("PCM_16", "PCM_24")
_WRITE_SUBTYPES = {"WAV": ("PCM_16", "PCM_24", "FLOAT"), "FLAC": _PCM_SUBTYPES}
# Lossy formats: the subtype argument is ignored. Vorbis stores floats (peaks above 1 survive a
# round trip); LAME input above full scale is not something to rely on, so MP3 is treated as PCM.
_LOSSY_SUBTYPES = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
_FLOAT_STORAGE = {("WAV", "FLOAT"), ("OGG", "VORBIS")}

# What the MP3 encoder takes (MPEG-1/2/2.5 rates, at most stereo) and FLAC's channel limit.
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_MAX_FORMAT_CHANNELS = {"MP3": 2, "FLAC": 8}


def format_refusal(path: str | os.PathLike, sample_rate: int, channels: int) -> str | None:
    """Why ``path``'s format (by its extension) cannot hold audio of ``sample_rate`` Hz and
    ``channels`` channels (None: it can), so that a caller can say so before any work."""
    fmt = _WRITE_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())
    most = _MAX_FORMAT_CHANNELS.get(fmt or "", _MAX_CHANNELS)
    if channels > most:
        return f"{fmt} holds at most {most} channels, the audio has {channels}"
    if fmt == "MP3" and sample_rate not in _MP3_RATES:
        return f"MP3 holds {', '.join(f'{r / 1000:g}' for r in _MP3_RATES)} kHz only, the audio is at {sample_rate / 1000:g} kHz"
    return None


def write_audio(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_16",
) -> None:
    """Write ``(C, T)`` or ``(T,)`` audio atomically; the format comes from the extension.

    Args:
        path: local path or URI ending in .wav, .flac, .ogg/.oga or .mp3.
        audio: float samples, nominally in [-1, 1]; ``(C, T)`` or mono ``(T,)``. Or int16
            samples for PCM_16 WAV/FLAC, stored as they are (no conversion, nothing to check).
        sample_rate: in Hz.
        subtype: "PCM_16", "PCM_24" or "FLOAT" (WAV only) for WAV/FLAC; ignored for OGG (Vorbis)
            and MP3.

    Raises:
        ValueError: unknown extension/subtype, bad shape, NaN/Inf, or peaks above 1 for a format
            that would clip them (every one but FLOAT WAV and Vorbis). Nothing is clipped here:
            callers apply headroom first.
    """
    name = os.fspath(path)
    fmt, subtype = _format_of(name, subtype, sample_rate)

    shape = np.shape(audio)
    if len(shape) == 2 and shape[0] <= _MAX_CHANNELS and (refusal := format_refusal(name, int(sample_rate), shape[0])):
        raise ValueError(f"cannot write {name!r}: {refusal}")
    if np.asarray(audio).dtype == np.int16:
        if subtype != "PCM_16" or fmt not in ("WAV", "FLAC"):
            raise ValueError(f"cannot write {name!r}: int16 samples are written as PCM_16 WAV/FLAC only, not {fmt} {subtype}")
        channels = _as_channels(name, audio, np.int16)  # (C, T): stored as they are, nothing to check
    else:
        channels = _checked_float_channels(name, audio, fmt, subtype)
    if storage.is_local(name):
        with storage.atomic_local_path(name) as tmp:
            _encode(tmp, channels, int(sample_rate), fmt, subtype)
    else:
        buf = io.BytesIO()
        _encode(buf, channels, int(sample_rate), fmt, subtype)
        storage.write_bytes_atomic(name, buf.getvalue())


def _format_of(name: str, subtype: str, sample_rate: int) -> tuple[str, str]:
    """``(format, subtype)`` for the file ``name`` (from its extension), checked."""
    ext = os.path.splitext(name)[1].lower()
    if ext not in _WRITE_FORMATS:
        raise ValueError(f"cannot write {name!r}: extension must be one of {sorted(_WRITE_FORMATS)}")
    fmt = _WRITE_FORMATS[ext]
    if fmt in _LOSSY_SUBTYPES:
        subtype = _LOSSY_SUBTYPES[fmt]
    elif subtype not in _WRITE_SUBTYPES[fmt]:
        raise ValueError(
            f"cannot write {name!r}: subtype for {fmt} must be one of {_WRITE_SUBTYPES[fmt]}, got {subtype!r}"
        )
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return fmt, subtype


class BlockWriter:
    """Write a local audio file a ``(C, n)`` float block at a time, atomically (the file appears
    only when the ``with`` body succeeds), with :func:`write_audio`'s format rules and checks on
    every block (NaN/Inf, peaks above 1 for formats that would clip them).

        with BlockWriter("out.flac", 44100, 2, subtype="PCM_24") as w:
            for block in blocks:
                w.write(block)
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, subtype: str = "PCM_16"):
        self.name = os.fspath(path)
        self.fmt, self.subtype = _format_of(self.name, subtype, sample_rate)
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self._stack = contextlib.ExitStack()
        self._file: sf.SoundFile | None = None

    def __enter__(self) -> "BlockWriter":
        tmp = self._stack.enter_context(storage.atomic_local_path(self.name))
        self._file = self._stack.enter_context(sf.SoundFile(
            os.fsencode(tmp), "w", self.sample_rate, self.channels, subtype=self.subtype, format=self.fmt))
        return self

    def write(self, block: np.ndarray) -> None:
        x = _checked_float_channels(self.name, block, self.fmt, self.subtype)
        for i in range(0, x.shape[1], _WRITE_BLOCK):
            self._file.write(np.ascontiguousarray(x[:, i : i + _WRITE_BLOCK].T))

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)


def _checked_float_channels(name: str, audio: np.ndarray, fmt: str, subtype: str) -> np.ndarray:
    """``(C, T)`` float samples checked for NaN/Inf and, for formats that clip, peaks above 1,
    without a temporary the size of the audio (min and max propagate NaN)."""
    x = _as_channels(name, audio, np.float32)
    hi, lo = float(np.max(x)), float(np.min(x))
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise ValueError(f"cannot write {name!r}: audio contains NaN/Inf")
    peak = max(hi, -lo)
    if peak > 1.0 and (fmt, subtype) not in _FLOAT_STORAGE:
        raise ValueError(
            f"cannot write {name!r}: peak {peak:.4f} ({20 * np.log10(peak):+.2f} dBFS) exceeds full "
            f"scale and {fmt} {subtype} would clip it; apply headroom first or write FLOAT WAV"
        )
    return x


def _as_channels(name: str, audio: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """``(C, T)`` (a view where it can be: the encoder transposes a block at a time)."""
    x = np.asarray(audio)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"cannot write {name!r}: expected (C, T) or (T,) audio, got shape {x.shape}")
    if x.shape[0] > _MAX_CHANNELS:
        raise ValueError(
            f"cannot write {name!r}: expected (C, T) audio, got shape {x.shape} "
            f"({x.shape[0]} channels; did you pass (T, C)?)"
        )
    if x.shape[1] == 0:
        raise ValueError(f"cannot write {name!r}: audio has no samples, shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and x.dtype != dtype:
        raise ValueError(f"cannot write {name!r}: expected float samples, got {x.dtype}")
    return x if x.dtype == dtype else x.astype(dtype)


def _encode(target, channels: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> None:
    """Encode ``(C, T)`` to a path or file object in blocks, each transposed to frames as it is
    written (no copy of the whole file; one huge Vorbis write crashed libsndfile)."""
    if isinstance(target, str):
        target = os.fsencode(target)  # a name that is not UTF-8 (surrogate-escaped) written as it is
    with sf.SoundFile(target, "w", sample_rate, channels.shape[0], subtype=subtype, format=fmt) as f:
        for i in range(0, channels.shape[1], _WRITE_BLOCK):
            f.write(np.ascontiguousarray(channels[:, i : i + _WRITE_BLOCK].T))
