"""The demaster job: a corpus of clean music -> the paired dataset (the batch skeleton: in-process or on Ray).

Per track (:class:`TrackProcessor`): decode (mono, 44.1 kHz, centred excerpt) -> per variant:
draw parameters seeded by ``(seed, track_id, variant)`` -> apply the chain -> mel spectrograms of
both -> ``output_audio/``, ``output_spectrograms/``, ``output_txt/`` and one Parquet file per track
under ``dataset/``. The batch skeleton (:mod:`.batch`) runs the tracks, publishes each track's
files together, resumes complete tracks and refuses a re-run with other settings; a broken track
is recorded with its reason; the job ends with ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
import torch

from automaster import storage
from automaster.audio import FileError, note_repair, read_excerpt, write_audio
from automaster.config import Config, ConfigError, from_dict
from automaster.corpus import scan_corpus
from automaster.dataset import DATASET_DIR, META_FILE, SCHEMA_VERSION, parquet_bytes, to_pcm16
from automaster.degrade import degrade, draw_params, seed_for, make_generator
from automaster.dsp.mel import mel_db_rows
from automaster.dsp.stft import HOP_LENGTH, N_FFT, stft_rows
from automaster.effects.params import PARAMS
from automaster.pipelines.batch import JobSpec, RunOptions, excluded_outputs, run_item, run_job
from automaster.pipelines.outfolder import OutputFolder
from automaster.plots import mel_pair_png

log = logging.getLogger(__name__)

STAGES = ("decode", "effects", "mels", "png", "writes")
AUDIO_DIR, PNG_DIR, TXT_DIR = "output_audio", "output_spectrograms", "output_txt"


OUTPUT_NAMES = (AUDIO_DIR, PNG_DIR, TXT_DIR, DATASET_DIR, META_FILE)


def dataset_file(out: str, track_id: str) -> str:
    return storage.join(out, DATASET_DIR, f"{track_id}.parquet")


def _variant_suffix(variant: int, variants: int) -> str:
    return f"_v{variant}" if variants > 1 else ""


def params_text(track_id: str, variant: int, params: dict[str, torch.Tensor]) -> str:
    """The drawn parameters, human-readable, with units (per-frame ones summarised)."""
    lines = [f"# automaster degradation parameters: track {track_id}, variant {variant}"]
    for spec in PARAMS:
        value = params[spec.name].detach().reshape(-1).cpu().numpy()
        unit = f" {spec.unit}" if spec.unit else ""
        if spec.per_frame:
            lines.append(
                f"{spec.name:20s} mean {value.mean():9.3f}{unit}  min {value.min():9.3f}  max {value.max():9.3f}"
                f"  (per frame, {value.size} frames)"
            )
        else:
            lines.append(f"{spec.name:20s} {float(value[0]):9.3f}{unit}")
    return "\n".join(lines) + "\n"


class _Clean(NamedTuple):
    """A track's clean excerpt as every variant uses it."""

    x: torch.Tensor  # (1, T), scaled by input_gain
    rms_db: float  # before the scaling
    input_gain: float
    n_frames: int
    mel_db: np.ndarray  # (n_mels, F)
    shared_spec: np.ndarray | None  # the STFT the chain's EQ reuses, when at its framing
    wave: np.ndarray  # int16

    @property
    def input_gain_db(self) -> float:
        return 20.0 * math.log10(self.input_gain)


class TrackProcessor:
    """Turns one corpus row into dataset rows and files. Holds no Ray state (testable alone)."""

    def __init__(self, config: dict[str, Any] | Config, warm_up: bool = False):
        self.config = config if isinstance(config, Config) else from_dict(config)
        torch.set_num_threads(1)  # one track per CPU; parallelism comes from the job's workers
        if warm_up:
            self.warm_up()

    def warm_up(self) -> float:
        """Run a synthetic clip through every stage into a throw-away folder; returns seconds.

        A fresh worker's first track otherwise pays ~1.5 s of one-off costs (numba kernels
        loaded from their cache, librosa's filterbank, matplotlib's colormap, FFT plans for the
        clip's length): paid here, at start-up, every track then costs the same.
        """
        t = time.perf_counter()
        sr = self.config.audio.sample_rate
        # A full-length clip: FFT plans and window envelopes are cached per length.
        seconds = max(self.config.demaster.clip_seconds, self.config.demaster.min_seconds + 1.0)
        noise = np.random.default_rng(0).standard_normal((2, int(seconds * sr))).astype(np.float32)
        with tempfile.TemporaryDirectory(prefix="automaster-warm-up-") as tmp:
            path = os.path.join(tmp, "warm_up.wav")
            write_audio(path, 0.1 * noise, sr, subtype="FLOAT")
            item = {"key": "warm_up", "track_id": "warm_up", "path": path, "split": "", "genre": ""}
            status = run_item(self, item, OutputFolder(os.path.join(tmp, "out")))
        if status["status"] != "ok":
            log.warning("demaster warm-up failed (the first track will be slower): %s", status["reason"])
        return time.perf_counter() - t

    def process(self, row: dict[str, Any], staging: Any) -> dict[str, Any]:
        """Stage one track's files (the Parquet file last); returns its figures."""
        stages = dict.fromkeys(STAGES, 0.0)
        figures = self._process(row, stages, staging)
        return {"track_id": row["track_id"], "split": row["split"], **figures, **{f"stage_{k}_s": v for k, v in stages.items()}}

    def _process(self, row: dict[str, Any], stages: dict[str, float], staging: Any) -> dict[str, Any]:
        dm, sr, track_id = self.config.demaster, self.config.audio.sample_rate, row["track_id"]
        clean = self._decode(row["path"], stages)
        rows = [self._variant(row, variant, clean, stages, staging) for variant in range(dm.variants)]

        t = time.perf_counter()
        if dm.write_audio:
            write_audio(staging.path(f"{AUDIO_DIR}/{track_id}_original.wav"), clean.wave, sr, subtype="PCM_16")
        # Staged last, so published last: the training reader lists dataset/ only.
        _write(staging.path(f"{DATASET_DIR}/{track_id}.parquet"), parquet_bytes(rows))
        stages["writes"] += time.perf_counter() - t
        return {"variants": len(rows), "input_gain_db": clean.input_gain_db, "rms_db": clean.rms_db}

    def _decode(self, path: str, stages: dict[str, float]) -> _Clean:
        """The clean excerpt, checked for silence and scaled under the peak ceiling, with its mel."""
        cfg, dm, audio_cfg = self.config, self.config.demaster, self.config.audio
        sr = audio_cfg.sample_rate
        t = time.perf_counter()
        audio, _ = read_excerpt(path, dm.clip_seconds, sample_rate=sr, mono=True, min_seconds=dm.min_seconds)
        x = torch.from_numpy(np.ascontiguousarray(audio[:1]))  # (1, T)
        rms = float(x.square().mean().sqrt())
        rms_db = 20.0 * math.log10(max(rms, 1e-12))
        if rms_db < dm.silence_db:
            raise FileError(f"{path!r}: silent (RMS {rms_db:.1f} dBFS < {dm.silence_db:g} dBFS)")
        # Decoded MP3/Vorbis often peaks above 0 dBFS: scale down rather than clip the reference.
        peak = float(x.abs().max())
        input_gain = min(1.0, cfg.degrade.peak_ceiling / peak)
        if peak > 1.0:  # above full scale: a repair; a master at full scale moves < 0.01 dB, silently
            note_repair("over_range_scaled")
        x = x * input_gain
        stages["decode"] += time.perf_counter() - t

        t = time.perf_counter()
        # One frame-major STFT of the clean clip serves its mel and (at the chain's own framing)
        # the chain's EQ.
        spec = stft_rows(x.numpy(), audio_cfg.n_fft, audio_cfg.hop_length)  # (1, F, bins)
        mel_db = mel_db_rows(spec, sr, audio_cfg.n_mels)[0]  # (n_mels, F)
        shared_spec = spec if (audio_cfg.n_fft, audio_cfg.hop_length) == (N_FFT, HOP_LENGTH) else None
        wave = to_pcm16(x[0].numpy())
        stages["mels"] += time.perf_counter() - t
        return _Clean(x, rms_db, input_gain, spec.shape[1], mel_db, shared_spec, wave)

    def _variant(self, row: dict[str, Any], variant: int, clean: _Clean, stages: dict[str, float], staging: Any) -> dict[str, Any]:
        """One degraded variant: draw its parameters, apply the chain, stage its files; its dataset row."""
        cfg, dm, audio_cfg = self.config, self.config.demaster, self.config.audio
        sr, track_id = audio_cfg.sample_rate, row["track_id"]
        suffix = _variant_suffix(variant, dm.variants)
        t = time.perf_counter()
        gen = make_generator(dm.seed, track_id, variant)
        params = draw_params(clean.n_frames, gen, cfg.degrade, clip_rms_db=clean.rms_db + clean.input_gain_db)
        result = degrade(clean.x[None], sr, params, gen, cfg.degrade, stft_rows_clean=clean.shared_spec)
        y = result.audio[0]  # (1, T)
        stages["effects"] += time.perf_counter() - t

        t = time.perf_counter()
        mel_y_db = mel_db_rows(stft_rows(y.numpy(), audio_cfg.n_fft, audio_cfg.hop_length), sr, audio_cfg.n_mels)[0]
        wave_y = to_pcm16(y[0].numpy())
        stages["mels"] += time.perf_counter() - t

        t = time.perf_counter()
        frame_s = audio_cfg.hop_length / sr
        png = mel_pair_png(clean.mel_db, mel_y_db, audio_cfg.db_min, audio_cfg.db_max, frame_s=frame_s) if dm.write_png else None
        stages["png"] += time.perf_counter() - t

        t = time.perf_counter()
        degraded_name = f"{track_id}_degraded{suffix}.wav"
        if dm.write_audio:  # the int16 as they are
            write_audio(staging.path(f"{AUDIO_DIR}/{degraded_name}"), wave_y, sr, subtype="PCM_16")
        if png is not None:
            _write(staging.path(f"{PNG_DIR}/{track_id}{suffix}.png"), png)
        if dm.write_txt:
            text = params_text(track_id, variant, result.params).encode()
            _write(staging.path(f"{TXT_DIR}/{track_id}{suffix}.txt"), text)
        stages["writes"] += time.perf_counter() - t
        return self._record(row, variant, clean, mel_y_db, wave_y, degraded_name, result.params)

    def _record(
        self, row: dict[str, Any], variant: int, clean: _Clean, mel_y_db: np.ndarray, wave_y: np.ndarray,
        degraded_name: str, params: dict[str, torch.Tensor],
    ) -> dict[str, Any]:  # fmt: skip
        """A variant's dataset row: provenance, both mels and waves, and every drawn parameter."""
        dm, audio_cfg, track_id = self.config.demaster, self.config.audio, row["track_id"]
        record = {
            "track_id": track_id,
            "variant": variant,
            "split": row["split"],
            "genre": row["genre"],
            "source_path": storage.display(row["path"]),  # Parquet strings are UTF-8
            "seed": seed_for(dm.seed, track_id, variant),
            "sample_rate": audio_cfg.sample_rate,
            "n_samples": int(clean.x.shape[-1]),
            "n_mels": audio_cfg.n_mels,
            "n_frames": int(clean.mel_db.shape[-1]),
            "input_gain_db": clean.input_gain_db,
            "rms_db": clean.rms_db,
            "mel_original_db": clean.mel_db,
            "mel_degraded_db": mel_y_db,
            "wave_original": clean.wave,
            "wave_degraded": wave_y,
            "audio_original": f"{AUDIO_DIR}/{track_id}_original.wav",
            "audio_degraded": f"{AUDIO_DIR}/{degraded_name}",
        }
        for spec in PARAMS:
            value = params[spec.name].detach().reshape(-1).cpu().numpy().astype(np.float32)
            record[spec.name] = value if spec.per_frame else float(value[0])
        return record


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _summarise(summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """The demaster figures on top of the skeleton's summary (tracks per second, stage means)."""
    ok = [r for r in results if r["status"] == "ok" and "stage_decode_s" in r]
    for f in summary["failures"]:
        f["track_id"] = f["key"]  # the key of a demaster item is its track id
    summary["tracks_per_s"] = summary["items_per_s"]
    summary["seconds_per_track"] = float(np.mean([r["seconds"] for r in ok])) if ok else 0.0
    summary["stage_seconds_mean"] = {s: (float(np.mean([r[f"stage_{s}_s"] for r in ok])) if ok else 0.0) for s in STAGES}


def check_config(config: Config) -> None:
    """The demaster settings a user can get wrong, each named (exit 2 on the command line)."""
    dm = config.demaster
    if dm.variants < 1:
        raise ConfigError(f"demaster.variants {dm.variants}: must be >= 1")
    if not (dm.clip_seconds > 0):
        raise ConfigError(f"demaster.clip_seconds {dm.clip_seconds}: must be > 0")
    if not (dm.min_seconds > 0):
        raise ConfigError(f"demaster.min_seconds {dm.min_seconds}: must be > 0")
    if dm.limit < 0:
        raise ConfigError(f"demaster.limit {dm.limit}: must be >= 0")
    if dm.workers < 0:
        raise ConfigError(f"--workers {dm.workers}: must be >= 0 (0: one per CPU)")


def run_demaster(
    corpus: str,
    out: str,
    config: Config = Config(),
    *,
    tracking_uri: str | None = None,
    experiment: str = "automaster-demaster",
    run_name: str | None = None,
    ray_address: str | None = None,
    ray: bool | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demaster job; returns the summary (also written to ``<out>/summary.json``).

    ``ray``: force Ray (True) or an in-process run (False); None decides by the number of tracks.

    Raises:
        ConfigError: bad settings, or an output folder holding other settings' outputs or in use.
        automaster.corpus.CorpusError: no audio under ``corpus``.
    """
    check_config(config)
    dm = config.demaster
    scan = scan_corpus(corpus, exclude=excluded_outputs(corpus, out, OUTPUT_NAMES))
    tracks = scan.tracks[: dm.limit] if dm.limit else scan.tracks
    base = scan.root.rstrip("/" + os.sep)
    items = [
        {**asdict(t), "key": t.track_id, "rel_path": t.path[len(base):].replace(os.sep, "/").lstrip("/"),
         "duration_s": dm.clip_seconds}
        for t in tracks
    ]
    passed_over = [{"path": p, "reason": r} for p, r in scan.passed_over]
    passed_over += [{"path": path, "reason": f"track {tid}: {reason}"} for tid, path, reason in scan.missing]
    settings = {k: v for k, v in config.to_dict().items() if k in ("audio", "degrade")}
    settings["demaster"] = {k: v for k, v in config.to_dict()["demaster"].items() if k not in ("workers", "limit")}
    spec = JobSpec(
        job="demaster", out=out, settings=settings, processor=TrackProcessor,
        processor_kwargs={"config": config.to_dict(), "warm_up": True}, paths={"--corpus": corpus, "--out": out},
        experiment=experiment, run_name=run_name, tracking_uri=tracking_uri,
        params={"corpus": corpus, "out": out, "corpus_kind": scan.kind, **config.to_dict()["demaster"],
                "audio": config.to_dict()["audio"], "degrade": config.to_dict()["degrade"]},
        files={META_FILE: json.dumps(_dataset_meta(config), indent=2).encode()},
        outputs=OUTPUT_NAMES,
    )
    options = RunOptions(workers=dm.workers, ray=ray, address=ray_address, overwrite=overwrite, verbose=verbose,
                         progress=progress, batch=config.batch)
    return run_job(spec, items, passed_over, options, summarise=_summarise,
                   log_run=lambda summary, results: _log_run(summary, out, results, dm.variants))


def _dataset_meta(config: Config) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "audio": config.to_dict()["audio"],
        "degrade": config.to_dict()["degrade"],
        "demaster": config.to_dict()["demaster"],
        "params": [asdict(p) for p in PARAMS],
    }


def _log_run(summary: dict[str, Any], out: str, results: list[dict[str, Any]], variants: int) -> None:
    import mlflow

    from automaster.pipelines import tracking

    mlflow.log_metrics(
        {
            "tracks_ok": summary["ok"],
            "tracks_failed": summary["failed"],
            "tracks_skipped": summary["skipped"],
            "tracks_per_s": summary["tracks_per_s"],
            "seconds_per_track": summary["seconds_per_track"],
            **{f"stage_{k}_s": v for k, v in summary["stage_seconds_mean"].items()},
        }
    )
    tracking.log_json(summary["failures"], "failures.json")
    suffix = _variant_suffix(0, variants)
    for r in [r for r in results if r["status"] == "ok"][:4]:
        png = storage.join(out, PNG_DIR, f"{r['track_id']}{suffix}.png")
        if storage.exists(png):
            tracking.log_bytes_artifact(storage.read_bytes(png), png.rsplit("/", 1)[-1], "spectrograms")
