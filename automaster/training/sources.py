"""Where training batches come from: fresh damage of clean audio, or crops of the fixed pairs.

Both give batches with ``wave_original``/``wave_degraded`` ``(B, 1, T)``, ``level_db`` ``(B,)``,
``params`` ``(B, P, F)`` and, when the model reads mels (the cascade), the normalised mels of
:func:`automaster.model.batches.collate`, computed on the batch's device. Both hold their
validation rows (full length, the demaster dataset's decoded format) and the training parameter
means (the predict-the-mean baseline of the forecaster).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from automaster.config import DAMAGE_EFFECTS, AudioConfig, Config, parse_effects
from automaster.effects.params import PARAMS
from automaster.model.spectral import MODE as SPECTRAL
from automaster.training.bank import SAMPLE_RATE, ClipBank, bank_from_corpus
from automaster.training.fresh import FreshDamage

log = logging.getLogger(__name__)

_MEANS_DRAWS = 256  # parameter draws averaged for the fresh source's predict-the-mean baseline
_VAL_SEED_OFFSET = 7919  # validation damage never shares a stream with training


def add_mels(batch: dict[str, torch.Tensor], audio: AudioConfig) -> dict[str, torch.Tensor]:
    """Add the cascade's inputs and targets: dB mels of both waves and their normalised forms."""
    from automaster.dsp.mel import melspectrogram
    from automaster.dsp.scale import power_to_db
    from automaster.model.batches import normalize_mel

    n = batch["params"].shape[-1]
    for key, wave in (("mel_original_db", "wave_original"), ("mel_degraded_db", "wave_degraded")):
        mel = melspectrogram(batch[wave][:, 0], audio.sample_rate, audio.n_fft, audio.hop_length, audio.n_mels)
        batch[key] = power_to_db(mel)[..., :n][:, None]  # (B, 1, M, n)
    batch["mel_degraded"] = normalize_mel(batch["mel_degraded_db"], audio)
    batch["mel_original"] = normalize_mel(batch["mel_original_db"], audio, stats_from=batch["mel_degraded_db"])
    return batch


def crop_samples(config: Config) -> int:
    """Samples per training crop: ``train.crop_seconds`` rounded to whole hops, else ``crop_frames`` hops."""
    hop = config.audio.hop_length
    if config.train.crop_seconds > 0:
        return max(4, round(config.train.crop_seconds * SAMPLE_RATE / hop)) * hop
    return config.train.crop_frames * hop


@dataclass
class Source:
    """Training batches and validation rows (see the module docstring).

    ``steps_per_epoch`` is ``None`` where only iterating tells (a Ray Data shard).
    """

    config: Config
    val_rows: list[dict[str, Any]]
    means: dict[str, float]
    steps_per_epoch: int | None
    description: dict[str, Any] = field(default_factory=dict)
    needs_mels: bool = False

    def epoch_batches(self, epoch: int, rank: int, world: int, device: torch.device, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch`` on ``rank`` of ``world``, from batch ``start`` (a resumed epoch)."""
        raise NotImplementedError

    def my_val_rows(self, rank: int, world: int) -> list[dict[str, Any]]:
        """The validation rows ``rank`` of ``world`` validates (their totals are summed over ranks)."""
        return self.val_rows[rank::world]


class FreshSource(Source):
    """Fresh damage of a clean bank; example indices of batch ``i`` on rank ``r`` of ``w``:
    ``(i * w + r) * B + j`` within the epoch, so ranks never repeat each other."""

    def __init__(self, fresh: FreshDamage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fresh = fresh

    def epoch_batches(self, epoch: int, rank: int, world: int, device: torch.device, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        size = self.config.train.batch_size
        for i in range(start, self.steps_per_epoch or 0):
            first = (i * world + rank) * size
            batch = self.fresh.batch(epoch, list(range(first, first + size)), device)
            yield add_mels(batch, self.config.audio) if self.needs_mels else batch


def pair_batches(rows: list[dict[str, Any]], config: Config, rng: np.random.Generator, device) -> Iterator[dict[str, torch.Tensor]]:
    """``train.crops_per_track`` random crops of every row, shuffled, in batches (the thesis's
    training data); ``level_db`` added for the spectral restorer."""
    from automaster.model.batches import collate, random_crops
    from automaster.model.spectral import level_gain_db

    tc, audio = config.train, config.audio
    crops = random_crops(rows, tc.crop_frames, tc.crops_per_track, rng, audio)
    order = rng.permutation(len(crops))
    for i in range(0, len(crops), tc.batch_size):
        batch = collate([crops[j] for j in order[i : i + tc.batch_size]], audio, audio.sample_rate)
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["level_db"] = level_gain_db(batch["wave_original"], batch["wave_degraded"])
        yield batch


class PairsSource(Source):
    """Random crops of the demaster dataset's fixed pairs, this rank's share of the rows."""

    def __init__(self, rows: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows = rows

    def epoch_batches(self, epoch: int, rank: int, world: int, device: torch.device, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.config.train.seed, epoch, rank])
        for i, batch in enumerate(pair_batches(self.rows[rank::world], self.config, rng, device)):
            if i >= start:
                yield batch


def source_kind(config: Config) -> str:
    """``train.source``; ``"auto"``: fresh damage for the spectral restorer, the fixed pairs for
    the thesis cascade on a demaster dataset (clean audio alone always takes fresh damage)."""
    kind = config.train.source
    if kind not in ("auto", "fresh", "pairs"):
        raise ValueError(f"train.source must be 'auto', 'fresh' or 'pairs', got {kind!r}")
    if kind == "auto":
        return "fresh" if config.model.mode == SPECTRAL else "pairs"
    return kind


def fresh_means(fresh: FreshDamage) -> dict[str, float]:
    """Mean physical parameter values over a fixed set of draws (predict-the-mean baseline)."""
    sums = dict.fromkeys((p.name for p in PARAMS), 0.0)
    for i in range(_MEANS_DRAWS):
        _, params, _ = fresh.draw(-1000, i)
        for p in PARAMS:
            sums[p.name] += float(params[p.name].float().mean())
    return {k: v / _MEANS_DRAWS for k, v in sums.items()}


def audio_source(roots: list[str], config: Config, bank: ClipBank | None = None) -> FreshSource:
    """Fresh damage of the training split of corpus ``roots``; validation: ``train.val_crops``
    fixed-seed crops of ``train.val_crop_seconds`` from the validation split (or, without one, the
    last ~10% of the training tracks, held out of training)."""
    tc = config.train
    if tc.source == "pairs":
        raise ValueError(f"train.source={tc.source!r} needs --data (clean audio has no fixed pairs)")
    if bank is None:
        bank = bank_from_corpus(roots, ("training",), tc.max_track_seconds)
    try:
        held = bank_from_corpus(roots, ("validation",), tc.max_track_seconds)
    except ValueError:
        n = max(1, len(bank) // 10)
        if len(bank) < 2:
            raise ValueError(f"{', '.join(roots)}: one training track and no validation split: nothing to validate on") from None
        log.warning("no validation split in %s: holding out %d training tracks", ", ".join(roots), n)
        held, bank = bank.subset(list(range(len(bank) - n, len(bank)))), bank.subset(list(range(len(bank) - n)))
    hop = config.audio.hop_length
    val_samples = max(4, round(tc.val_crop_seconds * SAMPLE_RATE / hop)) * hop
    rows = FreshDamage(held, val_samples, config, tc.seed + _VAL_SEED_OFFSET, tag="validation").rows(tc.val_crops)
    return _fresh_source(bank, rows, config, {"audio": roots, "val_tracks": len(held)})


def _fresh_source(bank: ClipBank, val_rows: list[dict[str, Any]], config: Config, description: dict[str, Any]) -> FreshSource:
    tc = config.train
    fresh = FreshDamage(bank, crop_samples(config), config, tc.seed)
    description = {**description, "train_tracks": len(bank), "train_seconds": round(bank.seconds, 1), "val_rows": len(val_rows)}
    return FreshSource(fresh, config=config, val_rows=val_rows, means=fresh_means(fresh), steps_per_epoch=tc.steps_per_epoch,
                       description=description, needs_mels=config.model.mode != SPECTRAL)  # fmt: skip


def data_source(data: str, config: Config) -> Source:
    """The demaster dataset ``data``: fresh damage of its clean originals (``train.source =
    "fresh"``) or crops of its pairs (``"pairs"``); validation on its fixed validation pairs."""
    from automaster.training.pairs import read_meta, read_originals, read_rows, split_files

    tc = config.train
    shaped = parse_effects(tc.damage_effects) != DAMAGE_EFFECTS or tc.damage_scale != 1.0
    if shaped and source_kind(config) == "pairs":  # fixed pairs: the damage is the dataset's
        raise ValueError(f"train.damage_effects={tc.damage_effects!r}, train.damage_scale={tc.damage_scale:g} shape fresh "
                         "damage, and the fixed pairs (train.source=pairs, the cascade's default) keep the dataset's: "
                         "use --audio, or train.source=fresh")  # fmt: skip
    if shaped:
        log.warning("train.damage_effects/damage_scale shape the training damage only: --data validates on the "
                    "dataset's fixed pairs (the whole chain's damage); --audio validates on damage shaped alike")  # fmt: skip
    read_meta(data)
    splits = split_files(data)
    val_rows = read_rows(splits.val_files, tc.val_rows)
    description = {"data": data, "rows": splits.counts, "validation": splits.val_name, "val_rows": len(val_rows)}
    if source_kind(config) == "pairs":
        train_rows = read_rows(splits.train_files)
        steps = -(-len(train_rows) * tc.crops_per_track // tc.batch_size)
        return PairsSource(train_rows, config=config, val_rows=val_rows, means=splits.means,
                           steps_per_epoch=steps, description=description)  # fmt: skip
    return _fresh_source(read_originals(splits.train_files), val_rows, config, description)
