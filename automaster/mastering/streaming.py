"""Long files in bounded memory: the mastering of :class:`~automaster.mastering.masterer.Masterer`
a block at a time, whatever the file's length.

    info, widths = master_stream(masterer, "mix.flac", "mastered.flac", subtype="PCM_24")

It covers the path the shipped default takes: the echo stage, the level model, the amount, the
loudness stage, the soft clipper, the true-peak limiter and the ceiling, with the same stages,
records and report as :func:`automaster.mastering.finishing.finish`. (A reference match, an
inversion that changes the audio and pictures read the whole track: those files are mastered
whole, :func:`streams`.)

The file is decoded once into a raw float32 file in a scratch folder beside the output; every
later pass reads it back ``CORE_S`` at a time with ``LEFT_S`` before and ``RIGHT_S`` after, so
that the K-weighting, the 4x true-peak interpolator, the soft clipper's resampler and the
limiter (whose release is over well within ``LEFT_S``) see each block as they would in the whole
file; only the echo inverse, a recursion, carries its state from block to block. Memory holds a
few blocks; the disk holds the raw input, the echo stage's output when it ran (two while it undoes
a further echo, a pass over the file each), and at most three
renders of the limiter (21 MB per minute of stereo each), removed at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from automaster import storage
from automaster.audio.common import MAX_NONFINITE_FRACTION, AudioError, logger, note_repair
from automaster.audio.opening import _check_header, _decoder_notes, _Opened
from automaster.audio.read import _blocks
from automaster.audio.write import BlockWriter
from automaster.dsp import loudness as meter
from automaster.dsp.limiter import GainReduction, _limit, loudness_and_limit
from automaster.effects.echo import EchoInverseStream, MultiEchoInverseStream
from automaster.mastering.finishing import (
    GAIN_REDUCTION_HOP_S, MAX_DRIVE_DB, SATURATION_STEPS, FinishSettings, _applied, _loudness_and_limit,
    _loudness_stage, _shifted, gain_reduction_db, levels_info, limiter_aim, loudness_source, limiter_record, soft_clip,
)
from automaster.dsp.limiter import MASTER_LOUDNESS_AIM_LU
from automaster.mastering.levels import HEADROOM_PEAK_DBFS, abs_max, finite_or_none
from automaster.mastering.policy import find_echo, undo_echoes

STREAM_ABOVE_S = 300.0  # files longer than this are mastered a block at a time (when their path allows)
CORE_S = 20.0  # seconds of output per block
LEFT_S = 2.0  # read before each block: the limiter's release (80 ms) and the K-weighting settle in it
RIGHT_S = 0.1  # read after each block: the limiter's look-ahead and the interpolators' taps

Source = Callable[[int, int], np.ndarray]  # (start, stop) -> (C, stop - start) float32


def streams(masterer, duration_s: float, reference: Any, pictures: bool, above_s: float = STREAM_ABOVE_S) -> bool:
    """Whether a file of ``duration_s`` is mastered a block at a time: longer than ``above_s``,
    and nothing asked of it reads the whole track (a reference, pictures, an inversion that
    changes the audio)."""
    return (duration_s > above_s and reference is None and masterer.reference is None and not pictures
            and not masterer.restores())


class RawAudio:
    """``(C, T)`` float32 audio in a raw file of interleaved frames: appended in order, read back
    by range (``read`` or ``audio[:, a:b]``); nothing is mapped, so nothing counts as memory."""

    def __init__(self, path: str, channels: int):
        self.path, self.channels, self.frames = path, channels, 0
        self._file = open(path, "w+b")

    @property
    def shape(self) -> tuple[int, int]:
        return self.channels, self.frames

    def append_frames(self, frames: np.ndarray) -> None:
        """Append ``(n, C)`` frames."""
        self._file.write(np.ascontiguousarray(frames, dtype=np.float32).data)
        self.frames += frames.shape[0]

    def append(self, block: np.ndarray) -> None:
        """Append a ``(C, n)`` block."""
        self.append_frames(block.T)

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self.frames)
        self._file.flush()
        size = 4 * self.channels
        data = os.pread(self._file.fileno(), (stop - start) * size, start * size)
        return np.frombuffer(data, np.float32).reshape(-1, self.channels).T.copy()

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        start, stop, _ = cols.indices(self.frames)
        return self.read(start, stop)[rows]

    def close(self, remove: bool = True) -> None:
        self._file.close()
        if remove:
            with contextlib.suppress(FileNotFoundError):  # the scratch folder may be gone already
                os.unlink(self.path)


class _Mono:
    """The downmix of a :class:`RawAudio`, read by slice (the echo detection's segments)."""

    def __init__(self, raw: RawAudio):
        self.raw, self.size = raw, raw.frames

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.size)
        return self.raw.read(start, stop).mean(axis=0, dtype=np.float32)


def plan(n: int, sr: int) -> Iterator[tuple[int, int, int, int]]:
    """``(b0, b1, e0, e1)``: each block ``[b0, b1)`` and the range ``[e0, e1)`` read for it. Blocks
    are whole gain-reduction windows long, so the report's curve has the whole file's windows."""
    hop = max(1, int(round(GAIN_REDUCTION_HOP_S * sr)))
    core = max(hop, int(CORE_S * sr) // hop * hop)
    left, right = int(LEFT_S * sr), int(RIGHT_S * sr)
    for b0 in range(0, n, core):
        b1 = min(n, b0 + core)
        yield b0, b1, max(0, b0 - left), min(n, b1 + right)


class Meter:
    """What :func:`automaster.mastering.finishing._stage` measures of a whole signal, fed its
    blocks in order (:func:`plan`): BS.1770 gated loudness (K-weighted sums per gating block),
    4x true peak, sample peak, and the channel sums and mid/side energies."""

    def __init__(self, n: int, sr: int, channels: int):
        self.n, self.sr, self.channels = n, sr, channels
        self.short = n < meter.BLOCK_S * sr
        lower, upper = (np.array([0]), np.array([n])) if self.short else meter._block_bounds(n, sr)
        cores = [b0 for b0, *_ in plan(n, sr)]
        self.points = np.unique(np.concatenate([[0, n], lower, upper, cores])).astype(np.int64)
        self._lo, self._hi = np.searchsorted(self.points, lower), np.searchsorted(self.points, upper)
        self.sums = np.zeros((channels, self.points.size - 1))
        self.sos = meter._k_weighting_sos(sr)
        self.true_peak = self.peak = 0.0
        self.channel_sums = np.zeros(channels)
        self.e_mid = self.e_side = 0.0

    def feed(self, ext: np.ndarray, b0: int, b1: int, e0: int) -> None:
        """Measure the block ``[b0, b1)`` of ``ext`` ``(C, m)``, which starts at sample ``e0``."""
        i0, i1 = np.searchsorted(self.points, [b0, b1])
        local = self.points[i0 : i1 + 1] - e0
        bounds = local if local[0] == 0 else np.concatenate([[0], local])
        sums = meter._k_weighted_sums(ext, self.sos, bounds.astype(np.int64))
        self.sums[:, i0:i1] += sums[:, sums.shape[1] - (i1 - i0) :]
        seg = meter._peak_segments(ext, self.sr)
        self.true_peak = max(self.true_peak, float(seg[b0 - e0 : b1 - e0].max()))
        core = ext[:, b0 - e0 : b1 - e0].astype(np.float64)
        self.peak = max(self.peak, abs_max(core))
        self.channel_sums += core.sum(axis=1)
        self.add_width(core)

    def add_width(self, block: np.ndarray) -> None:
        """Add a ``(C, n)`` block's mid and side energies (stereo only)."""
        if self.channels == 2:
            block = block.astype(np.float64, copy=False)
            mid, side = block.mean(axis=0), 0.5 * (block[0] - block[1])
            self.e_mid += float(np.sum(mid * mid))
            self.e_side += float(np.sum(side * side))

    def block_ms(self) -> np.ndarray:
        cum = np.concatenate([np.zeros((self.channels, 1)), np.cumsum(self.sums, axis=1)], axis=1)
        length = self.n if self.short else meter.BLOCK_S * self.sr
        return (cum[:, self._hi] - cum[:, self._lo]) / length

    def lufs(self) -> float:
        if self.peak == 0.0:
            return float("-inf")
        lufs = meter._gate(self.block_ms(), meter._channel_weights(self.channels))
        return lufs if math.isfinite(lufs) else float("-inf")

    def levels(self) -> dict[str, float | None]:
        """A stage's levels: ``lufs``, ``true_peak_dbtp``, ``peak_dbfs``."""
        db = lambda v: 20.0 * math.log10(v) if v > 0 else None  # noqa: E731
        return {"lufs": finite_or_none(self.lufs()), "true_peak_dbtp": db(self.true_peak), "peak_dbfs": db(self.peak)}

    def width_db(self) -> float:
        """:func:`automaster.dsp.tone.stereo_width_db` of what was fed."""
        if self.channels != 2 or self.e_side == 0.0:
            return float("-inf")
        return float("inf") if self.e_mid == 0.0 else 10.0 * math.log10(self.e_side / self.e_mid)

    def dc_dbfs(self) -> float | None:
        dc = float(np.max(np.abs(self.channel_sums))) / max(self.n, 1)
        return 20.0 * math.log10(dc) if dc > 0 else None


def measure(source: Source, n: int, sr: int, channels: int) -> Meter:
    m = Meter(n, sr, channels)
    for b0, b1, e0, e1 in plan(n, sr):
        m.feed(source(e0, e1), b0, b1, e0)
    return m


class Rendered:
    """A render of the loudness stages: the source times ``gain`` (no file: nothing was limited)
    or a raw file; ``gain_reduction_db``: the limiter's curve (:func:`gain_reduction_db`)."""

    def __init__(self, gain: float = 1.0, raw: RawAudio | None = None, gr: np.ndarray | None = None,
                 measured: Meter | None = None):
        self.gain, self.raw, self.measured = gain, raw, measured
        self.gain_reduction_db = np.zeros(0, np.float32) if gr is None else gr

    def __del__(self) -> None:
        if self.raw is not None:
            self.raw.close()


class StreamStage:
    """:class:`automaster.dsp.limiter._Stage` for a source read a block at a time: its measured
    loudness per gating block and true peak; ``render`` limits into a raw file only when the
    gain takes it over the ceiling."""

    def __init__(self, source: Source, measured: Meter, ceiling_dbtp: float | None, scratch: str):
        self.source, self.measured, self.ceiling_dbtp, self.scratch = source, measured, ceiling_dbtp, scratch
        self.n, self.sr, self.channels = measured.n, measured.sr, measured.channels
        self.silent = measured.peak == 0.0
        self.weights = meter._channel_weights(self.channels)
        self.block_ms = None if self.silent else measured.block_ms()
        self.peak = measured.true_peak
        self.renders = 0

    def loudness_at(self, gain: float) -> float:
        lufs = float("-inf") if self.silent else meter._gate(self.block_ms * gain**2, self.weights)
        return lufs if math.isfinite(lufs) else float("-inf")

    def new_raw(self) -> RawAudio:
        self.renders += 1
        return RawAudio(os.path.join(self.scratch, f"render{self.renders}.f32"), self.channels)

    def render(self, gain_db: float) -> tuple[Rendered, float, float, GainReduction]:
        g = 10.0 ** (gain_db / 20.0)
        if self.ceiling_dbtp is None or self.peak * g <= 10.0 ** (self.ceiling_dbtp / 20.0):
            return Rendered(gain=g), self.loudness_at(g), self.peak * g, GainReduction()
        gain = np.float32(g)
        return self.limited(lambda e0, e1: self.source(e0, e1) * gain if gain_db != 0.0 else self.source(e0, e1))

    def limited(self, source: Source, clipped: Meter | None = None) -> tuple[Rendered, float, float, GainReduction]:
        """``source`` through the true-peak limiter into a raw file, measured (and its input
        measured into ``clipped`` when given)."""
        raw, out, gr = self.new_raw(), Meter(self.n, self.sr, self.channels), []
        for b0, b1, e0, e1 in plan(self.n, self.sr):
            y = np.ascontiguousarray(source(e0, e1), dtype=np.float32)
            if clipped is not None:
                clipped.feed(y, b0, b1, e0)
            before = y[:, b0 - e0 : b1 - e0].copy()
            _limit(y, meter._peak_segments(y, self.sr), self.sr, self.ceiling_dbtp)
            raw.append(y[:, b0 - e0 : b1 - e0])
            out.feed(y, b0, b1, e0)
            gr.append(gain_reduction_db(before, y[:, b0 - e0 : b1 - e0], self.sr))
        curve = np.concatenate(gr) if gr else np.zeros(0, np.float32)
        cut = max(0.0, float(-curve.min())) if curve.size else 0.0
        reduction = GainReduction(max_db=cut, mean_db=max(0.0, float(-curve.mean())) if curve.size else 0.0)
        return Rendered(raw=raw, gr=curve, measured=out), out.lufs(), out.true_peak, reduction

    def saturate(self, target: float, ceiling: float) -> tuple[Rendered, Meter, float]:
        """:func:`automaster.mastering.finishing._saturate_to` a block at a time: the soft
        clipper's drive bisected until the limited result is within ``MASTER_LOUDNESS_AIM_LU``
        of ``target``; returns ``(limited, the clipper's output measured, drive_db)``."""
        base = target - self.loudness_at(1.0)
        lo, hi = base - MAX_DRIVE_DB, base + MAX_DRIVE_DB
        best: tuple[float, Rendered, Meter, float] | None = None
        for _ in range(SATURATION_STEPS):
            drive = hi if best is None else 0.5 * (lo + hi)
            clipped = Meter(self.n, self.sr, self.channels)
            out, lufs, _, _ = self.limited(lambda e0, e1, d=drive: soft_clip(self.source(e0, e1), d, ceiling), clipped)
            error = target - lufs
            if best is None or abs(error) < best[0]:
                best = (abs(error), out, clipped, drive)
            out = None  # a worse pass's file goes now
            if abs(error) <= MASTER_LOUDNESS_AIM_LU or (drive == hi and error > 0):
                break
            lo, hi = (drive, hi) if error > 0 else (lo, drive)
        _, out, clipped, drive = best
        return out, clipped, drive


def decode_raw(path: str, raw_path: str) -> tuple[RawAudio, int]:
    """Decode ``path`` into a :class:`RawAudio` at its own rate, sanitised like
    :func:`automaster.audio.read_audio` (NaN/Inf zeroed below a share, else refused).

    Raises:
        AudioError: unreadable, no frames, or too many NaN/Inf samples.
    """
    name = os.fspath(path)
    with _Opened(name) as f:
        sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        _check_header(name, sr, channels, frames)
        raw, bad = RawAudio(raw_path, channels), 0
        with _decoder_notes(name):
            for block in _blocks(f, name, 0, None):
                finite = np.isfinite(block)
                if not finite.all():
                    bad += block.size - int(np.count_nonzero(finite))
                    block = np.where(finite, block, np.float32(0.0))
                raw.append_frames(block)
    if raw.frames == 0:
        raise AudioError(name, "no audio frames (decoder returned nothing)")
    if bad:
        fraction = bad / (raw.frames * channels)
        if fraction > MAX_NONFINITE_FRACTION:
            raise AudioError(name, f"{100 * fraction:.3g}% of samples are NaN/Inf")
        logger.warning("%s: replaced %d NaN/Inf samples (%.3g%%) with 0", storage.display(name), bad, 100 * fraction)
        note_repair("nonfinite_zeroed", bad)
    return raw, sr


def _echo_pass(raw: RawAudio, sr: int, inverse: Callable[[np.ndarray], np.ndarray], path: str) -> RawAudio:
    """An echo inverse (:class:`EchoInverseStream`, :class:`MultiEchoInverseStream`) over the whole
    file, in order (its recursion carried), into a raw file at ``path``."""
    out = RawAudio(path, raw.channels)
    for b0, b1, _, _ in plan(raw.frames, sr):
        out.append(inverse(raw.read(b0, b1)))
    return out


def echo_stage(raw: RawAudio, sr: int, min_echo_gain: float, scratch: str) -> tuple[RawAudio, dict[str, Any]]:
    """:func:`automaster.mastering.policy.remove_echo` on a raw file: each echo found in the
    downmix read by segment, each inverse a pass over the file into a new raw file (the previous
    pass's removed; ``raw`` itself returned when nothing was undone)."""
    passes: list[RawAudio] = []

    def run(source: RawAudio, inverse) -> RawAudio:
        passes.append(_echo_pass(source, sr, inverse, os.path.join(scratch, f"restored-{len(passes) + 1}.f32")))
        if len(passes) > 1:
            passes[-2].close()  # read to its end by now
        return passes[-1]

    return undo_echoes(
        raw, lambda r: find_echo(_Mono(r), r.frames, sr, min_echo_gain, lazy=True),
        lambda r, tap, gain: run(r, EchoInverseStream(r.channels, sr, tap["echo_delay_s"], gain, feedback=tap["echo_feedback"])),
        lambda r, delays, gains: run(r, MultiEchoInverseStream(r.channels, sr, delays, gains)))


def _level_stages(stage: StreamStage, levels, level_gain_db: float | None, report: dict[str, Any],
                  max_limiting_db: float | None) -> Rendered:
    """:func:`automaster.mastering.finishing._level_stages` on a stream: the same decisions,
    notes and records; a static gain's levels are shifted, the limiter's measured as it renders."""
    stages, ceiling = report["stages"], levels.ceiling_dbtp
    target, note = _loudness_stage(stages[-1], levels, level_gain_db, max_limiting_db)
    report["target_lufs"] = target
    report["loudness_from"] = loudness_source(levels, level_gain_db, target)
    if target is None and ceiling is None:
        stages.append({"stage": "loudness", "applied": False, "note": note, **_shifted(stages[-1], 0.0)})
        stages.append({"stage": "limiter", "applied": False, "note": "no ceiling (preset none)", **_shifted(stages[-1], 0.0)})
        return Rendered()
    clipped, aim = None, limiter_aim(ceiling)
    if levels.use_level_gain and target is not None and max_limiting_db is not None:
        gain = target - stages[-1]["lufs"]
        out, _ = loudness_and_limit(stage, None, aim, gain_db=gain)
        drive = None
    else:
        def saturate():
            nonlocal clipped
            limited, clipped, drive_db = stage.saturate(target, aim)
            return limited, clipped, drive_db

        out, _, gain, drive, _ = _loudness_and_limit(stage, target, aim, saturate)
    report["loudness_gain_db"], report["soft_clip_drive_db"] = gain, drive
    if target is not None:
        note = f"{note}: {gain:+.2f} dB" + ("" if drive is None else " into the soft clipper (the limiter alone fell short)")
    if drive is None:
        stages.append({"stage": "loudness", "applied": target is not None, "note": note, **_shifted(stages[-1], gain)})
    else:
        stages.append({"stage": "loudness", "applied": True, "note": note, **_shifted(stages[-1], drive)})
        stages.append({"stage": "soft clip", "applied": True,
                       "note": f"tanh soft clipper at the {ceiling:.1f} dBTP ceiling, driven {drive:+.2f} dB", **clipped.levels()})
    measured = out.measured.levels() if out.measured is not None else _shifted(stages[-1], 0.0)
    stages.append({**limiter_record(report, out.gain_reduction_db, levels), **measured})
    return out


def master_stream(masterer, path: str, out_path: str, *, subtype: str = "PCM_24",
                  stages: dict[str, float] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Master the file ``path`` into ``out_path`` a block at a time (:func:`streams` says when).

    Returns ``(info, extra)``: ``info`` as :meth:`Masterer.master_audio`'s (levels, ``finish``,
    echo, level model); ``extra``: ``sample_rate``, ``channels``, ``frames``, ``width_in_db``,
    ``width_out_db``, ``dc_dbfs`` (the input's largest channel mean). ``stages`` accumulates
    seconds per stage.

    Raises:
        AudioError: the file cannot be decoded.
        ValueError: the output cannot be written (format, or a sample the format would clip).
    """
    settings = masterer.finish_settings
    stages = stages if stages is not None else {}
    scratch = tempfile.mkdtemp(prefix=f"{storage.TMP_PREFIX}stream.", dir=os.path.dirname(os.path.abspath(out_path)))
    try:
        t = time.perf_counter()
        raw, sr = decode_raw(path, os.path.join(scratch, "input.f32"))
        n, channels = raw.frames, raw.channels
        stages["decode"] = stages.get("decode", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        info, report, source = _restore(masterer, raw, sr, scratch, settings)
        stages["analysis"] = stages.get("analysis", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        levels = settings.levels()
        gain = None if info.get("restore_gain_db") is None else settings.amount * info.pop("restore_gain_db")
        info.pop("restore_gain_db", None)
        stage = StreamStage(source, report.pop("_measured"), limiter_aim(levels.ceiling_dbtp), scratch)
        out = _level_stages(stage, levels, gain, report, settings.max_limiting_db)
        peak = (out.measured.peak if out.measured is not None else stage.measured.peak * out.gain)
        trim = 1.0
        if peak > 1.0:  # the ceiling stage: nothing above full scale is written
            trim = 10.0 ** (HEADROOM_PEAK_DBFS / 20.0) / peak
            report["headroom_gain_db"] = 20.0 * math.log10(trim)
            report["stages"].append({"stage": "ceiling", "applied": True,
                                     "note": f"peaked above 0 dBFS: {report['headroom_gain_db']:+.2f} dB",
                                     **_shifted(report["stages"][-1], report["headroom_gain_db"])})
        else:
            report["stages"].append({"stage": "ceiling", "applied": False, "note": "no sample above 0 dBFS",
                                     **_shifted(report["stages"][-1], 0.0)})
        report["applied"] = _applied(report)
        stages["loudness"] = stages.get("loudness", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        width = Meter(n, sr, channels)
        with BlockWriter(out_path, sr, channels, subtype=subtype) as writer:
            for b0, b1, _, _ in plan(n, sr):
                y = out.raw.read(b0, b1) if out.raw is not None else source(b0, b1)
                if out.raw is None and out.gain != 1.0:
                    y = y * np.float32(out.gain)
                if trim != 1.0:
                    y = y * np.float32(trim)
                writer.write(y)
                width.add_width(y)
        stages["writes"] = stages.get("writes", 0.0) + time.perf_counter() - t
        info.update(levels_info(None, sr, report))
        info["finish"] = report
        extra = {"sample_rate": sr, "channels": channels, "frames": n, "width_in_db": report.pop("_width_in"),
                 "width_out_db": width.width_db(), "dc_dbfs": report.pop("_dc_dbfs")}
        return info, extra
    finally:
        out = stage = source = None
        shutil.rmtree(scratch, ignore_errors=True)


def _restore(masterer, raw: RawAudio, sr: int, scratch: str, settings: FinishSettings
             ) -> tuple[dict[str, Any], dict[str, Any], Source]:
    """The echo stage, the level model and the amount, a block at a time: ``(info, the finish
    report so far, the loudness stages' source)``; the report carries the source's measurement."""
    from automaster.mastering.chunks import plan_chunks

    cfg, n, channels = masterer.cfg, raw.frames, raw.channels
    restoring = cfg.amount > 0
    measured_in = measure(raw.read, n, sr, channels)
    report: dict[str, Any] = {
        "stages": [], "target_lufs": None, "ceiling_dbtp": settings.levels().ceiling_dbtp, "amount": settings.amount,
        "loudness_gain_db": 0.0, "soft_clip_drive_db": None, "gain_reduction_db": np.zeros(0, np.float32),
        "limiter_max_reduction_db": 0.0, "limiter_mean_reduction_db": 0.0, "headroom_gain_db": 0.0, "tone": None,
        "input": measured_in.levels(), "_width_in": measured_in.width_db(), "_dc_dbfs": measured_in.dc_dbfs(),
    }
    info: dict[str, Any] = {"echo_removed": False, "echo_delay_s": None, "echo_gain": None}
    restored, measured = raw, measured_in
    if cfg.echo_removal and restoring:
        restored, note = echo_stage(raw, sr, cfg.min_echo_gain, scratch)
        info.update(note)
        if restored is not raw:
            measured = measure(restored.read, n, sr, channels)
    measured_restored = measured
    chunks = plan_chunks(n, sr, cfg.chunk_s, cfg.context_s, masterer.audio_cfg.hop_length)
    info["chunks"] = len(chunks)
    level_db = None
    if restoring and masterer.level_model is not None:
        controls = masterer.analyse(restored, sr, chunks, cfg.inversion, mel=False)
        level_db = float(np.mean(controls["level_db"]))
    applied, note = masterer._restore_note(cfg.inversion, info, restoring)
    stages = report["stages"]
    stages.append({"stage": "restore", "applied": applied, "note": note,
                   **(measured.levels() if applied else report["input"])})
    stages.append({"stage": "reference", "applied": False, "note": "no reference" if restoring else "amount 0",
                   **_shifted(stages[-1], 0.0)})
    amount = settings.amount
    source: Source = restored.read
    amount_note = f"{amount:.2f} processed + {1 - amount:.2f} input"
    if amount == 0.0:
        source, measured = raw.read, measured_in
        stages.append({"stage": "amount", "applied": True, "note": amount_note, **report["input"]})
    elif amount < 1.0 and restored is not raw:
        a, b = np.float32(amount), np.float32(1.0 - amount)
        source = lambda e0, e1: (a * restored.read(e0, e1) + b * raw.read(e0, e1)).astype(np.float32)  # noqa: E731
        measured = measure(source, n, sr, channels)
        stages.append({"stage": "amount", "applied": True, "note": amount_note, **measured.levels()})
    else:
        stages.append({"stage": "amount", "applied": amount < 1.0, "note": amount_note, **_shifted(stages[-1], 0.0)})
    if level_db is not None:
        lufs = measured_restored.lufs()
        info["level_gain_db"] = level_db
        info["predicted_lufs"] = finite_or_none(lufs + level_db) if math.isfinite(lufs) else None
        info["restore_gain_db"] = level_db if math.isfinite(lufs) else None
    report["_measured"] = measured
    return info, report, source
