"""The master job: audio files and folders -> mastered audio, a JSON report per file, a summary.

Every audio file of the ``--input`` values (files, or folders read recursively; WAV/FLAC/OGG/MP3/
AIFF) is mastered by :class:`MasterProcessor` (one loaded model per worker, around
:class:`automaster.mastering.Masterer`), run by the batch skeleton (:mod:`.batch`): in-process
for a handful of files, else on a Ray actor pool. Outputs mirror the inputs' names
(:mod:`.master_inputs`) under ``audio/`` and ``report/`` (each file's report as JSON), plus
``summary.json`` and ``overview.png`` (every file's loudness in and out, true peak and gain).
Per-file pictures (``spectrograms/``, ``debug/``, ``report/<file>.png``) are drawn only on
request (``pictures``): a picture nobody asked for in a batch of thousands is waste. An item's
files appear together or not at all; a re-run with the same settings resumes, with others it is
refused unless ``overwrite``. :func:`master_one` masters one file into one named file, with no
folder, no Ray and no MLflow run around it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import unicodedata
from typing import Any

import numpy as np

from automaster import storage
from automaster.audio import audio_info, read_audio, write_audio
from automaster.config import BatchConfig, ConfigError, MasterConfig
from automaster.dsp.limiter import MASTER_MAX_GAIN_DB
from automaster.effects.params import PARAM_NAMES
from automaster.mastering import STAGES, Masterer, MasteringError, parameter_stats
from automaster.mastering.masterer import load_reference
from automaster.mastering.streaming import STREAM_ABOVE_S, master_stream, streams
from automaster.mastering.report import REPORT_DIR, build_report, estimates, report_json, report_png
from automaster.pipelines.batch import JobSpec, RunOptions, excluded_outputs, run_job
from automaster.pipelines.master_inputs import (  # noqa: F401  (output_rel_path, plan_output_names: API)
    FILE_OUTPUT_EXTENSIONS, output_rel_path, plan_items, plan_output_names, read_references,
)

log = logging.getLogger(__name__)

AUDIO_DIR, PNG_DIR, PARAMS_DIR, DEBUG_DIR = "audio", "spectrograms", "parameters", "debug"
OVERVIEW = "overview.png"
EXCERPT_S = 5.0
OUTPUT_NAMES = (AUDIO_DIR, PNG_DIR, PARAMS_DIR, DEBUG_DIR, REPORT_DIR, OVERVIEW)
_GAIN_IMAGE_DB = 12.0  # debug images map a mel gain of +-12 dB onto the colour range
LEVEL_KEYS = (
    "lufs_before", "lufs_after", "true_peak_before_dbtp", "true_peak_after_dbtp", "peak_before_dbfs", "peak_after_dbfs",
    "limiter_max_reduction_db", "limiter_mean_reduction_db",
)
DC_NOTE_DBFS = -40.0  # a mean above this takes headroom the limiter must keep: worth a note
MIN_LUFS, MAX_LUFS = -70.0, 0.0


def output_names(out_rel: str, layout: str = "folder") -> dict[str, str]:
    """Where one item's outputs go, relative to the output folder: ``audio``, ``report`` (JSON)
    and, with pictures, ``report_png``, ``spectrogram``, ``debug``, ``parameters``. The folder
    layout sorts them into ``audio/``, ``report/``...; the file layout (:func:`master_one`) puts
    them beside the output file (``song.flac``, ``song.flac.report.json``...)."""
    if layout == "file":
        return {"audio": out_rel, "report": f"{out_rel}.report.json", "report_png": f"{out_rel}.report.png",
                "spectrogram": f"{out_rel}.spectrogram.png", "debug": f"{out_rel}.debug.png",
                "parameters": f"{out_rel}.parameters.json"}
    return {"audio": f"{AUDIO_DIR}/{out_rel}", "report": f"{REPORT_DIR}/{out_rel}.json",
            "report_png": f"{REPORT_DIR}/{out_rel}.png", "spectrogram": f"{PNG_DIR}/{out_rel}.png",
            "debug": f"{DEBUG_DIR}/{out_rel}.png", "parameters": f"{PARAMS_DIR}/{out_rel}.json"}


class MasterProcessor:
    """Loads the model once; masters one item (file) per :meth:`process` call.

    Args:
        model: checkpoint directory or ``model.pt``.
        config: the mastering settings.
        device: ``cpu`` or ``cuda``.
        pictures: draw each file's pictures (report figure, spectrograms, debug) too.
    """

    def __init__(self, model: str, config: MasterConfig, device: str = "cpu", pictures: bool = False,
                 stream_above_s: float = STREAM_ABOVE_S):
        import torch

        if device == "cpu":
            torch.set_num_threads(1)  # one file per CPU; parallelism comes from the job's workers
        self.masterer = Masterer(model, config=config, device=device)
        self.pictures, self.stream_above_s = pictures, stream_above_s
        self._references: dict[str, Any] = {}

    @classmethod
    def of(cls, masterer: Masterer, pictures: bool = False, stream_above_s: float = STREAM_ABOVE_S) -> "MasterProcessor":
        """A processor around an already loaded :class:`Masterer`."""
        processor = cls.__new__(cls)
        processor.masterer, processor.pictures, processor._references = masterer, pictures, {}
        processor.stream_above_s = stream_above_s
        return processor

    def _reference(self, path: str | None):
        """A per-file reference's tone profile (read once per worker), or None for the job's own."""
        if path is None:
            return None
        if path not in self._references:
            from automaster.audio import FileError

            try:
                self._references[path] = load_reference(path)
            except MasteringError as exc:  # that file's reference: that file fails, the job goes on
                raise FileError(str(exc)) from None
        return self._references[path]

    def process(self, item: dict[str, Any], staging: Any) -> dict[str, Any]:
        """Master ``item["path"]`` into ``staging``; returns levels, notes and timings.

        The item names its outputs by ``out_rel`` and ``layout`` (:func:`output_names`) and may
        carry its own ``reference``. The figures are flat (levels, ``stage_*_s``) plus ``notes``
        (a list of sentences).
        """
        stages = dict.fromkeys(STAGES, 0.0)
        names = output_names(item["out_rel"], item.get("layout", "folder"))
        t = time.perf_counter()
        info = audio_info(item["path"])
        reference = self._reference(item.get("reference"))
        m = self.masterer
        if streams(m, info.duration_s, reference, self.pictures, self.stream_above_s):
            return self._process_stream(item, staging, names, info, stages)
        audio, sr = read_audio(item["path"])
        stages["decode"] += time.perf_counter() - t
        mastered, levels = m.master_audio(audio, sr, images=self.pictures, stages=stages, reference=reference)
        finished = levels.pop("finish")
        arrays = levels.pop("arrays", None)

        t = time.perf_counter()
        write_audio(staging.path(names["audio"]), mastered, sr, subtype="PCM_24")
        stats = None
        if arrays is not None and "params_norm" in arrays:
            stats = parameter_stats(arrays["params_norm"], m.chain_policy())
        settings = item.get("settings") or m.settings()
        if reference is not None:
            settings = {**settings, "reference": item["reference"]}
        report = build_report(item["out_rel"], audio, mastered, sr, finished, estimates(levels, stats),
                              reference or m.reference, settings, curves=self.pictures, levels=levels)
        if item.get("fingerprint"):
            report["input"] = item["fingerprint"]
        write_bytes(staging.path(names["report"]), report_json(report))
        if arrays is not None:
            write_bytes(staging.path(names["report_png"]), report_png(report))
            for kind, png in images(m.audio_cfg, arrays).items():
                write_bytes(staging.path(names[kind]), png)
            if stats is not None:
                write_bytes(staging.path(names["parameters"]), json.dumps(stats, indent=2).encode())
        stages["writes"] += time.perf_counter() - t
        return {
            **levels, "output": names["audio"], "sample_rate": sr, "channels": int(audio.shape[0]),
            "duration_s": audio.shape[1] / sr, "input_format": f"{info.format}/{info.subtype}",
            "notes": level_notes(dc_dbfs(audio), levels, levels["target_lufs"]),
            **{f"stage_{k}_s": v for k, v in stages.items()},
        }

    def _process_stream(self, item: dict[str, Any], staging: Any, names: dict[str, str], info, stages: dict[str, float]
                        ) -> dict[str, Any]:
        """:meth:`process` for a long file, a block at a time (:mod:`automaster.mastering.streaming`)."""
        m = self.masterer
        levels, extra = master_stream(m, item["path"], staging.path(names["audio"]), subtype="PCM_24", stages=stages)
        finished = levels.pop("finish")
        t = time.perf_counter()
        sr, channels, frames = extra["sample_rate"], extra["channels"], extra["frames"]
        report = build_report(item["out_rel"], None, None, sr, finished, estimates(levels, None), None,
                              item.get("settings") or m.settings(), curves=False, levels=levels,
                              widths=(extra["width_in_db"], extra["width_out_db"]), shape=(channels, frames))
        report["streamed"] = True
        if item.get("fingerprint"):
            report["input"] = item["fingerprint"]
        write_bytes(staging.path(names["report"]), report_json(report))
        stages["writes"] += time.perf_counter() - t
        return {
            **levels, "output": names["audio"], "sample_rate": sr, "channels": channels, "duration_s": frames / sr,
            "input_format": f"{info.format}/{info.subtype}", "notes": level_notes(extra["dc_dbfs"], levels, levels["target_lufs"]),
            **{f"stage_{k}_s": v for k, v in stages.items()},
        }


def write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def images(audio_cfg, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """PNGs by kind: ``spectrogram`` (input | output mel) and ``debug`` (restored mel | mel gain |
    parameter trajectories, whichever the model has)."""
    from automaster.plots import mel_strip_png

    a = audio_cfg
    labels = {"frame_s": a.hop_length / a.sample_rate, "sample_rate": a.sample_rate}
    png = mel_strip_png([arrays["mel_input_db"], arrays["mel_output_db"]], a.db_min, a.db_max,
                        titles=["input", "output (mastered)"], **labels)  # fmt: skip
    tiles, titles = [], []
    span = a.db_max - a.db_min
    if "gain_db" in arrays:
        tiles.append(arrays["mel_model_db"] + arrays["gain_db"])  # the restored mel (mono view)
        g = np.clip(arrays["gain_db"], -_GAIN_IMAGE_DB, _GAIN_IMAGE_DB)
        tiles.append(a.db_min + (g + _GAIN_IMAGE_DB) / (2 * _GAIN_IMAGE_DB) * span)
        titles += ["restored mel (model's view, dB)", f"model gain: -{_GAIN_IMAGE_DB:g} .. +{_GAIN_IMAGE_DB:g} dB over the colour bar"]
    if "params_norm" in arrays:
        p = arrays["params_norm"]  # (P, F) in [0, 1]: one stripe per parameter, table order top-down
        rows = np.minimum(np.arange(a.n_mels) * p.shape[0] // a.n_mels, p.shape[0] - 1)
        tiles.append(a.db_min + p[rows][::-1] * span)
        titles.append("effect parameters over time (normalised to their ranges)")
        if "gain_db" not in arrays:  # the parameters alone: their names for an axis, 0..1 for the bar
            labels.update(rows=list(PARAM_NAMES), bar=(0.0, 1.0, "0 .. 1"))
    if not tiles:  # nothing the model did to show (a neutral chain): no debug picture
        return {"spectrogram": png}
    return {"spectrogram": png, "debug": mel_strip_png(tiles, a.db_min, a.db_max, titles=titles, **labels)}


def master_file(masterer: Masterer, path: str, out_root: str, rel_path: str, out_rel: str | None = None,
                pictures: bool = True) -> dict[str, Any]:
    """Master one file into ``out_root`` through the jobs' per-item path (staged outputs, record),
    without a job around it (no manifest, lock or MLflow run); returns its status dict
    (``status``, ``reason``, levels, ``output``, ...), never raises for a bad file."""
    from automaster.pipelines.outfolder import OutputFolder
    from automaster.pipelines.runners import run_item

    out_rel = out_rel or output_rel_path(rel_path)
    item = {"key": out_rel, "path": str(path), "rel_path": rel_path, "out_rel": out_rel}
    return run_item(MasterProcessor.of(masterer, pictures=pictures), item, OutputFolder(out_root))


def dc_dbfs(audio: np.ndarray) -> float | None:
    """The largest channel mean of ``(C, T)`` audio in dBFS (None: none)."""
    dc = float(np.max(np.abs(np.mean(audio, axis=1, dtype=np.float64))))
    return 20 * math.log10(dc) if dc > 0 else None


def level_notes(dc: float | None, levels: dict[str, Any], target_lufs: float | None) -> list[str]:
    """Sentences about a file's levels a user should read: a DC offset (``dc``: the input's
    :func:`dc_dbfs`), a refused gain, silence."""
    notes = [levels["loudness_note"]] if levels.get("loudness_note") else []
    if dc is not None and dc > DC_NOTE_DBFS:
        notes.append(f"DC offset of {dc:.1f} dBFS in the input: it takes headroom from the "
                     "limiter, so the loudness may fall short of the target")
    peak_db = levels.get("peak_before_dbfs")  # measured already, without a copy of the audio
    if peak_db is not None and peak_db > 0.0:  # a floating-point file above full scale: what was done about it
        gain = levels.get("headroom_gain_db")
        notes.append(f"the input peaks at {peak_db:+.1f} dBFS, above full scale (a floating-point file); "
                     + (f"it was turned down {abs(gain):.1f} dB first, " if gain else "it was brought under full scale, ")
                     + "so nothing was clipped")
    before = levels.get("lufs_before")
    if target_lufs is not None and before is not None and target_lufs - before > MASTER_MAX_GAIN_DB:
        notes.append(f"the target {target_lufs:g} LUFS needs {target_lufs - before:+.1f} dB from {before:.1f} LUFS; "
                     f"gain limited to +{MASTER_MAX_GAIN_DB:g} dB (more would mostly drive the limiter)")
    return notes


# One worker's peak memory (BENCHMARKS.md "Mastering at peer speed"): the process, the model and
# the chunked analysis, plus the input and the output held whole (float32) and their transients.
WORKER_BASE_BYTES = 600 * 2**20
WORKER_BYTES_PER_SAMPLE = 12  # per sample per channel: 30 s stereo ~30 MB, 10 min stereo ~600 MB


def worker_memory_bytes(items: list[dict[str, Any]], channels: int = 2, stream_above_s: float | None = None) -> float:
    """What one master worker may need at its peak, for the longest of ``items`` (an unreadable
    length counts as 10 minutes): the default worker count respects it as well as the CPUs.
    With ``stream_above_s`` (the job's files may be mastered a block at a time,
    :func:`automaster.mastering.streaming.streams`), a longer file without a reference of its
    own counts as that long: its memory does not grow past it."""
    def seconds(item: dict[str, Any]) -> float:
        length = item.get("duration_s") or 600.0
        return min(length, stream_above_s) if stream_above_s is not None and not item.get("reference") else length

    longest = max(map(seconds, items), default=600.0)
    return WORKER_BASE_BYTES + WORKER_BYTES_PER_SAMPLE * channels * 48000 * longest


def check_levels(target_lufs: float | None, true_peak_dbtp: float | None) -> None:
    """Refuse level targets outside what any master could be (exit 2 on the command line)."""
    if target_lufs is not None and not (MIN_LUFS <= target_lufs <= MAX_LUFS):
        raise ConfigError(f"--target-lufs {target_lufs:g}: must be between {MIN_LUFS:g} and {MAX_LUFS:g} LUFS")
    if true_peak_dbtp is not None and not (true_peak_dbtp <= 0.0):
        raise ConfigError(f"--true-peak {true_peak_dbtp:g}: must be <= 0 dBTP (a ceiling above full scale clips)")


def model_file(model: str) -> str:
    """The weights file of a checkpoint directory or ``.pt`` (hashed into the manifest)."""
    from automaster.model.checkpoint import checkpoint_paths

    return str(checkpoint_paths(model)[0])


# ------------------------------------------------------------------------------- the job


def run_master(
    model: str,
    inputs: str | list[str],
    out: str,
    *,
    config: MasterConfig | None = None,
    references: str | None = None,
    pictures: bool = False,
    workers: int = 0,
    gpu: bool = False,
    overwrite: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "automaster-master",
    run_name: str | None = None,
    ray_address: str | None = None,
    ray: bool | None = None,
    verbose: bool = False,
    progress: bool = True,
    batch: BatchConfig = BatchConfig(),
    **overrides: Any,
) -> dict[str, Any]:
    """Master every audio file of ``inputs`` (files and folders) into the folder ``out``;
    returns the summary (also in ``<out>/summary.json``). ``config`` (with ``overrides``:
    :class:`MasterConfig` fields) says how to master; ``references`` is a CSV of
    ``input,reference`` pairs that replaces ``inputs`` (each file toward its own reference);
    ``pictures`` draws each file's pictures; ``ray`` forces Ray or an in-process run (None: by
    the file count).

    Raises:
        ConfigError: out-of-range levels or workers, no audio, a bad references CSV, an unusable
            or busy ``out``, or ``out`` holding outputs of other settings (without ``overwrite``).
        MasteringError: the model cannot do the inversion, bad settings, or ``gpu`` without a GPU.
        automaster.model.checkpoint.CheckpointError: the model cannot be loaded.
        FileNotFoundError: an input that does not exist.
    """
    # Fail before any file (and before Ray) when the settings or the checkpoint cannot work.
    probe = Masterer(model, config=config, **overrides)
    config, settings = probe.cfg, probe.settings()
    long_files_stream = streams(probe, math.inf, None, pictures)  # files past STREAM_ABOVE_S go a block at a time
    del probe
    check_levels(config.target_lufs, config.true_peak_dbtp)
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    pairs = read_references(references) if references else None
    if pairs is not None:
        if config.reference:
            raise ConfigError("--references gives each file its own reference: drop --reference")
        inputs = [path for path, _ in pairs]
    if not inputs:
        raise ConfigError("no --input given")
    exclude = tuple(e for i in inputs if storage.is_dir(i) for e in excluded_outputs(i, out, OUTPUT_NAMES))
    items, passed_over, collisions = plan_items(inputs, exclude, dict(pairs) if pairs else None, AUDIO_DIR)
    if not items:
        raise ConfigError(f"--input {', '.join(map(storage.display, inputs))}: no audio files (WAV/FLAC/OGG/MP3/AIFF)")
    device = "cuda" if gpu else "cpu"
    for item in items:  # a file's own reference decides its output: fingerprinted with it (a changed one redoes that file)
        if item.get("reference"):
            item["extra_inputs"] = [item["reference"]]
    settings["pictures"] = bool(pictures)
    spec = JobSpec(
        job="master", out=out, settings={k: v for k, v in settings.items() if k != "model"}, processor=MasterProcessor,
        processor_kwargs={"model": model, "config": config, "device": device, "pictures": pictures},
        paths={"--model": model, "--out": out, "--reference": config.reference, "--references": references,
               **{f"--input {n + 1}" if len(inputs) > 1 else "--input": i for n, i in enumerate(inputs[:20])}},
        outputs=OUTPUT_NAMES, model=model_file(model), device=device, inputs=inputs, worker_memory_bytes=worker_memory_bytes(items, stream_above_s=STREAM_ABOVE_S if long_files_stream else None),
        experiment=experiment, run_name=run_name, tracking_uri=tracking_uri,
        params={"input": inputs[0] if len(inputs) == 1 else f"{len(inputs)} inputs", "out": out, "gpu": gpu,
                "overwrite": overwrite, **settings},
    )
    run = RunOptions(workers=workers, ray=ray, address=ray_address, overwrite=overwrite, verbose=verbose,
                     progress=progress, batch=batch)
    try:
        return run_job(spec, items, passed_over, run, summarise=lambda summary, results: _summarise(summary, results, out),
                       collisions=collisions, log_run=lambda summary, results: _log_run(summary, out, results))
    except ConfigError as exc:
        if "GPU" in str(exc):
            raise MasteringError(str(exc)) from None
        raise


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _summarise(summary: dict[str, Any], results: list[dict[str, Any]], out: str) -> None:
    """The master figures on top of the skeleton's summary (levels, echo, stage times), and the
    job's overview picture (``overview.png``: every file's levels)."""
    ok = [r for r in results if r["status"] == "ok"]
    summary["files_per_s"] = summary["items_per_s"]
    summary["seconds_per_file"] = _mean([r["seconds"] for r in ok]) or 0.0
    summary["audio_seconds_ok"] = float(sum(r.get("duration_s") or 0.0 for r in ok))
    summary["echo_removed"] = sum(bool(r.get("echo_removed")) for r in ok)
    summary["stage_seconds_mean"] = {s: (_mean([r.get(f"stage_{s}_s") for r in ok]) or 0.0) for s in STAGES}
    summary["levels_mean"] = {k: _mean([r.get(k) for r in ok]) for k in LEVEL_KEYS}
    summary["notes"] = {r["rel_path"]: r["notes"] for r in ok if r.get("notes")}
    rows = [f for f in summary["files"] if f["status"] in ("ok", "skipped")]
    if rows:
        from automaster.mastering.overview import overview_png

        try:
            storage.write_bytes_atomic(storage.join(out, OVERVIEW), overview_png(rows))
            summary["overview"] = storage.join(out, OVERVIEW)
        except Exception as exc:  # a picture must never fail a finished job
            log.warning("overview picture not drawn: %s", exc)


def summary_table(summary: dict[str, Any], limit: int = 20) -> str:
    """The processed files as a text table: LUFS in -> out, true peak out, what was applied by
    which stage (:func:`automaster.mastering.finishing.levels_info`'s ``applied``, then its
    ``loudness_note`` when the loudness stage did nothing: why a near-silent file kept its level)."""
    rows = [f for f in summary["files"] if f["status"] in ("ok", "skipped")][:limit]
    if not rows:
        return ""
    width = min(max(columns(storage.display_name(f["rel_path"])) for f in rows), 48)
    lines = [f"  {'file':<{width}}  {'LUFS in -> out':>16}  {'dBTP':>6}  applied"]
    for f in rows:
        lufs = f"{_fmt(f.get('lufs_before'))} -> {_fmt(f.get('lufs_after'))}"
        note = f.get("loudness_note") or ""  # the soft clipper's note is long, and "applied" says it
        applied = ", ".join(a for a in (f.get("applied") or "", note if note.startswith(("refused", "silent")) else "") if a)
        lines.append(f"  {padded(storage.display_name(f['rel_path']), width)}  {lufs:>16}  {_fmt(f.get('true_peak_after_dbtp')):>6}"
                     f"  {applied or '-'}")
    return "\n".join(lines)


def columns(text: str) -> int:
    """The terminal columns ``text`` takes: a combining accent none, a wide (CJK) character two."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def padded(text: str, width: int) -> str:
    """``text`` cut or padded to ``width`` terminal columns (:func:`columns`), for a table's column."""
    out, used = "", 0
    for c in text:
        w = columns(c)
        if used + w > width:
            break
        out, used = out + c, used + w
    return out + " " * (width - used)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _log_run(summary: dict[str, Any], out: str, results: list[dict[str, Any]]) -> None:
    import mlflow

    from automaster.pipelines import tracking

    metrics = {
        "files_ok": summary["ok"], "files_failed": summary["failed"], "files_skipped": summary["skipped"],
        "files_passed_over": summary["passed_over"], "files_per_s": summary["files_per_s"],
        "files_echo_removed": summary["echo_removed"], "seconds_per_file": summary["seconds_per_file"],
        "audio_seconds_ok": summary["audio_seconds_ok"],
        **{f"stage_{k}_s": v for k, v in summary["stage_seconds_mean"].items()},
        **{f"mean_{k}": v for k, v in summary["levels_mean"].items() if v is not None},
    }
    mlflow.log_metrics(metrics)
    ok = sorted((r for r in results if r["status"] == "ok"), key=lambda r: r["rel_path"])
    # Per-file levels and timing, one step per file (sorted by name), in batches: one store
    # write per thousand values, not one per file.
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    per_file = [Metric(f"file/{k}", float(r[k]), stamp, step) for step, r in enumerate(ok)
                for k in (*LEVEL_KEYS, "seconds", "headroom_gain_db") if r.get(k) is not None]
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    for i in range(0, len(per_file), 1000):
        client.log_batch(run_id, metrics=per_file[i : i + 1000])
    if summary.get("overview") and storage.exists(summary["overview"]):
        tracking.log_bytes_artifact(storage.read_bytes(summary["overview"]), OVERVIEW)
    for r in ok[:4]:
        png = storage.join(out, PNG_DIR, r["output"][len(AUDIO_DIR) + 1 :] + ".png")
        if storage.exists(png):
            tracking.log_bytes_artifact(storage.read_bytes(png), _flat_name(r["rel_path"]) + ".png", "spectrograms")
    for r in ok[:2]:
        _log_excerpt(storage.join(out, r["output"]), _flat_name(r["rel_path"]))


def _flat_name(rel: str) -> str:
    return storage.display(rel).replace("/", "__").replace("\ufffd", "_")


def _log_excerpt(path: str, name: str) -> None:
    """The first :data:`EXCERPT_S` seconds of an output as a WAV artifact under ``audio/``."""
    import mlflow

    try:
        audio, sr = read_audio(path, duration_s=EXCERPT_S)
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, f"{name}.excerpt.wav")
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            write_audio(target, audio / max(peak, 1.0), sr, subtype="PCM_16")  # Vorbis decodes may exceed 1
            mlflow.log_artifact(target, "audio")
    except Exception as exc:  # an excerpt must never fail a finished job
        log.warning("audio excerpt of %s not logged: %s", storage.display(path), exc)
