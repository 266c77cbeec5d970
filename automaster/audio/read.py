"""Decoding: the frames asked for, sanitised, optionally downmixed and resampled; excerpts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

from automaster import storage
from automaster.audio.common import MAX_NONFINITE_FRACTION, AudioError, AudioInfo, FileError, logger, note_repair
from automaster.audio.opening import _check_header, _decoder_notes, _Opened

# Frames decoded per block: memory follows the data actually present, not a (possibly corrupt)
# header's frame count.
_READ_BLOCK = 1 << 18
# Input context read on each side of an offset/duration window so that resampling has no edges.
_RESAMPLE_CONTEXT_S = 0.05


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels, frames, duration and format of ``path`` from its header.

    The frame count of compressed files is the decoder's estimate (exact for mp3s with a
    LAME/Xing header).

    Raises:
        AudioError: the file is missing, not audio, corrupt, or holds no frames.
    """
    with _Opened(path) as f:
        info = AudioInfo(
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            duration_s=f.frames / f.samplerate if f.samplerate else 0.0,
            format=str(f.format),
            subtype=str(f.subtype),
        )
    _check_header(path, info.sample_rate, info.channels, info.frames)
    return info


def read_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    mono: bool = False,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``(C, T)``; only the frames asked for are decoded.

    Args:
        path: local path or URI of a WAV/FLAC/OGG/MP3/AIFF file (any rate, depth, channels).
        sample_rate: resample to this rate (soxr, high quality); ``None`` keeps the file's rate.
        mono: average the channels into one, ``(1, T)``.
        offset_s: start this many seconds into the file (seeks; earlier audio is not decoded).
        duration_s: read at most this many seconds (less if the file ends first).

    Returns:
        ``(audio, rate)``: float32 ``(C, T)`` with values as decoded (not clipped; lossy decodes
        may exceed 1) and the rate of ``audio``.

    Raises:
        AudioError: unreadable file, no frames (at ``offset_s``), or more than
            :data:`MAX_NONFINITE_FRACTION` of the samples NaN/Inf.
        ValueError: bad arguments (negative offset, non-positive duration or rate).
    """
    if sample_rate is not None and (int(sample_rate) != sample_rate or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not np.isfinite(offset_s) or offset_s < 0:
        raise ValueError(f"offset_s must be >= 0, got {offset_s!r}")
    if duration_s is not None and not (np.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be > 0 or None, got {duration_s!r}")

    name = os.fspath(path)
    with _Opened(name) as f:
        native_sr, channels, header_frames = int(f.samplerate), int(f.channels), int(f.frames)
        _check_header(name, native_sr, channels, header_frames)
        start = int(round(offset_s * native_sr))
        count = None if duration_s is None else max(1, int(round(duration_s * native_sr)))
        if start > 0 and start >= header_frames:
            raise AudioError(
                name, f"offset {offset_s:.3f} s is past the end ({header_frames / native_sr:.3f} s)"
            )
        resampling = sample_rate is not None and int(sample_rate) != native_sr
        # Context on both sides of a window, so that the resampler sees real signal at its edges.
        pre = post = 0
        if resampling and (start > 0 or count is not None):
            ctx = int(round(_RESAMPLE_CONTEXT_S * native_sr))
            pre = min(ctx, start)
            post = ctx if count is not None else 0
        if not resampling and not mono:  # the mastering path: straight into (C, T), one copy of the file
            with _decoder_notes(name):
                audio = _decode_channels(f, name, start, count, header_frames - start)
            if audio.shape[1] == 0:
                where = f" at {offset_s:.3f} s" if start > 0 else ""
                raise AudioError(name, f"no audio frames{where} (decoder returned nothing)")
            return _sanitise_channels(name, audio), native_sr
        frames = _read_frames(f, name, start - pre, None if count is None else pre + count + post)

    got = frames.shape[0] - pre  # frames of the window proper (context trimmed below)
    if count is not None:
        got = min(got, count)
    if got <= 0:
        where = f" at {offset_s:.3f} s" if start > 0 else ""
        raise AudioError(name, f"no audio frames{where} (decoder returned nothing)")
    frames = _sanitise(name, frames)  # (T, C)
    if mono and frames.shape[1] > 1:
        # frames.mean(axis=1, dtype=float64), the same sums, at a tenth of the cost (a reduction
        # over a short strided axis is slow in numpy)
        mix = frames[:, 0].astype(np.float64)
        for c in range(1, frames.shape[1]):
            mix += frames[:, c]
        frames = (mix / frames.shape[1]).astype(np.float32)[:, None]

    rate = native_sr
    if resampling:
        rate = int(sample_rate)
        frames = _resample(name, frames, native_sr, rate, pre, got)
    else:
        frames = frames[pre : pre + got]
    return np.ascontiguousarray(frames.T, dtype=np.float32), rate


def _read_frames(f: sf.SoundFile, name: str, start: int, count: int | None) -> np.ndarray:
    """Decode ``count`` frames (all if None) from ``start`` in blocks; ``(T, C)`` float32."""
    with _decoder_notes(name):
        return _decode_frames(f, name, start, count)


def _blocks(f: sf.SoundFile, name: str, start: int, count: int | None) -> Iterator[np.ndarray]:
    """``count`` frames (all if None) from ``start``, a ``(n, C)`` float32 block at a time; a
    decoder's failure is an :class:`AudioError` naming the file."""
    remaining = count
    try:
        if start > 0:
            f.seek(start)
        while remaining is None or remaining > 0:
            n = _READ_BLOCK if remaining is None else min(_READ_BLOCK, remaining)
            block = f.read(n, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                return
            yield block
            if remaining is not None:
                remaining -= block.shape[0]
            if block.shape[0] < n:
                return
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(name, f"decoding failed, file corrupt or truncated ({str(exc).strip()})") from exc
    except MemoryError as exc:
        raise AudioError(name, "out of memory while decoding") from exc


def _decode_frames(f: sf.SoundFile, name: str, start: int, count: int | None) -> np.ndarray:
    blocks = list(_blocks(f, name, start, count))
    if not blocks:
        return np.zeros((0, f.channels), np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


def _decode_channels(f: sf.SoundFile, name: str, start: int, count: int | None, expected: int) -> np.ndarray:
    """Decode ``count`` frames (all if None) from ``start`` into a ``(C, T)`` float32 array sized
    from the header (grown if the decoder gives more, trimmed if less): the file is held once,
    plus one block, instead of as blocks, their concatenation and its transpose."""
    size = max(1, expected if count is None else min(count, max(expected, 1)))
    out = np.empty((f.channels, size), np.float32)
    filled = 0
    for block in _blocks(f, name, start, count):
        got = block.shape[0]
        if filled + got > out.shape[1]:  # the header undercounted (an MP3's is an estimate)
            grown = np.empty((f.channels, max(filled + got, out.shape[1] + out.shape[1] // 4)), np.float32)
            grown[:, :filled] = out[:, :filled]
            out = grown
        out[:, filled : filled + got] = block.T
        filled += got
    return out if filled == out.shape[1] else np.ascontiguousarray(out[:, :filled])  # a header that overcounted


def _sanitise_channels(name: str, audio: np.ndarray) -> np.ndarray:
    """:func:`_sanitise` for ``(C, T)``, with no temporary when every sample is finite."""
    if audio.size == 0 or (np.isfinite(audio.max()) and np.isfinite(audio.min())):
        return np.ascontiguousarray(audio)
    return np.ascontiguousarray(_sanitise(name, audio.T).T)


def _sanitise(name: str, frames: np.ndarray) -> np.ndarray:
    finite = np.isfinite(frames)
    if finite.all():
        return frames
    bad = frames.size - int(np.count_nonzero(finite))
    fraction = bad / frames.size
    if fraction > MAX_NONFINITE_FRACTION:
        raise AudioError(name, f"{100 * fraction:.3g}% of samples are NaN/Inf")
    logger.warning("%s: replaced %d NaN/Inf samples (%.3g%%) with 0", storage.display(name), bad, 100 * fraction)
    note_repair("nonfinite_zeroed", bad)
    return np.where(finite, frames, np.float32(0.0))


def _resample(name: str, frames: np.ndarray, sr_in: int, sr_out: int, pre: int, got: int) -> np.ndarray:
    """Resample ``(T, C)``; return exactly ``round(got * sr_out / sr_in)`` frames of the window."""
    try:
        out = soxr.resample(frames, sr_in, sr_out, quality="HQ")
    except (RuntimeError, ValueError) as exc:
        raise AudioError(name, f"resampling {sr_in} -> {sr_out} Hz failed ({exc})") from exc
    out = np.asarray(out, dtype=np.float32).reshape(-1, frames.shape[1])
    first = int(round(pre * sr_out / sr_in))
    n_out = max(1, int(round(got * sr_out / sr_in)))
    out = out[first : first + n_out]
    if out.shape[0] < n_out:  # soxr may return a sample or two short of the exact ratio
        out = np.pad(out, ((0, n_out - out.shape[0]), (0, 0)))
    return out


def read_excerpt(
    path: str | os.PathLike, seconds: float, *, sample_rate: int, mono: bool, min_seconds: float,
    offset_s: float | None = None,
) -> tuple[np.ndarray, float]:
    """An excerpt of at most ``seconds``: centred (intros are rarely representative) or starting at
    ``offset_s``. Returns ``(audio (C, T) float32 at sample_rate, offset_s)``.

    Raises:
        AudioError: the file cannot be read.
        FileError: shorter than ``min_seconds`` (by its header, or once decoded).
    """
    info = audio_info(path)
    if info.duration_s < min_seconds:
        raise FileError(f"{os.fspath(path)!r}: too short: {info.duration_s:.2f} s (minimum {min_seconds:g} s)")
    clip_s = min(seconds, info.duration_s)
    if offset_s is None:
        offset_s = max(0.0, (info.duration_s - clip_s) / 2.0)
    audio, _ = read_audio(path, sample_rate=sample_rate, mono=mono, offset_s=offset_s, duration_s=clip_s)
    if audio.shape[-1] < min_seconds * sample_rate * 0.99:
        raise FileError(f"{os.fspath(path)!r}: too short after decoding: {audio.shape[-1] / sample_rate:.2f} s")
    return np.ascontiguousarray(audio, dtype=np.float32), offset_s
