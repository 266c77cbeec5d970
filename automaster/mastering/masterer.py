"""The Masterer: one loaded model, one :class:`automaster.config.MasterConfig`, waveforms in and
out (no files, no Ray, no MLflow).

    masterer = Masterer("models/reference", config=MasterConfig(target_lufs=-14, true_peak_dbtp=-1))
    mastered, info = masterer.master_audio(audio, sample_rate)              # (C, T) float32
    masked, _ = masterer.master_audio(audio, sample_rate, inversion="mask")  # same model

The output keeps the input's sample rate, channel count and length. Stages: echo stage
(:mod:`.policy`) -> analysis (per chunk: mono downmix at the model rate, mel, model; controls
stitched over the track) -> synthesis (per chunk: the inversion, :mod:`.inversions`; overlaps
crossfaded, :mod:`.chunks`) -> the stages after restoration (:mod:`.finishing`: reference match,
amount, loudness preset, true-peak limiter, no clipping). Per-clip parameters are averaged over
the whole track, so every chunk is repaired with the same settings.

The spectral restorer (``model.mode = "spectral"``) renders ``mask`` only: it reads the chunk's
waveform, its gain per STFT bin and frame is applied like the U-Net's mel gain, and its level
head's gain (averaged over the chunks) goes to the loudness stage, which applies it, scaled by
``amount``, with the ``restore`` preset (a LUFS target, a reference's loudness or ``none`` wins).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automaster.audio import AudioError, FileError, read_audio
from automaster.config import INVERSIONS, MAX_REFERENCE_LUFS, MIN_REFERENCE_S, ConfigError, MasterConfig
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.stft import N_FFT
from automaster.dsp.loudness import integrated_loudness
from automaster.dsp.mel import mel_filterbank
from automaster.dsp.tone import ToneProfile, tone_profile
from automaster.effects.params import unstack
from automaster.mastering.chunks import Chunk, fit_frames, plan_chunks, resample, window
from automaster.mastering.inversions import mel_db, render
from automaster.mastering.finishing import FinishSettings, finish, levels_info
from automaster.mastering.levels import HEADROOM_PEAK_DBFS, all_finite, finite_or_none
from automaster.mastering.policy import apply_chain_policy, chain_is_identity, chain_policy, forecast_errors, remove_echo
from automaster.model.batches import normalize_mel
from automaster.model.checkpoint import load_model_cached
from automaster.model.spectral import MODE as SPECTRAL
from automaster.model.validate import denormalize_mel

STAGES = ("decode", "analysis", "render", "loudness", "writes")


class MasteringError(ValueError):
    """A setup that cannot master anything (model mode lacks what the inversion needs, ...)."""


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """On the CPU, store the model's 4-D weights channels-last (feed it channels-last inputs too):
    oneDNN's convolutions run faster so, with the same outputs to float rounding. In place; eval
    mode only; idempotent."""
    if model.training:
        raise ValueError("prepare_for_inference needs a model in eval mode")
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def default_inversion(model_path: str | os.PathLike) -> str:
    """``chain`` when the model forecasts parameters (``params``/``cascade``: it measured best
    on damage made by another implementation, README "Results"), ``mask`` for a U-Net-only
    (``restore``) model and for the spectral restorer (its only inversion); ``chain`` when the
    model's config cannot be read (the loader reports that)."""
    from automaster.model.checkpoint import checkpoint_paths

    try:
        _, config_path = checkpoint_paths(model_path)
        mode = json.loads(Path(config_path).read_text())["model"]["mode"]
    except (OSError, ValueError, KeyError, TypeError):
        return "chain"
    return "mask" if mode in ("restore", SPECTRAL) else "chain"


class Masterer:
    """Masters waveforms with one loaded model.

    Args:
        model_path: checkpoint directory or its ``model.pt`` (loaded once per process).
        inversion: overrides ``config.inversion`` (``"chain"``, ``"mask"`` or ``"griffinlim"``).
        config: the mastering settings (defaults: :class:`MasterConfig`'s).
        device: torch device of the model and the DSP.
        **overrides: :class:`MasterConfig` fields replacing ``config``'s.

    Raises:
        MasteringError: bad settings, or the checkpoint's model mode lacks what the inversion needs.
        automaster.model.checkpoint.CheckpointError: the checkpoint cannot be loaded.
    """

    def __init__(
        self, model_path: str | os.PathLike, inversion: str | None = None, *, config: MasterConfig | None = None,
        device: str | torch.device = "cpu", **overrides: Any,
    ) -> None:
        if inversion is not None:
            overrides["inversion"] = inversion
        try:
            self.cfg = dataclasses.replace(config or MasterConfig(), **overrides)
        except ConfigError as exc:
            raise MasteringError(str(exc)) from None
        self.device = torch.device(device)
        model, self.model_config, self.meta = load_model_cached(model_path, map_location=self.device)
        self.model = prepare_for_inference(model, self.device)
        self.model_path = str(model_path)
        self.mode = self.model.mode
        self.audio_cfg = self.model_config.audio
        if self.audio_cfg.sample_rate != MODEL_RATE:
            raise MasteringError(f"the model's analysis rate must be {MODEL_RATE} Hz, got {self.audio_cfg.sample_rate}")
        self.check_inversion(self.cfg.inversion)
        self.level_model = self._load_level_model()
        self.forecast_skill = forecast_errors(self.meta)
        self._policy = chain_policy(self.forecast_skill, self.cfg.echo_removal, self.cfg.max_forecast_error)
        # A chain whose every effect the policy makes neutral is the identity: not run at all.
        self._identity_chain = self.mode != SPECTRAL and chain_is_identity(self._policy)
        self.reference = load_reference(self.cfg.reference) if self.cfg.reference else None
        self.finish_settings = FinishSettings(
            preset=self.cfg.preset, target_lufs=self.cfg.target_lufs, true_peak_dbtp=self.cfg.true_peak_dbtp,
            amount=self.cfg.amount, reference=self.reference, max_limiting_db=self.cfg.max_limiting_db,
            max_eq_db=self.cfg.max_eq_db,
        )

    def _load_level_model(self) -> nn.Module | None:
        """The model whose level head sets the ``restore`` preset's level: the restorer itself
        when it has one (the spectral restorer), else ``config.level_model`` (None: none)."""
        if self.mode == SPECTRAL or not self.cfg.level_model:
            return None
        path = self.cfg.level_model
        from automaster.model.level_trees import LevelTrees, is_trees_dir

        try:
            if is_trees_dir(path):  # the shipped kind: boosted trees over statistics of the input
                return LevelTrees.load(path)
            model, _, _ = load_model_cached(path, map_location=self.device)
        except (OSError, ValueError) as exc:
            raise MasteringError(f"level model {path!r}: {exc}") from None
        if model.mode != SPECTRAL:
            raise MasteringError(
                f"level model {path!r} has no level head (model mode {model.mode!r}); use a level model such as models/level"
            )
        return model

    @property
    def inversion(self) -> str:
        """The default inversion (``config.inversion``)."""
        return self.cfg.inversion

    def check_inversion(self, inversion: str) -> None:
        """Raise :class:`MasteringError` unless this model can render ``inversion``."""
        if inversion not in INVERSIONS:
            raise MasteringError(f"inversion must be one of {', '.join(INVERSIONS)}, got {inversion!r}")
        if self.mode == SPECTRAL:
            if inversion != "mask":
                raise MasteringError(f"the spectral restorer renders the 'mask' inversion only, not {inversion!r}")
            return
        if inversion == "chain" and self.model.forecaster is None:
            raise MasteringError(
                f"inversion 'chain' needs forecast parameters, but the checkpoint's model mode is {self.mode!r} "
                "(U-Net only); use --inversion mask or griffinlim, or a 'params'/'cascade' model"
            )
        if inversion != "chain" and self.model.unet is None:
            raise MasteringError(
                f"inversion {inversion!r} needs the U-Net's restored mel, but the checkpoint's model mode is "
                f"{self.mode!r} (parameters only); use --inversion chain, or a 'restore'/'cascade' model"
            )

    def supported_inversions(self) -> list[str]:
        """The inversions this model can render, in :data:`INVERSIONS` order."""
        if self.mode == SPECTRAL:
            return ["mask"]
        return [i for i in INVERSIONS if (self.model.forecaster if i == "chain" else self.model.unet) is not None]

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on (for summaries and MLflow)."""
        return {
            "model": self.model_path, "model_mode": self.mode, **dataclasses.asdict(self.cfg),
            "level_model": self.cfg.level_model if self.level_model is not None else None,
            "headroom_peak_dbfs": HEADROOM_PEAK_DBFS,
        }

    def chain_policy(self) -> dict[str, str]:
        """Where each chain parameter comes from (:func:`automaster.mastering.policy.chain_policy`)."""
        return dict(self._policy)

    # ------------------------------------------------------------------------------ analysis

    def _run_model(self, mel_db_: torch.Tensor, inversion: str) -> dict[str, torch.Tensor]:
        """``(B, M, F)`` dB -> ``"params"`` ``(B, P, F)`` normalised (chain) or ``"gain_db"``
        ``(B, M, F)`` (restored - input, dB, bounded by ``max_gain_db``); only the network needed."""
        x = mel_db_[:, None]  # (B, 1, M, F)
        u = normalize_mel(x, self.audio_cfg)
        if self.device.type == "cpu":
            u = u.contiguous(memory_format=torch.channels_last)  # the layout the weights are in
        out = self.model(u, outputs=("params",) if inversion == "chain" else ("mel",))
        result = {}
        if "params" in out:
            result["params"] = out["params"]
        if "mel" in out:
            restored_db = denormalize_mel(out["mel"], self.audio_cfg, x)
            seen_db = denormalize_mel(u, self.audio_cfg, x)
            bound = self.cfg.max_gain_db
            result["gain_db"] = (restored_db - seen_db).clamp(-bound, bound)[:, 0]
        return result

    def restores(self, inversion: str | None = None) -> bool:
        """Whether ``inversion`` (default: the configured one) can change the audio: False for the
        ``chain`` when the policy makes every effect neutral (it is then not run)."""
        return not ((inversion or self.cfg.inversion) == "chain" and self._identity_chain)

    @torch.inference_mode()
    def analyse(
        self, audio: np.ndarray, sr: int, chunks: list[Chunk], inversion: str | None = None, mel: bool = True,
    ) -> dict[str, np.ndarray]:
        """Frame-rate controls of the whole track from its mono downmix, stitched over chunks.

        Returns ``"mel_db"`` ``(M, F)`` (unless ``mel`` is false) and, with an ``inversion``, the
        model's output for it (none for a chain the policy makes the identity):
        ``"params"`` ``(P, F)`` (chain) or ``"gain_db"`` ``(M, F)`` (mask, griffinlim); for the
        spectral restorer ``"gain_db"`` ``(n_fft // 2 + 1, F)`` over the model-rate STFT bins and
        ``"level_db"`` ``(F,)`` (each chunk's level gain). Every channel gets the same controls.
        """
        n_frames = chunks[-1].f1
        sums: dict[str, np.ndarray] = {}
        weight = np.zeros(n_frames, np.float32)
        restorer = inversion is not None and self.restores(inversion)
        for c in chunks:
            nf = c.f1 - c.f0
            # Downmix first (linear, so the same as after resampling): one channel to resample.
            mono = np.ascontiguousarray(audio[:, c.s0 : c.s1].mean(axis=0, keepdims=True, dtype=np.float32))
            y = torch.from_numpy(resample(mono, sr, MODEL_RATE)).to(self.device)  # (1, n_model)
            outputs = {}
            if mel or (restorer and self.mode != SPECTRAL):
                mel_ = fit_frames(mel_db(y, self.audio_cfg), nf)  # (1, M, nf)
                if mel:
                    outputs["mel_db"] = mel_[0]
            # a spectral model's STFT needs N_FFT // 2 + 1 samples: a shorter clip is read with silence after it
            short = N_FFT // 2 + 1 - y.shape[-1]
            padded = torch.nn.functional.pad(y, (0, short)) if short > 0 else y
            if restorer and self.mode == SPECTRAL:  # the restorer reads the waveform
                out = self.model(padded[None], outputs=("gain_db", "level_db"))
                outputs["gain_db"] = fit_frames(out["gain_db"], nf)[0]  # (K, nf) model-rate bins
                outputs["level_db"] = out["level_db"].expand(nf)  # per chunk, stitched like the rest
            elif restorer:
                outputs.update({k: v[0] for k, v in self._run_model(mel_, inversion).items()})
            if inversion is not None and self.level_model is not None:  # another model's level head
                outputs["level_db"] = self.level_model(padded[None], outputs=("level_db",))["level_db"].expand(nf)
            w = window(c.f0, nf, c.frame_in, c.frame_out, equal_power=False)
            for key, value in outputs.items():
                value = value.float().cpu().numpy()
                if key not in sums:
                    sums[key] = np.zeros(value.shape[:-1] + (n_frames,), np.float32)
                sums[key][..., c.f0 : c.f1] += value * w
            weight[c.f0 : c.f1] += w
        return {k: v / np.maximum(weight, 1e-8) for k, v in sums.items()}

    def _controls(
        self, audio: np.ndarray, sr: int, chunks: list[Chunk], inversion: str, echo: dict[str, Any], mel: bool,
    ) -> dict[str, Any]:
        """:meth:`analyse` plus the chain policy, as the renderers take them (on the device)."""
        controls: dict[str, Any] = self.analyse(audio, sr, chunks, inversion, mel=mel)
        if "params" in controls:
            controls["params"], controls["params_report"] = apply_chain_policy(
                controls["params"], self._policy, echo, self.cfg.echo_removal
            )
            norm = torch.from_numpy(controls["params"]).to(self.device)[None]  # (1, P, F)
            controls["physical"] = unstack(norm)  # per frame (1, F); per clip (1,): whole-track means
        if "gain_db" in controls:
            controls["gain_db"] = torch.from_numpy(controls["gain_db"]).to(self.device)
        if "level_db" in controls:  # one gain for the track: the mean of the chunks' predictions
            controls["level_db"] = float(np.mean(controls["level_db"]))
        return controls

    # ----------------------------------------------------------------------------- synthesis

    @torch.inference_mode()
    def _synthesise(self, audio: np.ndarray, sr: int, chunks: list[Chunk], controls: dict[str, Any], inversion: str) -> np.ndarray:
        def one(seg: np.ndarray, c: Chunk) -> np.ndarray:
            return render(inversion, seg, sr, c, controls, self.audio_cfg, self.cfg, self.device)

        if not self.restores(inversion):
            return audio
        equal_power = inversion == "griffinlim" and not self.cfg.init_phase  # mutually incoherent chunks
        if len(chunks) == 1:  # the whole track at once: no crossfade, no copy
            return np.ascontiguousarray(one(np.ascontiguousarray(audio), chunks[0]), dtype=np.float32)
        out = np.zeros_like(audio)
        for c in chunks:
            y = one(np.ascontiguousarray(audio[:, c.s0 : c.s1]), c)
            out[:, c.s0 : c.s1] += y * window(c.s0, c.s1 - c.s0, c.sample_in, c.sample_out, equal_power)
        return out

    # ---------------------------------------------------------------------------- public API

    def master_audio(
        self, audio: np.ndarray, sample_rate: int, *, inversion: str | None = None, images: bool = False,
        stages: dict[str, float] | None = None, reference: ToneProfile | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Master ``audio`` ``(C, T)`` float32 at ``sample_rate`` -> ``(mastered (C, T), info)``.

        ``inversion`` overrides the configured one (the same loaded model renders every inversion
        it supports); ``reference`` overrides the configured reference (a per-file reference).
        ``info`` holds levels before/after (``lufs_*``, ``true_peak_*_dbtp``, ``peak_*_dbfs``),
        ``loudness_gain_db``, ``headroom_gain_db``, the limiter's reductions, ``target_lufs``,
        ``ceiling_dbtp``, ``applied`` (what was done, in words), ``chunks``, the echo stage's
        note (:func:`automaster.mastering.finishing.levels_info`) and ``"finish"``: the stages'
        records and curves for the report; with a level head (the spectral restorer's or the
        level model's) ``level_gain_db`` (its gain, the mean over chunks; the ``restore`` preset's
        loudness stage applies it times ``amount``) and ``predicted_lufs`` (the input's loudness
        plus that gain: the original master's, as the model estimates it); with ``images``, also
        ``"arrays"``: mels and controls for pictures and parameter statistics. ``stages``
        accumulates seconds per stage. At ``amount`` 0 nothing is restored or measured for it:
        the input goes straight to the loudness stages.

        Raises:
            ValueError: not ``(C, T)`` finite audio, or a bad sample rate.
            MasteringError: an inversion this model cannot render.
            FileError: the inversion produced NaN/Inf samples.
        """
        inversion = inversion or self.cfg.inversion
        if inversion != self.cfg.inversion:
            self.check_inversion(inversion)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
            raise ValueError(f"expected (C, T) audio, got shape {audio.shape}")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if not all_finite(audio):
            raise ValueError("audio contains NaN/Inf")
        sr = int(sample_rate)
        stages = stages if stages is not None else dict.fromkeys(STAGES, 0.0)
        chunks = plan_chunks(audio.shape[1], sr, self.cfg.chunk_s, self.cfg.context_s, self.audio_cfg.hop_length)
        restoring = self.cfg.amount > 0  # amount 0: the input itself goes to the loudness stages

        t = time.perf_counter()
        original = audio
        echo: dict[str, Any] = {"echo_removed": False, "echo_delay_s": None, "echo_gain": None}
        if self.cfg.echo_removal and restoring:
            audio, echo = remove_echo(audio, sr, self.cfg.min_echo_gain)
        controls = self._controls(audio, sr, chunks, inversion, echo, mel=images) if restoring or images else {}
        stages["analysis"] += time.perf_counter() - t

        t = time.perf_counter()
        mastered = self._synthesise(audio, sr, chunks, controls, inversion) if restoring else audio
        if not all_finite(mastered):
            raise FileError(f"the {inversion} inversion produced NaN/Inf samples")
        stages["render"] += time.perf_counter() - t

        t = time.perf_counter()
        restored, note = self._restore_note(inversion, echo, restoring)
        level_db = controls.get("level_db") if restoring else None
        predicted_lufs = restore_gain = None
        if level_db is not None:  # the level head: the original master's loudness, which the loudness stage restores
            predicted_lufs = finite_or_none(integrated_loudness(audio, sr))
            restored_lufs = integrated_loudness(mastered, sr) if mastered is not audio else predicted_lufs
            if predicted_lufs is not None and restored_lufs is not None and math.isfinite(restored_lufs):
                predicted_lufs += level_db
                restore_gain = predicted_lufs - restored_lufs
        settings = self.finish_settings if reference is None else dataclasses.replace(self.finish_settings, reference=reference)
        mastered, finished = finish(original, mastered, sr, settings, level_gain_db=restore_gain, restore_note=note,
                                    restore_applied=restored)
        info = levels_info(original, sr, finished)
        info["chunks"] = len(chunks)
        info.update(echo)
        if level_db is not None:
            info["level_gain_db"] = level_db
            info["predicted_lufs"] = predicted_lufs
        info["finish"] = finished
        stages["loudness"] += time.perf_counter() - t

        if images:
            t = time.perf_counter()
            info["arrays"] = self._image_arrays(original, audio, mastered, sr, chunks, controls)
            stages["analysis"] += time.perf_counter() - t
        return mastered, info

    def _restore_note(self, inversion: str, echo: dict[str, Any], restoring: bool) -> tuple[bool, str]:
        """``(whether restoration changed the audio, what it did in words)``."""
        if not restoring:
            return False, "amount 0: no restoration"
        delays = ", ".join(f"{t['delay_s'] * 1e3:.0f}" for t in echo.get("echo_taps") or [])
        parts = [f"echo removed ({delays} ms)"] if echo["echo_removed"] and delays else []
        if self.restores(inversion):
            parts.append(f"{inversion} inversion")
        elif not parts:
            return False, "no effect to undo (the model's forecasts are no better than the mean: the chain is neutral)"
        return True, ", ".join(parts)

    def _image_arrays(
        self, original: np.ndarray, seen: np.ndarray, mastered: np.ndarray, sr: int, chunks: list[Chunk],
        controls: dict[str, Any],
    ) -> dict[str, np.ndarray]:
        """Mels of the input, of what the model saw and of the output, and the controls."""
        if "mel_db" not in controls:  # amount 0: nothing was analysed
            controls = {**controls, "mel_db": self.analyse(seen, sr, chunks)["mel_db"]}
        mel_in = controls["mel_db"] if seen is original else self.analyse(original, sr, chunks)["mel_db"]
        arrays = {"mel_input_db": mel_in, "mel_model_db": controls["mel_db"]}
        arrays["mel_output_db"] = self.analyse(mastered, sr, chunks)["mel_db"]
        if "gain_db" in controls:
            gain = controls["gain_db"].cpu().numpy()
            gain = gain if gain.ndim == 2 else gain.mean(axis=0)
            if gain.shape[0] != mel_in.shape[0]:  # the spectral restorer's gain per STFT bin: shown per mel band
                fb = mel_filterbank(MODEL_RATE, 2 * (gain.shape[0] - 1), mel_in.shape[0]).numpy()
                gain = (fb / np.maximum(fb.sum(axis=1, keepdims=True), 1e-12)) @ gain
            arrays["gain_db"] = gain
        if "params" in controls:
            arrays["params_norm"] = controls["params_report"]
        return arrays


def load_reference(path: str) -> ToneProfile:
    """The tone profile of a reference track (``--reference``), read whole at its own rate.

    Raises:
        MasteringError: the file cannot be read, or it is no reference: silent, shorter than one
            400 ms loudness block, more than two channels (a surround mix's loudness does not
            compare with a stereo song's), or louder than any master (above 0 LUFS: a float file
            far above full scale would drive the song into the limiter).
    """
    try:
        audio, sr = read_audio(path)
    except (AudioError, FileError, OSError) as exc:
        raise MasteringError(f"--reference {path!r}: {exc}") from None
    if audio.shape[1] < MIN_REFERENCE_S * sr:
        raise MasteringError(f"--reference {path!r} is {audio.shape[1] / sr:.2f} s long: a reference needs at least "
                             f"{MIN_REFERENCE_S:g} s (one loudness block)")
    if audio.shape[0] > 2:
        raise MasteringError(f"--reference {path!r} has {audio.shape[0]} channels: a reference must be mono or stereo")
    profile = tone_profile(audio, sr)
    if not np.isfinite(profile.lufs):
        raise MasteringError(f"--reference {path!r} is silent: nothing to match")
    if profile.lufs > MAX_REFERENCE_LUFS:
        raise MasteringError(f"--reference {path!r} measures {profile.lufs:+.1f} LUFS, louder than any master "
                             f"(at most {MAX_REFERENCE_LUFS:g} LUFS): a file above full scale?")
    return profile
