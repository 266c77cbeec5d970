"""Configuration: frozen dataclasses per concern, a TOML/YAML file, and ``--set a.b=c`` overrides.

Every section has defaults that run on a laptop. Unknown keys are errors (a typo must not be
silently ignored). ``Config.to_dict()`` / ``flat_dict()`` go to Ray and MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automaster.dsp.constants import DB_MAX, DB_MIN, HOP_LENGTH, MODEL_RATE, N_FFT, N_MELS


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, bad value)."""


@dataclass(frozen=True)
class AudioConfig:
    """Analysis settings shared by the dataset, the model and mastering."""

    sample_rate: int = MODEL_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    # "fixed": a fixed dB range -> [0, 1] (keeps absolute level); "minmax": per-clip (thesis).
    normalization: str = "fixed"
    db_min: float = DB_MIN
    db_max: float = DB_MAX


@dataclass(frozen=True)
class DegradeConfig:
    """How demastering draws its parameters (ranges come from the ParamSpec table)."""

    # Relative size of the slow wobble of per-frame trajectories around their base value.
    trajectory_wobble: float = 0.25
    # Control points of the smooth per-frame trajectories over a clip.
    trajectory_points: int = 4
    # Peak ceiling (linear) after the chain; above it a headroom gain is applied and recorded.
    peak_ceiling: float = 0.999


@dataclass(frozen=True)
class DemasterConfig:
    """The demaster job."""

    seed: int = 0
    variants: int = 1
    clip_seconds: float = 30.0
    min_seconds: float = 3.0
    # Silence threshold: a clip whose RMS is below this (dBFS) is rejected as silent.
    silence_db: float = -70.0
    limit: int = 0
    workers: int = 0  # 0: one per CPU of the cluster
    write_audio: bool = True
    write_png: bool = True
    write_txt: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """The model: the thesis's U-Net + LSTM cascade, or the spectral restorer.

    ``spectral``: a network over the log-magnitude STFT predicting a bounded gain per STFT bin
    and frame (applied to the input's STFT, its phase kept) and one level gain per clip
    (:mod:`automaster.model.spectral`).
    """

    mode: str = "cascade"  # restore | params | cascade (thesis) | spectral
    unet_depth: int = 4
    unet_width: int = 24
    lstm_hidden: int = 128
    lstm_layers: int = 2
    dropout: float = 0.0
    # Spectral mode: base channels, frequency downsamplings after the stem, frequency stride of
    # the stem (1024 bins -> 1024 / stride bands), and the bounds of its two outputs.
    spectral_width: int = 8
    spectral_depth: int = 3
    spectral_stem_stride: int = 4
    max_gain_db: float = 12.0
    max_level_db: float = 24.0


@dataclass(frozen=True)
class LossConfig:
    """Loss weights, keyed like the logged metrics (``train/mel_l1`` <- ``mel_l1``)."""

    mel_l1: float = 1.0  # lambda1
    params: float = 1.0  # lambda2
    perceptual: float = 0.1  # lambda3
    huber_delta: float = 0.1
    # Spectral mode (waveform losses through the iSTFT, and the level head's error in dB).
    mrstft: float = 1.0
    wave_l1: float = 10.0
    si_sdr: float = 0.0
    level_db: float = 0.05
    # Compute (and log) terms whose weight is 0; false skips them (with perceptual = 0 that saves
    # the inverse chain on every batch).
    log_zero_terms: bool = True


# The effects of the demastering chain that can be drawn alone (automaster.effects.params; the
# headroom gain always applies).
DAMAGE_EFFECTS = ("eq", "compressor", "reverb", "echo")
# The restore preset's level gain is capped where the true-peak limiter would cut peaks by more than
# this (dB): chosen on fma_mini's validation split among 0, 0.5, 1, 2 and no bound (BENCHMARKS.md,
# "Attribution of every stage": the best mean MR-STFT; limiting costs SI-SDR, a static gain does not).
MAX_LIMITING_DB = 1.0
MIN_REFERENCE_S = 0.4  # one BS.1770 loudness block: a shorter reference has no loudness to match
MAX_REFERENCE_LUFS = 0.0  # a reference louder than this is no master (as loud as --target-lufs may be)


def parse_effects(text: str) -> tuple[str, ...]:
    """``"reverb, compressor"`` -> ``("compressor", "reverb")`` in chain order; ``""``/``"all"``: every effect.

    Raises:
        ValueError: an unknown name, or none.
    """
    if text.strip().lower() in ("", "all"):
        return DAMAGE_EFFECTS
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DAMAGE_EFFECTS))
    if unknown or not names:
        raise ValueError(f"expected a comma-separated subset of {', '.join(DAMAGE_EFFECTS)} (or all), got {text!r}")
    return tuple(e for e in DAMAGE_EFFECTS if e in names)


@dataclass(frozen=True)
class TrainConfig:
    """Training loop and Ray Train scaling."""

    epochs: int = 10
    batch_size: int = 8
    crop_frames: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_patience: int = 2
    lr_factor: float = 0.5
    workers: int = 1
    use_gpu: bool = False
    keep_checkpoints: int = 2
    seed: int = 0
    # Rows fetched from the dataset at a time, and random crops drawn from each per epoch.
    rows_per_batch: int = 4
    crops_per_track: int = 4
    cpus_per_worker: float = 1.0
    # "auto": val/mel_l1_db, which does not depend on the loss weights.
    monitor: str = "auto"
    max_failures: int = 1
    # Validate on at most this many full-length rows, spread evenly over the split (0: all).
    val_rows: int = 0
    # Testing aid: the last worker raises once after this epoch (-1: never).
    fail_at_epoch: int = -1
    # Ray-free core (automaster.training): total optimiser steps (0: train.epochs epochs),
    # steps per epoch of fresh damage, validation every val_every steps (0: every epoch).
    steps: int = 0
    steps_per_epoch: int = 200
    val_every: int = 0
    # "plateau" (ReduceLROnPlateau on the monitor) or "cosine" (to lr * lr_min_factor, with warmup).
    schedule: str = "plateau"
    warmup_steps: int = 0
    lr_min_factor: float = 0.05
    # "fresh": new damage every step from clean audio; "pairs": crops of the demaster dataset's
    # fixed pairs (the thesis's training data, --data only); "auto": fresh for the spectral
    # restorer or clean audio, pairs for the thesis cascade on a demaster dataset.
    source: str = "auto"
    # Fresh damage: crop length in seconds (overrides crop_frames), the share of each parameter's
    # normalised range drawn around its neutral value (1: the thesis distribution), the clean
    # seconds kept in memory per track (0: all), and held-out validation crops (--audio).
    crop_seconds: float = 0.0
    damage_scale: float = 1.0
    # Fresh damage by these effects only, comma-separated (eq, compressor, reverb, echo; the rest
    # neutral, the headroom gain as always); "" or "all": the whole chain. Validation is damaged
    # the same way, so a model is measured on the damage it learns to undo.
    damage_effects: str = ""
    max_track_seconds: float = 0.0
    val_crops: int = 32
    val_crop_seconds: float = 10.0
    # Ray-free core: stop after this many minutes of training (validate and checkpoint there, as
    # at the last step; a later run with the same --out resumes); 0: no limit. For a GPU lent by
    # the minute.
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        try:
            parse_effects(self.damage_effects)
        except ValueError as exc:
            raise ConfigError(f"train.damage_effects: {exc}") from None
        if self.max_minutes < 0:
            raise ConfigError(f"train.max_minutes must be >= 0, got {self.max_minutes}")


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune search over the loss weights and the learning rate.

    Each searched value is drawn log-uniformly from ``[<name>_min, <name>_max]``; equal bounds
    fix it (λ1 = ``loss.mel_l1`` is fixed at 1 by default: only the ratios of the λs matter much).
    """

    samples: int = 8
    epochs: int = 0  # 0: train.epochs
    workers_per_trial: int = 1
    max_concurrent: int = 0  # 0: as many trials as the cluster's CPUs hold
    mel_l1_min: float = 1.0  # lambda1 (loss.mel_l1)
    mel_l1_max: float = 1.0
    params_min: float = 0.1  # lambda2 (loss.params)
    params_max: float = 10.0
    perceptual_min: float = 0.1  # lambda3 (loss.perceptual)
    perceptual_max: float = 10.0
    lr_min: float = 1e-4  # train.lr
    lr_max: float = 3e-3
    # ASHA: every trial runs at least grace_period epochs; a rung keeps the best 1/reduction_factor.
    grace_period: int = 1
    reduction_factor: int = 2
    seed: int = 0


INVERSIONS = ("chain", "mask", "griffinlim")  # how the model's output becomes audio (automaster.mastering)


# Delivery levels of `automaster master --preset` (automaster.mastering.presets resolves them).
@dataclass(frozen=True)
class Preset:
    """A delivery level: ``target_lufs`` (None: keep the restored level) and ``ceiling_dbtp`` (None: none)."""

    name: str
    target_lufs: float | None
    ceiling_dbtp: float | None
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("restore", None, -1.0, "the level of the restored master (the model's estimate when it has one)"),
        Preset("streaming", -14.0, -1.0, "Spotify, YouTube, Tidal, Amazon: -14 LUFS"),
        Preset("apple", -16.0, -1.0, "Apple Music (Sound Check): -16 LUFS"),
        Preset("club", -9.0, -2.0, "loud masters; -2 dBTP as Spotify asks above -14 LUFS"),
        Preset("broadcast", -23.0, -1.0, "EBU R128 broadcast: -23 LUFS"),
        Preset("none", None, None, "no loudness stage and no limiter (nothing above 0 dBFS is written)"),
    )
}
DEFAULT_PRESET = "restore"


@dataclass(frozen=True)
class MasterConfig:
    """How a :class:`automaster.mastering.Masterer` masters (the master and evaluate jobs).

    ``iterations``, ``momentum``, ``init_phase`` and ``seed`` are Griffin-Lim's (random phase
    seeded: the same file gives the same output). The stages after restoration
    (:mod:`automaster.mastering.finishing`): ``reference`` (an audio file whose tone, width and
    loudness to match; None: none) with ``max_eq_db`` bounding its EQ (dB, either way, mid and
    side), ``amount`` (0..1: blend of input and result before the loudness stage), ``preset``
    (:data:`automaster.mastering.presets.PRESETS`; None: ``restore``,
    or the reference's loudness when there is one) with ``target_lufs``/``true_peak_dbtp``
    overriding its loudness and ceiling. ``chunk_s``/``context_s`` bound memory on long
    tracks; ``max_gain_db`` bounds the mask's gain per bin (a safety net for untrained models).
    ``echo_removal`` measures the strongest echo from the audio's cepstrum and undoes it when its
    gain is at least ``min_echo_gain``. ``max_forecast_error``: the chain applies a forecast
    parameter only when its validation MAE is at most this share of the predict-the-mean
    baseline's (None: every forecast). ``level_model``: a checkpoint with a level head (the
    spectral restorer's) that estimates the original master's loudness for the ``restore`` preset
    when the restoration model has no level head of its own (None: keep the restored level).
    ``max_limiting_db``: that level gain is capped where the true-peak limiter would cut peaks by
    more than this (None: no cap; :func:`automaster.mastering.finishing.level_gain_bound_db`).
    """

    inversion: str = "chain"
    iterations: int = 32
    init_phase: bool = False
    momentum: float = 0.99
    seed: int = 0
    preset: str | None = None
    target_lufs: float | None = None
    true_peak_dbtp: float | None = None
    amount: float = 1.0
    reference: str | None = None
    max_eq_db: float = 6.0
    chunk_s: float = 30.0
    context_s: float = 2.0
    max_gain_db: float = 24.0
    echo_removal: bool = True
    min_echo_gain: float = 0.15
    max_forecast_error: float | None = 0.8
    level_model: str | None = None
    max_limiting_db: float | None = MAX_LIMITING_DB

    def __post_init__(self) -> None:
        if self.inversion not in INVERSIONS:
            raise ConfigError(f"inversion must be one of {', '.join(INVERSIONS)}, got {self.inversion!r}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if not (0.0 <= self.amount <= 1.0):
            raise ConfigError(f"amount must be in [0, 1], got {self.amount}")
        if self.max_limiting_db is not None and not self.max_limiting_db >= 0:  # NaN included
            raise ConfigError(f"max_limiting_db must be >= 0 (or None), got {self.max_limiting_db}")
        if not (math.isfinite(self.max_eq_db) and self.max_eq_db > 0):
            raise ConfigError(f"--max-eq-db {self.max_eq_db:g}: must be a finite number of dB > 0")
        if self.max_forecast_error is not None and not self.max_forecast_error >= 0:  # NaN included
            raise ConfigError(f"max_forecast_error must be >= 0 (or inf), got {self.max_forecast_error}")
        if not (self.chunk_s > 0 and self.context_s > 0 and self.chunk_s >= 4 * self.context_s):
            raise ConfigError(
                f"need chunk_s >= 4 * context_s > 0, got chunk_s={self.chunk_s}, context_s={self.context_s}"
            )


DEGRADERS = ("ours", "pedalboard")  # who damages the clean clips an evaluation restores
GIVEN = "given"  # the degrader recorded when the damaged files are given (--degraded)


@dataclass(frozen=True)
class EvalConfig:
    """The evaluate job: which excerpts, how they are damaged, and which inversions run.

    ``seed`` (with each track id) seeds the damage; ``degrader``: ``ours``, ``pedalboard`` or
    ``given`` (damaged files at the clean files' relative paths). Excerpts of ``clip_seconds``
    are centred; shorter files than ``min_seconds`` and clips quieter than ``silence_db`` (RMS,
    dBFS) are recorded as failures. ``inversions``: empty for every one the model can do.
    ``effects``: the effects of our degrader that damage (:data:`DAMAGE_EFFECTS`, chain order);
    the others take their neutral values from the same draw (:func:`automaster.degrade.only_effects`).
    """

    seed: int = 1
    degrader: str = "ours"
    clip_seconds: float = 30.0
    mono: bool = False
    peak_ceiling: float = 0.999
    min_seconds: float = 1.0
    silence_db: float = -70.0
    inversions: tuple[str, ...] = ()
    effects: tuple[str, ...] = DAMAGE_EFFECTS

    def __post_init__(self) -> None:
        if self.degrader not in (*DEGRADERS, GIVEN):
            raise ConfigError(f"degrader must be one of {', '.join(DEGRADERS)}, got {self.degrader!r}")
        if not (self.clip_seconds >= self.min_seconds > 0):
            raise ConfigError(f"clip_seconds must be >= {self.min_seconds:g}, got {self.clip_seconds}")
        unknown = [i for i in self.inversions if i not in INVERSIONS]
        if unknown:
            raise ConfigError(f"unknown inversion(s) {', '.join(unknown)}; choose from {', '.join(INVERSIONS)}")
        if not self.effects or set(self.effects) - set(DAMAGE_EFFECTS):
            raise ConfigError(f"effects: expected a comma-separated subset of {', '.join(DAMAGE_EFFECTS)} (or all), "
                              f"got {','.join(self.effects)!r}")
        if set(self.effects) != set(DAMAGE_EFFECTS) and self.degrader != "ours":
            raise ConfigError(f"--effects restricts our degrader's damage; the {self.degrader!r} degrader has its own")


@dataclass(frozen=True)
class BatchConfig:
    """How the batch jobs (demaster, master, evaluate) run their items."""

    # A job with at most this many items to do and no cluster address runs in-process, without
    # starting Ray (Ray's start-up costs more than a handful of files).
    local_max_items: int = 4
    # Each item may take base + per_audio_s x its audio seconds; then its worker is stopped.
    item_timeout_base_s: float = 120.0
    item_timeout_per_audio_s: float = 10.0
    # Attempts per item when its worker process dies (a crash in a decoder, out of memory).
    max_attempts: int = 2


@dataclass(frozen=True)
class Config:
    """Everything, one section per concern."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    demaster: DemasterConfig = field(default_factory=DemasterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_dict(self) -> dict[str, Any]:
        """``{"train.lr": 0.001, ...}``: one level, for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert ``value`` (from TOML/YAML/JSON or a ``--set`` string) to the field type ``typ``."""
    if typ in (int, float, bool, str) and isinstance(value, str):
        try:
            if typ is bool:
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            value = typ(value)  # rebound only on success: the error below names the text given
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value):  # every comparison with NaN is false: it would pass every bound check
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ in (int, bool, str) and not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        what = f"key(s) in [{where}]" if where else "section(s)"  # the top level has sections, not keys
        raise ConfigError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"[{where}.{key}] must be a table, got {value!r}")
            kwargs[key] = _build(typ, value, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = _coerce(value, typ, f"{where}.{key}")
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a (possibly partial) nested dict; unknown keys raise."""
    return _build(Config, data, "")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a nested dict."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
    except Exception as exc:  # parse errors of three libraries; re-raised as one type
        raise ConfigError(f"cannot parse config {path}: {exc}") from None
    raise ConfigError(f"config {path}: expected .toml, .yaml, .yml or .json")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=3e-4", "model.mode=params"]`` -> nested dict of strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out.setdefault(parts[0], {})[parts[1]] = value.strip()
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- ``base`` <- config file <- ``--set`` overrides."""
    data: dict[str, Any] = dict(base or {})
    if path:
        data = _merge(data, read_file(path))
    data = _merge(data, parse_overrides(overrides))
    return from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as JSON (readable back by :func:`load_config`)."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
