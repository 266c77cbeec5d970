"""Mastering one file or one waveform with a trained cascade (no Ray, no MLflow).

    masterer = Masterer("models/reference", inversion="chain", target_lufs=-14, true_peak_dbtp=-1)
    mastered, info = masterer.master_audio(audio, sample_rate)        # (C, T) float32 in and out
    status = masterer.master_file("in/a/song.mp3", "out/", "a/song.mp3")

The model reads the 44.1 kHz mel (the analysis settings of the checkpoint's ``config.audio``) of
the input; the audio it writes keeps the input's sample rate, channel count and exact length.

Inversions (how the model's output becomes audio):

* ``chain`` (phase-free, needs parameters: model mode ``params`` or ``cascade``): parameters
  forecast from the mono-downmix mel drive the inverse effects chain on the *original* waveform
  at its native rate, one parameter set for all channels (the stereo image stays). A forecast
  whose validation error (recorded in the checkpoint) is not clearly below the predict-the-mean
  baseline's is replaced by its effect's neutral value: a correction the model cannot make is
  not applied (:meth:`Masterer.chain_policy`).
* ``mask`` (needs the U-Net: ``restore`` or ``cascade``): the U-Net's mel gain (restored - input,
  dB, per mel band and frame, from the mono downmix) is interpolated over frequency to the STFT
  bins at the native rate (n_fft scaled with the rate, so bins and frames span the same Hz and
  seconds) and applied as a real gain to every channel's STFT, keeping the input's phase.
* ``griffinlim`` (the thesis path, needs the U-Net): per channel, the channel's mel plus the
  U-Net's mel gain (from the mono downmix, so both channels get the same gains) -> power ->
  Griffin-Lim at 44.1 kHz, all channels in one batch (optionally started from the input's
  phase) -> soxr back to the native rate.

Echo (every inversion, before the model): the strongest echo is measured from the input's own
cepstrum (:mod:`automaster.dsp.cepstrum`, native rate, mono downmix) and undone (the exact IIR
inverse, all channels) when its gain is at least ``min_echo_gain``, strong enough to tell from
the music's own repetitions; the model then sees the echo-free input. The measured thing is
reported (``echo_removed``, ``echo_delay_s``, ``echo_gain``).

Every inversion runs the model once per chunk, on the mono downmix, and only the network it
needs (the chain asks for parameters only, mask and Griffin-Lim for the restored mel only). On
the CPU the networks' 4-D weights and inputs are channels-last (about a third faster for the
U-Net's convolutions; same outputs to float rounding).

Long tracks run in bounded memory, in two passes over chunks of ``chunk_s`` seconds with
``context_s`` seconds of context on each side (the frame grid is the 44.1 kHz hop-512 grid):

1. *analysis*: per chunk, resample to 44.1 kHz, mel, model -> frame-rate controls (parameter
   trajectories, mel gains), stitched over the whole track with complementary raised-cosine
   ramps across each ``2 * context_s`` overlap (a few MB for a 10-minute track);
2. *synthesis*: per chunk of the native-rate waveform (again with context), render the audio from
   the stitched controls and crossfade the overlaps: raised-cosine (amplitude-complementary)
   ramps for the coherent chain/mask/phase-initialised outputs, equal-power (sin/cos) ramps for
   random-phase Griffin-Lim, whose chunks are mutually incoherent.

Per-clip parameters (compressor, reverb, echo, gain) are averaged over the whole track, so every
chunk is repaired with the same settings. The full input and output waveforms are held in memory
(the file is read and written whole); the intermediate tensors (STFTs, model activations) are
bounded by the chunk size.

Levels: optional loudness normalisation and true-peak ceiling (``automaster.dsp.loudness``),
after the inversion. Nothing clipped is ever written: when the result (after the loudness stage)
still peaks above 0 dBFS (no ceiling given, or a ceiling above 0 dBTP), a static gain brings its
sample peak to -0.1 dBFS and is recorded as ``headroom_gain_db``.

Outputs of :meth:`Masterer.master_file` under ``out_root`` (see :func:`output_rel_path`):
``audio/<rel>``, ``spectrograms/<rel>.png`` (input | output mel), ``parameters/<rel>.json`` (when
the model forecasts parameters) and ``debug/<rel>.png`` (restored mel | mel gain | parameter
trajectories, whichever the model has).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import posixpath
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import soxr
import torch
from torch import nn

from automaster import storage
from automaster.audio import AudioError, audio_info, read_audio, write_audio

log = logging.getLogger(__name__)

INVERSIONS = ("chain", "mask", "griffinlim")
MODEL_RATE = 44100  # the model's analysis rate (config.audio.sample_rate)
AUDIO_DIR, PNG_DIR, PARAMS_DIR, DEBUG_DIR = "audio", "spectrograms", "parameters", "debug"
STAGES = ("decode", "analysis", "render", "loudness", "writes")
# A result peaking above full scale is brought to this sample peak (dBFS) before it is written.
HEADROOM_PEAK_DBFS = -0.1
# Output format by input extension: what soundfile writes stays, MP3/AIFF become FLAC.
_OUTPUT_EXT = {".wav": ".wav", ".flac": ".flac", ".ogg": ".ogg", ".oga": ".ogg", ".mp3": ".flac", ".aiff": ".flac", ".aif": ".flac"}
_GAIN_IMAGE_DB = 12.0  # debug images map a mel gain of +-12 dB onto the colour range
# Chain path: a forecast is applied when its validation MAE is at most this share of the
# predict-the-mean baseline's; an echo estimate is undone from this gain up (clean fma_mini clips
# measure up to ~0.18 from their own cepstra, 90% below 0.13: automaster/dsp/cepstrum.py).
MAX_FORECAST_ERROR = 0.8
MIN_ECHO_GAIN = 0.15
ECHO_PARAMS = ("echo_delay_s", "echo_gain")


class MasteringError(ValueError):
    """A setup that cannot master anything (model mode lacks what the inversion needs, ...)."""


class FileError(Exception):
    """One file that cannot be mastered (recorded, never stops a batch)."""


def output_rel_path(rel_path: str) -> str:
    """The output name of an input's relative path: same name; ``.mp3``/``.aiff`` -> ``.flac``."""
    root, ext = posixpath.splitext(rel_path)
    out_ext = _OUTPUT_EXT.get(ext.lower())
    if out_ext is None:
        raise ValueError(f"not an audio file name: {rel_path!r}")
    return root + (ext if out_ext == ext.lower() else out_ext)


def plan_outputs(rel_paths: list[str]) -> dict[str, str]:
    """``{input rel: output rel}``; an MP3 whose FLAC name is taken (``a.mp3`` next to ``a.flac``)
    keeps its extension in the name (``a.mp3.flac``) so no output overwrites another."""
    plan: dict[str, str] = {}
    taken = {output_rel_path(r) for r in rel_paths if output_rel_path(r) == r}
    for rel in sorted(rel_paths):
        out = output_rel_path(rel)
        if out != rel and out in taken:
            out = rel + ".flac"
        taken.add(out)
        plan[rel] = out
    return plan


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _abs_max(audio: np.ndarray) -> float:
    """``max |audio|`` without a temporary the size of the audio (a 10-minute track: 200 MB)."""
    return max(float(audio.max()), -float(audio.min())) if audio.size else 0.0


def _all_finite(audio: np.ndarray) -> bool:
    """No NaN/Inf (max and min propagate them), without a full-size boolean temporary."""
    return not audio.size or (math.isfinite(float(audio.max())) and math.isfinite(float(audio.min())))


def _peak_dbfs(audio: np.ndarray) -> float | None:
    peak = _abs_max(audio)
    return 20.0 * math.log10(peak) if peak > 0 else None


# ------------------------------------------------------------------------------------ chunks


@dataclass(frozen=True)
class Chunk:
    """One chunk: global 44.1 kHz frames ``[f0, f1)`` and native samples ``[s0, s1)``.

    ``ramp_in``/``ramp_out``: the overlap spans ``(start, end)`` over which the chunk fades in
    (from its predecessor) and out (to its successor), in frames and in samples; ``None`` at the
    track's ends.
    """

    f0: int
    f1: int
    s0: int
    s1: int
    frame_in: tuple[int, int] | None
    frame_out: tuple[int, int] | None
    sample_in: tuple[int, int] | None
    sample_out: tuple[int, int] | None


def total_frames(n_samples: int, sample_rate: int, hop: int = 512) -> int:
    """Frames of the track on the 44.1 kHz hop grid (``center=True`` framing)."""
    return 1 + int(round(n_samples * MODEL_RATE / sample_rate)) // hop


def plan_chunks(n_samples: int, sample_rate: int, chunk_s: float, context_s: float, hop: int = 512) -> list[Chunk]:
    """Split a track into chunks of at most ``chunk_s`` (plus context); one chunk if it fits."""
    n_frames = total_frames(n_samples, sample_rate, hop)
    core = max(1, int(round(chunk_s * MODEL_RATE / hop)))
    ctx = max(1, int(round(context_s * MODEL_RATE / hop)))

    def sample(frame: int) -> int:
        return min(n_samples, int(round(frame * hop * sample_rate / MODEL_RATE)))

    if n_frames <= core + 2 * ctx:
        return [Chunk(0, n_frames, 0, n_samples, None, None, None, None)]
    n = math.ceil(n_frames / core)
    bounds = np.round(np.linspace(0, n_frames, n + 1)).astype(int)
    chunks = []
    for k in range(n):
        cs, ce = int(bounds[k]), int(bounds[k + 1])
        f0, f1 = max(0, cs - ctx), min(n_frames, ce + ctx)
        fin = (cs - ctx, cs + ctx) if k > 0 else None
        fout = (ce - ctx, ce + ctx) if k < n - 1 else None
        chunks.append(
            Chunk(
                f0, f1, sample(f0), n_samples if k == n - 1 else sample(f1), fin, fout,
                None if fin is None else (sample(fin[0]), sample(fin[1])),
                None if fout is None else (sample(fout[0]), sample(fout[1])),
            )
        )
    return chunks


def _window(start: int, length: int, ramp_in, ramp_out, equal_power: bool) -> np.ndarray:
    """Weights ``(length,)`` of a chunk starting at ``start``: 1 inside, ramps over the overlaps.

    Raised cosine (``sin^2``, the two sides sum to 1: coherent signals) or equal power (``sin``,
    squares sum to 1: incoherent signals).
    """
    w = np.ones(length, np.float32)
    idx = np.arange(start, start + length, dtype=np.float64)
    for ramp, rising in ((ramp_in, True), (ramp_out, False)):
        if ramp is None:
            continue
        a, b = ramp
        x = np.clip((idx - a) / max(b - a, 1), 0.0, 1.0)
        if not rising:
            x = 1.0 - x
        w *= (np.sin(0.5 * np.pi * x) if equal_power else np.sin(0.5 * np.pi * x) ** 2).astype(np.float32)
    return w


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad the last axis to ``n``."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def _fit_frames(x: torch.Tensor, n: int) -> torch.Tensor:
    """Crop or pad (replicating the last frame) the last axis to ``n`` frames."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], n - x.shape[-1])], dim=-1)


def resample(audio: np.ndarray, sr_in: int, sr_out: int, length: int | None = None) -> np.ndarray:
    """``(C, T)`` float32 resampled with soxr (HQ); cropped/padded to ``length`` if given."""
    if sr_in == sr_out:
        out = audio
    else:
        out = np.asarray(soxr.resample(np.ascontiguousarray(audio.T), sr_in, sr_out, quality="HQ"), np.float32)
        out = out.reshape(-1, audio.shape[0]).T
    if length is not None:
        out = _fit_length(out, length)
    return np.ascontiguousarray(out, dtype=np.float32)


def _frame_interp(n_global: int, times_frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear interpolation indices/weights into a global frame axis at fractional frames."""
    g = np.clip(times_frames, 0, n_global - 1)
    lo = np.floor(g).astype(np.int64)
    hi = np.minimum(lo + 1, n_global - 1)
    frac = torch.from_numpy((g - lo).astype(np.float32))
    return torch.from_numpy(lo), torch.from_numpy(hi), frac


def _interp_frames(values: torch.Tensor, times_frames: np.ndarray) -> torch.Tensor:
    """``values`` ``(..., F_global)`` at fractional global frames -> ``(..., len(times))``."""
    lo, hi, frac = _frame_interp(values.shape[-1], times_frames)
    frac = frac.to(values.device)
    return values[..., lo.to(values.device)] * (1 - frac) + values[..., hi.to(values.device)] * frac


@functools.lru_cache(maxsize=16)
def _mel_to_bins(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """``(n_bins, n_mels)`` linear interpolation from mel band centres (44.1 kHz bank) to the STFT
    bins of ``n_fft`` at ``sample_rate``; bins outside the centres hold the edge band's value."""
    import librosa

    centres = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=MODEL_RATE / 2.0)[1:-1]
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    eye = np.eye(n_mels)
    matrix = np.stack([np.interp(freqs, centres, eye[m]) for m in range(n_mels)], axis=1)
    return torch.from_numpy(matrix.astype(np.float32))


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """On the CPU, store the model's 4-D weights channels-last (feed it channels-last inputs too):
    oneDNN's convolutions run about a third faster on one thread, same outputs to float rounding.
    In place; eval mode only."""
    if model.training:
        raise ValueError("prepare_for_inference needs a model in eval mode")
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def _loudness():
    """The loudness module, or None while it is not available."""
    try:
        from automaster.dsp import loudness
    except ImportError:
        return None
    return loudness


# ----------------------------------------------------------------------------------- masterer


class Masterer:
    """Masters waveforms and files with one loaded model.

    Args:
        model_path: checkpoint directory or its ``model.pt``.
        inversion: ``"chain"``, ``"mask"`` or ``"griffinlim"`` (module docstring).
        iterations: Griffin-Lim iterations.
        init_phase: start Griffin-Lim from the input's phase (else random).
        target_lufs: integrated loudness to normalise to (None: keep the level).
        true_peak_dbtp: true-peak ceiling (None: none; nothing above 0 dBFS is written anyway).
        device: torch device of the model and the DSP.
        chunk_s, context_s: chunk length and context on each side, in seconds.
        momentum: Griffin-Lim momentum.
        max_gain_db: bound of the mask's gain per bin (a safety net for untrained models).
        seed: seeds Griffin-Lim's random phase (the same file gives the same output).
        echo_removal: measure the echo from the audio's cepstrum and undo it (every inversion,
            before the model) when its gain is at least ``min_echo_gain``; ``False``: no echo
            stage (the chain path then uses the forecaster's echo parameters under the
            ``max_forecast_error`` rule).
        min_echo_gain: see ``echo_removal``.
        max_forecast_error: chain path: apply a forecast parameter only when the checkpoint's
            validation MAE for it is at most this share of the predict-the-mean baseline's;
            others take their effect's neutral value. ``None``: apply every forecast.

    Raises:
        MasteringError: unknown inversion, or the checkpoint's model mode lacks what it needs.
        automaster.model.checkpoint.CheckpointError: the checkpoint cannot be loaded.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        inversion: str = "chain",
        *,
        iterations: int = 32,
        init_phase: bool = False,
        target_lufs: float | None = None,
        true_peak_dbtp: float | None = None,
        device: str | torch.device = "cpu",
        chunk_s: float = 30.0,
        context_s: float = 2.0,
        momentum: float = 0.99,
        max_gain_db: float = 24.0,
        seed: int = 0,
        echo_removal: bool = True,
        min_echo_gain: float = MIN_ECHO_GAIN,
        max_forecast_error: float | None = MAX_FORECAST_ERROR,
    ) -> None:
        from automaster.model.checkpoint import load_model

        if inversion not in INVERSIONS:
            raise MasteringError(f"inversion must be one of {', '.join(INVERSIONS)}, got {inversion!r}")
        if iterations < 1:
            raise MasteringError(f"iterations must be >= 1, got {iterations}")
        if not (chunk_s > 0 and context_s > 0 and chunk_s >= 4 * context_s):
            raise MasteringError(f"need chunk_s >= 4 * context_s > 0, got chunk_s={chunk_s}, context_s={context_s}")
        self.device = torch.device(device)
        self.model, self.config, self.meta = load_model(model_path, map_location=self.device)
        self.model.eval()
        prepare_for_inference(self.model, self.device)
        self.model_path = str(model_path)
        self.mode = self.model.mode
        self.inversion = inversion
        needs_params = inversion == "chain"
        if needs_params and self.model.forecaster is None:
            raise MasteringError(
                f"inversion 'chain' needs forecast parameters, but the checkpoint's model mode is {self.mode!r} "
                "(U-Net only); use --inversion mask or griffinlim, or a 'params'/'cascade' model"
            )
        if not needs_params and self.model.unet is None:
            raise MasteringError(
                f"inversion {inversion!r} needs the U-Net's restored mel, but the checkpoint's model mode is "
                f"{self.mode!r} (parameters only); use --inversion chain, or a 'restore'/'cascade' model"
            )
        audio_cfg = self.config.audio
        if audio_cfg.sample_rate != MODEL_RATE:
            raise MasteringError(f"the model's analysis rate must be {MODEL_RATE} Hz, got {audio_cfg.sample_rate}")
        self.audio_cfg = audio_cfg
        self.iterations = int(iterations)
        self.init_phase = bool(init_phase)
        self.target_lufs = target_lufs
        self.true_peak_dbtp = true_peak_dbtp
        self.chunk_s, self.context_s = float(chunk_s), float(context_s)
        self.momentum = float(momentum)
        self.max_gain_db = float(max_gain_db)
        self.seed = int(seed)
        self.echo_removal = bool(echo_removal)
        self.min_echo_gain = float(min_echo_gain)
        self.max_forecast_error = None if max_forecast_error is None else float(max_forecast_error)
        self.forecast_skill = forecast_errors(self.meta)
        self._policy = self._chain_policy()
        self.loudness = _loudness()
        if (target_lufs is not None or true_peak_dbtp is not None) and self.loudness is None:
            raise MasteringError("--target-lufs/--true-peak need automaster.dsp.loudness, which is not available")

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on (for summaries and MLflow)."""
        return {
            "model": self.model_path, "model_mode": self.mode, "inversion": self.inversion,
            "iterations": self.iterations, "init_phase": self.init_phase, "target_lufs": self.target_lufs,
            "true_peak_dbtp": self.true_peak_dbtp, "chunk_s": self.chunk_s, "context_s": self.context_s,
            "momentum": self.momentum, "max_gain_db": self.max_gain_db, "headroom_peak_dbfs": HEADROOM_PEAK_DBFS,
            "echo_removal": self.echo_removal, "min_echo_gain": self.min_echo_gain,
            "max_forecast_error": self.max_forecast_error,
        }

    def chain_policy(self) -> dict[str, str]:
        """Where each chain parameter comes from: ``"forecast"``, ``"neutral"`` (the forecast is
        not better than the mean on validation, and the parameter has a neutral value) or
        ``"estimate"`` (echo, measured from the audio)."""
        return dict(self._policy)

    def _chain_policy(self) -> dict[str, str]:
        from automaster.effects.params import PARAMS

        out = {}
        for p in PARAMS:
            error = self.forecast_skill.get(p.name)
            unreliable = self.max_forecast_error is not None and (error is None or error > self.max_forecast_error)
            if self.echo_removal and p.name in ECHO_PARAMS:
                out[p.name] = "estimate"
            elif unreliable and p.neutral is not None and self.forecast_skill:
                out[p.name] = "neutral"
            else:
                out[p.name] = "forecast"
        return out

    def _apply_chain_policy(self, params_norm: np.ndarray, echo: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The chain's parameters ``(P, F)`` (normalised) after :meth:`chain_policy`: ``(to
        render, to report)``. With the echo stage on, the rendered echo gain is 0 (that stage
        has undone the echo) and the reported echo is the stage's (its gain 0 when it left the
        audio alone)."""
        from automaster.effects.params import BY_NAME, PARAM_NAMES

        def norm(name: str, value: float) -> float:
            return float(BY_NAME[name].normalize(torch.tensor(float(value))))

        render = params_norm.copy()
        for name, how in self._policy.items():
            if how == "neutral" or (how == "estimate" and name == "echo_gain"):
                render[PARAM_NAMES.index(name)] = norm(name, BY_NAME[name].neutral)
        report = render.copy()
        if self.echo_removal and echo["echo_delay_s"] is not None:
            report[PARAM_NAMES.index("echo_delay_s")] = norm("echo_delay_s", echo["echo_delay_s"])
            report[PARAM_NAMES.index("echo_gain")] = norm("echo_gain", echo["echo_gain"] if echo["echo_removed"] else 0.0)
        return render, report

    def _remove_echo(self, audio: np.ndarray, sr: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The echo stage (module docstring): ``(audio without the echo, what was measured)``.
        Flat scalars: they go into batch summaries."""
        from automaster.dsp.cepstrum import estimate_echo
        from automaster.effects.echo import FRACTIONAL_HALF_TAPS, echo_inverse_time
        from automaster.effects.params import BY_NAME

        note: dict[str, Any] = {"echo_removed": False, "echo_delay_s": None, "echo_gain": None}
        if not self.echo_removal:
            return audio, note
        delay, gain = BY_NAME["echo_delay_s"], BY_NAME["echo_gain"]
        longest = min(1.04 * delay.high, 0.25 * audio.shape[-1] / sr)  # four delays must fit in the input
        try:
            echo = estimate_echo(audio, sr, min_delay_s=0.9 * delay.low, max_delay_s=longest)
        except ValueError:  # too short to tell an echo from the music: leave it alone
            return audio, note
        note.update(echo_delay_s=echo.delay_s, echo_gain=echo.gain)
        usable = echo.delay_s * sr >= 2 * FRACTIONAL_HALF_TAPS and delay.low <= echo.delay_s <= delay.high
        if echo.gain < self.min_echo_gain or not usable:
            return audio, note
        note["echo_removed"] = True
        return echo_inverse_time(audio, sr, echo.delay_s, min(echo.gain, gain.high)), note

    # -------------------------------------------------------------------------- analysis pass

    def _mel_db(self, y44: torch.Tensor) -> torch.Tensor:
        """``(C, T)`` at 44.1 kHz -> mel dB ``(C, M, 1 + T // hop)``."""
        from automaster.dsp.mel import mel_filterbank, melspectrogram
        from automaster.dsp.scale import power_to_db
        from automaster.dsp.stft import power_rows, stft_rows

        a = self.audio_cfg
        if y44.device.type != "cpu":
            return power_to_db(melspectrogram(y44, MODEL_RATE, a.n_fft, a.hop_length, a.n_mels))
        # The same mel from the frame-major CPU STFT: (C, F, K) power @ filterbank^T.
        power = torch.from_numpy(power_rows(stft_rows(y44.numpy(), a.n_fft, a.hop_length)))  # (C, F, K)
        fb = mel_filterbank(MODEL_RATE, a.n_fft, a.n_mels).to(power.dtype)  # (M, K)
        return power_to_db(torch.matmul(power, fb.T).transpose(1, 2))

    def _run_model(self, mel_db: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, M, F)`` dB -> ``"params"`` ``(B, P, F)`` normalised and/or ``"gain_db"`` ``(B, M, F)``
        (restored - input, dB, bounded by ``max_gain_db``)."""
        from automaster.model.batches import normalize_mel
        from automaster.model.validate import denormalize_mel

        x = mel_db[:, None]  # (B, 1, M, F)
        u = normalize_mel(x, self.audio_cfg)
        if self.device.type == "cpu":
            u = u.contiguous(memory_format=torch.channels_last)  # the layout the weights are in
        out = self.model(u, outputs=("params",) if self.inversion == "chain" else ("mel",))
        result = {}
        if "params" in out:
            result["params"] = out["params"]
        if "mel" in out:
            restored_db = denormalize_mel(out["mel"], self.audio_cfg, x)
            seen_db = denormalize_mel(u, self.audio_cfg, x)
            gain = (restored_db - seen_db).clamp(-self.max_gain_db, self.max_gain_db)
            result["gain_db"] = gain[:, 0]
        return result

    @torch.inference_mode()
    def _analyse(self, audio: np.ndarray, sr: int, chunks: list[Chunk], model: bool) -> dict[str, np.ndarray]:
        """Frame-rate controls of the whole track, stitched over chunks (see module docstring).

        Returns ``"mel_db"`` ``(M, F)`` of the mono downmix and, with ``model``: ``"params"``
        ``(P, F)`` (chain) or ``"gain_db"`` ``(M, F)`` (mask, griffinlim), all from the mono downmix:
        every channel gets the same controls.
        """
        n_frames = chunks[-1].f1
        sums: dict[str, np.ndarray] = {}
        weight = np.zeros(n_frames, np.float32)
        for c in chunks:
            nf = c.f1 - c.f0
            # Downmix first (linear, so the same as after resampling): one channel to resample.
            mono = np.ascontiguousarray(audio[:, c.s0 : c.s1].mean(axis=0, keepdims=True, dtype=np.float32))
            y44 = torch.from_numpy(resample(mono, sr, MODEL_RATE)).to(self.device)  # (1, n44)
            mel_db = _fit_frames(self._mel_db(y44), nf)  # (1, M, nf)
            outputs = {"mel_db": mel_db[0]}
            if model:
                for key, value in self._run_model(mel_db).items():
                    outputs[key] = value[0]
            w = _window(c.f0, nf, c.frame_in, c.frame_out, equal_power=False)
            for key, value in outputs.items():
                value = value.float().cpu().numpy()
                if key not in sums:
                    sums[key] = np.zeros(value.shape[:-1] + (n_frames,), np.float32)
                sums[key][..., c.f0 : c.f1] += value * w
            weight[c.f0 : c.f1] += w
        return {k: v / np.maximum(weight, 1e-8) for k, v in sums.items()}

    # ------------------------------------------------------------------------- synthesis pass

    def _render_chain(self, seg: np.ndarray, sr: int, c: Chunk, controls: dict[str, Any]) -> np.ndarray:
        from automaster.effects.chain import invert_chain
        from automaster.effects.params import PARAMS

        n = seg.shape[-1]
        hop = self.audio_cfg.hop_length
        # Chunk STFT frame k (hop 512 at the native rate) sits at global 44.1 kHz frame g.
        times = (c.s0 + np.arange(1 + n // hop) * hop) / sr * MODEL_RATE / hop
        params = {}
        for p in PARAMS:
            value = controls["physical"][p.name]
            params[p.name] = _interp_frames(value, times) if p.per_frame else value
        x = torch.from_numpy(seg).to(self.device)[None]
        return invert_chain(x, sr, params)[0].cpu().numpy()

    def _render_mask(self, seg: np.ndarray, sr: int, c: Chunk, controls: dict[str, Any]) -> np.ndarray:
        from automaster.dsp.stft import istft, istft_rows, n_frames, stft, stft_rows

        n = seg.shape[-1]
        n_fft = max(16, 2 * int(round(self.audio_cfg.n_fft / 2 * sr / MODEL_RATE)))
        hop = max(1, n_fft // 4)
        times = (c.s0 + np.arange(n_frames(n, hop)) * hop) / sr * MODEL_RATE / self.audio_cfg.hop_length
        gain_mel = _interp_frames(controls["gain_db"], times)  # (M, nfr)
        to_bins = _mel_to_bins(sr, n_fft, gain_mel.shape[0]).to(gain_mel.device)  # (bins, M)
        if self.device.type == "cpu":  # frame-major: (C, nfr, bins) spectra, one gain row per frame
            spec = stft_rows(seg, n_fft, hop)
            amplitude = torch.pow(10.0, (gain_mel.T @ to_bins.T) / 20.0)  # (nfr, bins)
            spec *= amplitude.numpy()
            return istft_rows(spec, n, n_fft, hop)
        spec = stft(torch.from_numpy(seg).to(self.device), n_fft, hop)  # (C, bins, nfr)
        spec = spec * torch.pow(10.0, (to_bins @ gain_mel) / 20.0)
        return istft(spec, n, n_fft, hop).cpu().numpy()

    def _render_griffinlim(self, seg: np.ndarray, sr: int, c: Chunk, controls: dict[str, Any]) -> np.ndarray:
        from automaster.dsp.griffinlim import mel_to_audio
        from automaster.dsp.scale import db_to_power
        from automaster.dsp.stft import stft

        n = seg.shape[-1]
        a = self.audio_cfg
        y44 = torch.from_numpy(resample(seg, sr, MODEL_RATE)).to(self.device)  # (C, n44)
        n44 = y44.shape[-1]
        nfr = 1 + n44 // a.hop_length
        mel_db = _fit_frames(self._mel_db(y44), nfr)  # (C, M, nfr)
        gain = _fit_frames(controls["gain_db"][..., c.f0 : c.f1], nfr)
        restored_power = db_to_power(mel_db + gain)
        init = stft(y44, a.n_fft, a.hop_length) if self.init_phase else None
        # Griffin-Lim's random phase from a generator seeded per chunk: the same file, the same output.
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + c.f0)
        wave = mel_to_audio(
            restored_power, sample_rate=MODEL_RATE, n_iter=self.iterations, momentum=self.momentum,
            length=n44, init_phase=init, generator=generator,
        )
        return resample(wave.float().cpu().numpy().reshape(seg.shape[0], -1), MODEL_RATE, sr, length=n)

    @torch.inference_mode()
    def _synthesise(self, audio: np.ndarray, sr: int, chunks: list[Chunk], controls: dict[str, Any]) -> np.ndarray:
        render: Callable[..., np.ndarray] = {
            "chain": self._render_chain, "mask": self._render_mask, "griffinlim": self._render_griffinlim
        }[self.inversion]
        equal_power = self.inversion == "griffinlim" and not self.init_phase
        if len(chunks) == 1:  # the whole track at once: no crossfade, no copy
            return np.ascontiguousarray(render(np.ascontiguousarray(audio), sr, chunks[0], controls), dtype=np.float32)
        out = np.zeros_like(audio)
        for c in chunks:
            seg = np.ascontiguousarray(audio[:, c.s0 : c.s1])
            y = render(seg, sr, c, controls)
            out[:, c.s0 : c.s1] += y * _window(c.s0, c.s1 - c.s0, c.sample_in, c.sample_out, equal_power)
        return out

    # ------------------------------------------------------------------------------ public API

    def master_audio(
        self, audio: np.ndarray, sample_rate: int, *, images: bool = False, stages: dict[str, float] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Master ``audio`` ``(C, T)`` float32 at ``sample_rate`` -> ``(mastered (C, T), info)``.

        ``info`` holds levels before/after (``lufs_*``, ``true_peak_*_dbtp``, ``peak_*_dbfs``),
        ``loudness_gain_db``, ``headroom_gain_db``, ``chunks``; with ``images``, also ``"arrays"``:
        mels and controls for the pictures and the parameter statistics.
        """
        from automaster.effects.params import unstack

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
            raise ValueError(f"expected (C, T) audio, got shape {audio.shape}")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if not _all_finite(audio):
            raise ValueError("audio contains NaN/Inf")
        sr = int(sample_rate)
        stages = stages if stages is not None else dict.fromkeys(STAGES, 0.0)
        chunks = plan_chunks(audio.shape[1], sr, self.chunk_s, self.context_s, self.audio_cfg.hop_length)

        t = time.perf_counter()
        original = audio
        audio, echo_note = self._remove_echo(audio, sr)
        controls: dict[str, Any] = self._analyse(audio, sr, chunks, model=True)
        if "params" in controls:
            controls["params"], controls["params_report"] = self._apply_chain_policy(controls["params"], echo_note)
            norm = torch.from_numpy(controls["params"]).to(self.device)[None]  # (1, P, F)
            controls["physical"] = unstack(norm)  # per frame (1, F); per clip (1,): whole-track means
        if "gain_db" in controls:
            controls["gain_db"] = torch.from_numpy(controls["gain_db"]).to(self.device)
        stages["analysis"] += time.perf_counter() - t

        t = time.perf_counter()
        mastered = self._synthesise(audio, sr, chunks, controls)
        if not _all_finite(mastered):
            raise FileError(f"the {self.inversion} inversion produced NaN/Inf samples")
        stages["render"] += time.perf_counter() - t

        t = time.perf_counter()
        mastered, info = self._levels(original, mastered, sr)
        info["chunks"] = len(chunks)
        info.update(echo_note)
        stages["loudness"] += time.perf_counter() - t

        if images:
            t = time.perf_counter()
            mel_in = controls["mel_db"] if audio is original else self._analyse(original, sr, chunks, model=False)["mel_db"]
            arrays = {"mel_input_db": mel_in, "mel_model_db": controls["mel_db"]}  # what the model saw
            arrays["mel_output_db"] = self._analyse(mastered, sr, chunks, model=False)["mel_db"]
            if "gain_db" in controls:
                gain = controls["gain_db"].cpu().numpy()
                arrays["gain_db"] = gain if gain.ndim == 2 else gain.mean(axis=0)
            if "params" in controls:
                arrays["params_norm"] = controls["params_report"]
            info["arrays"] = arrays
            stages["analysis"] += time.perf_counter() - t
        return mastered, info

    def _levels(self, original: np.ndarray, mastered: np.ndarray, sr: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Loudness/true-peak stage and the no-clipping rule; levels before and after."""
        info: dict[str, Any] = {
            "lufs_before": None, "lufs_after": None, "true_peak_before_dbtp": None, "true_peak_after_dbtp": None,
            "loudness_gain_db": 0.0, "headroom_gain_db": 0.0, "loudness_note": "",
        }
        info["peak_before_dbfs"] = _peak_dbfs(original)
        loud = self.loudness
        if loud is not None:
            info["lufs_before"] = _finite_or_none(loud.integrated_loudness(original, sr))
            info["true_peak_before_dbtp"] = _finite_or_none(loud.true_peak_dbtp(original, sr))
        after: tuple[float, float] | None = None  # (LUFS, dBTP) of `mastered` as it stands, once known
        mastered = np.ascontiguousarray(mastered, dtype=np.float32)
        if self.target_lufs is not None or self.true_peak_dbtp is not None:
            # master_loudness passes silence (below the gate) through without a loudness gain.
            mastered, stats = loud.master_loudness(mastered, sr, self.target_lufs, self.true_peak_dbtp)
            mastered = np.ascontiguousarray(mastered, dtype=np.float32)
            if self.target_lufs is not None and _finite_or_none(stats["lufs_before"]) is None:
                info["loudness_note"] = "silent: loudness target not applied"
            info["loudness_gain_db"] = _finite_or_none(stats.get("gain_db")) or 0.0
            after = (stats["lufs_after"], stats["true_peak_after_dbtp"])
        peak = _abs_max(mastered)
        if peak > 1.0:
            gain = 10.0 ** (HEADROOM_PEAK_DBFS / 20.0) / peak
            mastered = mastered * np.float32(gain)
            info["headroom_gain_db"] = 20.0 * math.log10(gain)
            after = None  # re-measured: the gate may see the quieter blocks differently
        info["peak_after_dbfs"] = _peak_dbfs(mastered)
        if loud is not None:
            if after is None:
                after = (loud.integrated_loudness(mastered, sr), loud.true_peak_dbtp(mastered, sr))
            info["lufs_after"] = _finite_or_none(after[0])
            info["true_peak_after_dbtp"] = _finite_or_none(after[1])
        return mastered, info

    def master_file(self, path: str, out_root: str, rel_path: str, out_rel: str | None = None) -> dict[str, Any]:
        """Master one file and write its outputs; never raises for a bad file.

        Returns a flat status dict: ``status`` (``ok``/``error``), ``reason``, levels, ``seconds``,
        ``stage_*_s``, ``output`` (relative to ``out_root``), sample rate, channels, duration.
        """
        out_rel = out_rel or output_rel_path(rel_path)
        status: dict[str, Any] = {
            "path": str(path), "rel_path": rel_path, "output": f"{AUDIO_DIR}/{out_rel}", "status": "ok", "reason": "",
            "sample_rate": None, "channels": None, "duration_s": None, "t_start": time.time(),
        }
        stages = dict.fromkeys(STAGES, 0.0)
        t0 = time.perf_counter()
        try:
            status.update(self._master_file(str(path), out_root, out_rel, stages))
        except (AudioError, FileError) as exc:
            status.update(status="error", reason=str(exc))
        except Exception as exc:  # per-item boundary of a batch: record, never abort the batch
            log.error("%s failed unexpectedly:\n%s", path, traceback.format_exc())
            status.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        status["seconds"] = time.perf_counter() - t0
        status["t_end"] = time.time()
        status.update({f"stage_{k}_s": v for k, v in stages.items()})
        return status

    def _master_file(self, path: str, out_root: str, out_rel: str, stages: dict[str, float]) -> dict[str, Any]:
        t = time.perf_counter()
        info = audio_info(path)
        audio, sr = read_audio(path)
        stages["decode"] += time.perf_counter() - t
        mastered, levels = self.master_audio(audio, sr, images=True, stages=stages)
        arrays = levels.pop("arrays")

        t = time.perf_counter()
        target = storage.join(out_root, AUDIO_DIR, out_rel)
        write_audio(target, mastered, sr, subtype="PCM_24")
        self._write_images(out_root, out_rel, arrays)
        if "params_norm" in arrays:
            stats = parameter_stats(arrays["params_norm"], self._policy)
            storage.write_bytes_atomic(
                storage.join(out_root, PARAMS_DIR, out_rel + ".json"), json.dumps(stats, indent=2).encode()
            )
        stages["writes"] += time.perf_counter() - t
        return {
            **levels, "sample_rate": sr, "channels": int(audio.shape[0]), "duration_s": audio.shape[1] / sr,
            "input_format": f"{info.format}/{info.subtype}",
        }

    def _write_images(self, out_root: str, out_rel: str, arrays: dict[str, np.ndarray]) -> None:
        from automaster.plots import mel_strip_png

        a = self.audio_cfg
        png = mel_strip_png([arrays["mel_input_db"], arrays["mel_output_db"]], a.db_min, a.db_max)
        storage.write_bytes_atomic(storage.join(out_root, PNG_DIR, out_rel + ".png"), png)
        tiles = []
        span = a.db_max - a.db_min
        if "gain_db" in arrays:
            tiles.append(arrays["mel_model_db"] + arrays["gain_db"])  # the restored mel (mono view)
            g = np.clip(arrays["gain_db"], -_GAIN_IMAGE_DB, _GAIN_IMAGE_DB)
            tiles.append(a.db_min + (g + _GAIN_IMAGE_DB) / (2 * _GAIN_IMAGE_DB) * span)
        if "params_norm" in arrays:
            p = arrays["params_norm"]  # (P, F) in [0, 1]: one stripe per parameter, table order top-down
            rows = np.minimum(np.arange(a.n_mels) * p.shape[0] // a.n_mels, p.shape[0] - 1)
            tiles.append(a.db_min + p[rows][::-1] * span)
        storage.write_bytes_atomic(storage.join(out_root, DEBUG_DIR, out_rel + ".png"), mel_strip_png(tiles, a.db_min, a.db_max))


def forecast_errors(meta: dict[str, Any]) -> dict[str, float]:
    """Per parameter, the checkpoint's validation MAE over the predict-the-mean baseline's
    (``{}`` when the checkpoint has no such metrics, e.g. a model saved outside training)."""
    from automaster.model.validate import mae_ratios

    try:
        metrics = json.loads(meta.get("extra", {}).get("metrics", "{}"))
        ratios = mae_ratios({k: float(v) for k, v in metrics.items()})
    except (TypeError, ValueError):
        return {}
    return {name: r for name, r in ratios.items() if math.isfinite(r)}


def parameter_stats(params_norm: np.ndarray, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-file statistics of the chain's parameters ``(P, F)`` (normalised) in physical units.

    Every ParamSpec entry gets ``unit``, ``per_frame``, ``mean``/``std``/``min``/``max`` over
    frames, ``applied``: the value the chain used (the echo: the echo stage's; per-clip parameters: the track mean of the
    normalised prediction, denormalised; per-frame ones: the trajectory, so ``null``), and with
    ``sources`` its ``source`` (:meth:`Masterer.chain_policy`).
    """
    from automaster.effects.params import PARAMS

    norm = torch.from_numpy(np.asarray(params_norm, dtype=np.float32))
    out: dict[str, Any] = {"frames": int(norm.shape[-1]), "frame_rate_hz": MODEL_RATE / 512, "params": {}}
    for i, p in enumerate(PARAMS):
        values = p.denormalize(norm[i]).numpy().astype(np.float64)
        out["params"][p.name] = {
            "unit": p.unit, "per_frame": p.per_frame, "description": p.description,
            "mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max()),
            "applied": None if p.per_frame else float(p.denormalize(norm[i].mean())),
        }
        if sources is not None:
            out["params"][p.name]["source"] = sources.get(p.name, "forecast")
    return out
