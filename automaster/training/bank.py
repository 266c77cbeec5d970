"""Clean audio held in memory: every track decoded once, mono, 44.1 kHz, int16.

A bank is what fresh damage crops from. int16 halves float32's memory (an hour of mono audio is
318 MB), so a whole corpus fits in one process and no worker pool is needed to decode on the fly.
Sources: a corpus folder or FMA layout (:mod:`automaster.corpus`), or the clean originals inside a
demaster dataset (one per track). A bank can be cached as one ``.npz`` file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from automaster.dataset import from_pcm16, to_pcm16

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
SILENCE_DB = -60.0  # a track quieter than this (RMS, dBFS) is left out
PEAK_CEILING = 0.999  # decoded lossy audio can exceed full scale: scaled down, never clipped


class BankError(ValueError):
    """No usable audio for a bank (missing folder, empty split, every file unreadable)."""


@dataclass
class ClipBank:
    """Mono int16 clips at :data:`SAMPLE_RATE`, one per track.

    Attributes:
        clips: ``(T_i,)`` int16 arrays.
        track_ids: one per clip.
    """

    clips: list[np.ndarray]
    track_ids: list[str]

    def __post_init__(self) -> None:
        if len(self.clips) != len(self.track_ids):
            raise ValueError(f"{len(self.clips)} clips for {len(self.track_ids)} track ids")
        self.lengths = np.array([len(c) for c in self.clips], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def seconds(self) -> float:
        """Total audio held, in seconds."""
        return float(self.lengths.sum()) / SAMPLE_RATE

    def crop(self, clip: int, start: int, n_samples: int) -> np.ndarray:
        """``n_samples`` float32 samples of clip ``clip`` from ``start`` (zero-padded past its end)."""
        x = from_pcm16(self.clips[clip][start : start + n_samples])
        if len(x) < n_samples:
            x = np.pad(x, (0, n_samples - len(x)))
        return x

    def subset(self, keep: list[int]) -> "ClipBank":
        """The clips at indices ``keep``, in that order."""
        return ClipBank([self.clips[i] for i in keep], [self.track_ids[i] for i in keep])

    def save(self, path: str | Path) -> None:
        """Write the bank to one ``.npz`` (clips concatenated, with their lengths and ids)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, audio=np.concatenate(self.clips) if self.clips else np.zeros(0, np.int16),
                 lengths=self.lengths, track_ids=np.array(self.track_ids))  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "ClipBank":
        """Read a bank written by :meth:`save`."""
        with np.load(path) as data:
            audio, lengths, ids = data["audio"], data["lengths"], data["track_ids"]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return cls([audio[a:b] for a, b in zip(bounds[:-1], bounds[1:])], [str(t) for t in ids])


def _pcm(mono: np.ndarray) -> np.ndarray | None:
    """float mono -> int16, peak scaled under :data:`PEAK_CEILING`; ``None`` when silent."""
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64)))) if len(mono) else 0.0
    if rms <= 0 or 20.0 * math.log10(rms) < SILENCE_DB:
        return None
    peak = float(np.abs(mono).max())
    return to_pcm16(mono * min(1.0, PEAK_CEILING / peak))


def bank_from_corpus(
    roots: list[str], splits: tuple[str, ...], max_track_seconds: float = 0.0, limit: int = 0
) -> ClipBank:
    """Decode the tracks of ``splits`` of every corpus root (FMA layout or a folder of audio).

    Args:
        roots: corpus roots; their track ids must not collide.
        splits: the corpus splits to keep (``("training",)``).
        max_track_seconds: keep at most this much of each track, centred (0: all of it).
        limit: at most this many tracks per root (0: all).
    """
    from automaster.audio import AudioError, audio_info, read_audio
    from automaster.corpus import CorpusError, list_corpus

    clips, ids, failed = [], [], 0
    for root in roots:
        try:
            tracks = [t for t in list_corpus(root) if t.split in splits]
        except CorpusError as exc:
            raise BankError(str(exc)) from None
        for track in tracks[: limit or None]:
            try:
                duration = audio_info(track.path).duration_s
                take = duration if max_track_seconds <= 0 else min(duration, max_track_seconds)
                offset = max(0.0, (duration - take) / 2.0)
                audio, _ = read_audio(track.path, sample_rate=SAMPLE_RATE, mono=True, offset_s=offset, duration_s=take)
            except (AudioError, OSError, ValueError) as exc:
                failed += 1
                log.warning("skipping %s: %s", track.path, exc)
                continue
            pcm = _pcm(audio[0])
            if pcm is None or len(pcm) < SAMPLE_RATE:  # every dropped file is named, with why
                why = f"silent (below {SILENCE_DB:g} dBFS RMS)" if pcm is None else f"shorter than 1 s ({len(pcm) / SAMPLE_RATE:.2f} s)"
                log.warning("skipping %s: %s", track.path, why)
                failed += 1
                continue
            clips.append(pcm)
            ids.append(track.track_id)
    if not clips:
        raise BankError(f"no usable audio in the {'/'.join(splits)} split of {', '.join(roots)} ({failed} unreadable, silent or too short)")
    bank = ClipBank(clips, ids)
    log.info("bank: %d tracks, %.0f s from %s (%d unreadable, silent or too short)", len(bank), bank.seconds,
             ", ".join(roots), failed)
    return bank


def bank_from_rows(rows: list[dict]) -> ClipBank:
    """The clean originals of decoded demaster rows (:func:`automaster.dataset.decode_row`), one per track."""
    seen: dict[str, np.ndarray] = {}
    for row in rows:
        track = str(row["track_id"])
        if track not in seen and row.get("wave_original") is not None:
            pcm = _pcm(np.asarray(row["wave_original"], dtype=np.float32))
            if pcm is not None:
                seen[track] = pcm
    if not seen:
        raise BankError("the dataset's rows hold no clean waveforms (made with waveforms off?)")
    ids = sorted(seen)
    return ClipBank([seen[t] for t in ids], ids)
