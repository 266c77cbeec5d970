"""The demaster job: a corpus of clean music -> the paired dataset, on Ray Data.

Per track, in parallel: decode (mono, 44.1 kHz, centred excerpt) -> per variant: draw
parameters seeded by ``(seed, track_id, variant)`` -> apply the chain -> mel spectrograms of both
-> write ``output_audio/``, ``output_spectrograms/``, ``output_txt/`` and, last, one Parquet file
per track under ``dataset/`` (its existence marks the track done, so a re-run resumes). A broken
track becomes a status row with its reason; the job ends with ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import traceback
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from automaster import storage
from automaster.audio import AudioError, FileError, read_excerpt, write_audio
from automaster.config import Config, from_dict
from automaster.corpus import scan_corpus
from automaster.dataset import DATASET_DIR, META_FILE, SCHEMA_VERSION, parquet_bytes, to_pcm16
from automaster.degrade import degrade, draw_params, seed_for, make_generator
from automaster.dsp.mel import mel_db_rows
from automaster.dsp.stft import HOP_LENGTH, N_FFT, stft_rows
from automaster.effects.params import PARAMS
from automaster.plots import mel_pair_png

log = logging.getLogger(__name__)

STAGES = ("decode", "effects", "mels", "png", "writes")
AUDIO_DIR, PNG_DIR, TXT_DIR = "output_audio", "output_spectrograms", "output_txt"


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


class TrackProcessor:
    """Turns one corpus row into dataset rows and files. Holds no Ray state (testable alone)."""

    def __init__(self, out: str, config: dict[str, Any] | Config, warm_up: bool = False):
        self.out = out
        self.config = config if isinstance(config, Config) else from_dict(config)
        torch.set_num_threads(1)  # one track per CPU; parallelism comes from Ray
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
            status = TrackProcessor(tmp, self.config)({"track_id": "warm_up", "path": path, "split": "", "genre": ""})
        if status["status"] != "ok":
            log.warning("demaster warm-up failed (the first track will be slower): %s", status["reason"])
        return time.perf_counter() - t

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        status: dict[str, Any] = {
            "track_id": row["track_id"],
            "path": row["path"],
            "split": row["split"],
            "status": "ok",
            "reason": "",
            "t_start": time.time(),
        }
        stages = dict.fromkeys(STAGES, 0.0)
        try:
            self._process(row, stages)
        except (AudioError, FileError) as exc:
            status.update(status="error", reason=str(exc))
        except Exception as exc:  # per-item boundary of a batch job: record, never abort the batch
            log.error("track %s failed unexpectedly:\n%s", row["track_id"], traceback.format_exc())
            status.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        status["t_end"] = time.time()
        status.update({f"stage_{k}_s": v for k, v in stages.items()})
        return status

    def _process(self, row: dict[str, Any], stages: dict[str, float]) -> None:
        cfg, dm, audio_cfg = self.config, self.config.demaster, self.config.audio
        sr, track_id, path = audio_cfg.sample_rate, row["track_id"], row["path"]

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
        x = x * input_gain
        stages["decode"] += time.perf_counter() - t

        t = time.perf_counter()
        # One frame-major STFT of the clean clip serves its mel and (at the chain's own framing)
        # the chain's EQ.
        spec_clean = stft_rows(x.numpy(), audio_cfg.n_fft, audio_cfg.hop_length)  # (1, F, bins)
        mel_clean_db = mel_db_rows(spec_clean, sr, audio_cfg.n_mels)[0]  # (n_mels, F)
        shared_spec = spec_clean if (audio_cfg.n_fft, audio_cfg.hop_length) == (N_FFT, HOP_LENGTH) else None
        wave_clean = to_pcm16(x[0].numpy())
        stages["mels"] += time.perf_counter() - t

        rows = []
        audio_dir = storage.join(self.out, AUDIO_DIR)
        clean_name = f"{track_id}_original.wav"
        for variant in range(dm.variants):
            suffix = _variant_suffix(variant, dm.variants)
            t = time.perf_counter()
            gen = make_generator(dm.seed, track_id, variant)
            n_frames = spec_clean.shape[1]
            params = draw_params(n_frames, gen, cfg.degrade, clip_rms_db=rms_db + 20 * math.log10(input_gain))
            result = degrade(x[None], sr, params, gen, cfg.degrade, stft_rows_clean=shared_spec)
            y = result.audio[0]  # (1, T)
            stages["effects"] += time.perf_counter() - t

            t = time.perf_counter()
            mel_y_db = mel_db_rows(stft_rows(y.numpy(), audio_cfg.n_fft, audio_cfg.hop_length), sr, audio_cfg.n_mels)[0]
            wave_y = to_pcm16(y[0].numpy())
            stages["mels"] += time.perf_counter() - t

            t = time.perf_counter()
            png = mel_pair_png(mel_clean_db, mel_y_db, audio_cfg.db_min, audio_cfg.db_max) if dm.write_png else None
            stages["png"] += time.perf_counter() - t

            t = time.perf_counter()
            degraded_name = f"{track_id}_degraded{suffix}.wav"
            if dm.write_audio:
                write_audio(storage.join(audio_dir, degraded_name), wave_y, sr, subtype="PCM_16")  # the int16 as they are
            if png is not None:
                storage.write_bytes_atomic(storage.join(self.out, PNG_DIR, f"{track_id}{suffix}.png"), png)
            if dm.write_txt:
                text = params_text(track_id, variant, result.params).encode()
                storage.write_bytes_atomic(storage.join(self.out, TXT_DIR, f"{track_id}{suffix}.txt"), text)
            stages["writes"] += time.perf_counter() - t

            record = {
                "track_id": track_id,
                "variant": variant,
                "split": row["split"],
                "genre": row["genre"],
                "source_path": path,
                "seed": seed_for(dm.seed, track_id, variant),
                "sample_rate": sr,
                "n_samples": int(x.shape[-1]),
                "n_mels": audio_cfg.n_mels,
                "n_frames": int(mel_clean_db.shape[-1]),
                "input_gain_db": 20.0 * math.log10(input_gain),
                "rms_db": rms_db,
                "mel_original_db": mel_clean_db,
                "mel_degraded_db": mel_y_db,
                "wave_original": wave_clean,
                "wave_degraded": wave_y,
                "audio_original": f"{AUDIO_DIR}/{clean_name}",
                "audio_degraded": f"{AUDIO_DIR}/{degraded_name}",
            }
            for spec in PARAMS:
                value = result.params[spec.name].detach().reshape(-1).cpu().numpy().astype(np.float32)
                record[spec.name] = value if spec.per_frame else float(value[0])
            rows.append(record)

        t = time.perf_counter()
        if dm.write_audio:
            write_audio(storage.join(audio_dir, clean_name), wave_clean, sr, subtype="PCM_16")
        # Written last and atomically: its presence means every output of the track is complete.
        storage.write_bytes_atomic(dataset_file(self.out, track_id), parquet_bytes(rows))
        stages["writes"] += time.perf_counter() - t


def _summarise(
    results: list[dict[str, Any]], skipped: int, missing: list[dict[str, str]], workers: int, out: str
) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    failures = [{"track_id": r["track_id"], "path": r["path"], "reason": r["reason"]} for r in failed] + missing
    span = (max(r["t_end"] for r in results) - min(r["t_start"] for r in results)) if results else 0.0
    stage_means = {s: (float(np.mean([r[f"stage_{s}_s"] for r in ok])) if ok else 0.0) for s in STAGES}
    busy = [r["t_end"] - r["t_start"] for r in ok]
    return {
        "ok": len(ok),
        "failed": len(failures),
        "skipped": skipped,
        "total": len(results) + skipped + len(missing),
        "tracks_per_s": (len(results) / span) if span > 0 else 0.0,
        "processing_s": span,
        "seconds_per_track": float(np.mean(busy)) if busy else 0.0,
        "stage_seconds_mean": stage_means,
        "workers": workers,
        "out": out,
        "failures": failures,
    }


def run_demaster(
    corpus: str,
    out: str,
    config: Config = Config(),
    *,
    tracking_uri: str | None = None,
    experiment: str = "automaster-demaster",
    run_name: str | None = None,
    ray_address: str | None = None,
    progress_every_s: float = 10.0,
) -> dict[str, Any]:
    """Run the demaster job; returns the summary (also written to ``<out>/summary.json``)."""
    import ray

    from automaster.pipelines import runtime, tracking

    dm = config.demaster
    if dm.variants < 1:
        raise ValueError(f"variants must be >= 1, got {dm.variants}")
    if dm.clip_seconds <= 0 or dm.min_seconds <= 0:
        raise ValueError("clip_seconds and min_seconds must be positive")
    scan = scan_corpus(corpus)
    tracks = scan.tracks[: dm.limit] if dm.limit else scan.tracks
    missing = [{"track_id": m[0], "path": m[1], "reason": m[2]} for m in scan.missing]
    storage.makedirs(storage.join(out, DATASET_DIR))
    todo = [t for t in tracks if not storage.exists(dataset_file(out, t.track_id))]
    skipped = len(tracks) - len(todo)
    log.info("corpus %s (%s): %d tracks, %d already done, %d to process", corpus, scan.kind, len(tracks), skipped, len(todo))
    storage.write_bytes_atomic(storage.join(out, META_FILE), json.dumps(_dataset_meta(config), indent=2).encode())

    runtime.init_ray(ray_address)
    runtime.check_paths_visible({"--corpus": corpus, "--out": out})
    workers = dm.workers or runtime.cluster_cpus()
    with tracking.start_run(experiment, run_name, tracking_uri, tags={"automaster.job": "demaster"}) as run:
        tracking.log_params({"corpus": corpus, "out": out, "corpus_kind": scan.kind, **config.to_dict()["demaster"]})
        tracking.log_params({"audio": config.to_dict()["audio"], "degrade": config.to_dict()["degrade"]})
        results: list[dict[str, Any]] = []
        if todo:
            items = [asdict(t) for t in todo]
            ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1000)).map(
                TrackProcessor,
                fn_constructor_kwargs={"out": out, "config": config.to_dict(), "warm_up": True},
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
                num_cpus=1,
            )
            last = time.time()
            for status in ds.iter_rows():
                results.append(dict(status))
                if status["status"] != "ok":
                    log.warning("track %s: %s", status["track_id"], status["reason"])
                if time.time() - last >= progress_every_s or len(results) == len(items):
                    last = time.time()
                    n_failed = sum(r["status"] != "ok" for r in results)
                    log.info("demaster: %d/%d tracks done (%d failed)", len(results), len(items), n_failed)
                    tracking_metric("progress/tracks_done", len(results), len(results))
        summary = _summarise(results, skipped, missing, workers, out)
        summary["mlflow_run_id"] = run.info.run_id
        summary["tracking_uri"] = tracking.resolve_tracking_uri(tracking_uri)
        storage.write_bytes_atomic(storage.join(out, "summary.json"), tracking.dumps(summary).encode())
        _log_run(summary, out, results, dm.variants)
    return summary


def tracking_metric(name: str, value: float, step: int) -> None:
    import mlflow

    mlflow.log_metric(name, value, step=step)


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
    tracking.log_json(summary, "summary.json")
    tracking.log_json(summary["failures"], "failures.json")
    suffix = _variant_suffix(0, variants)
    for r in [r for r in results if r["status"] == "ok"][:4]:
        png = storage.join(out, PNG_DIR, f"{r['track_id']}{suffix}.png")
        if storage.exists(png):
            tracking.log_bytes_artifact(storage.read_bytes(png), png.rsplit("/", 1)[-1], "spectrograms")
