"""Fresh damage: a new random crop and a new parameter draw for every example of every epoch.

Example ``i`` of epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``
(:func:`automaster.degrade.make_generator`): its clip (weighted by length), its crop, its
parameters (:func:`automaster.degrade.draw_params`) and its reverb noise. The same seed gives the
same examples whatever the batch size, device or number of ranks; another epoch gives others.
The damage is the project's chain (:func:`automaster.degrade.degrade`), batched on the device
of the batch (CUDA when there is one).

``damage_scale`` < 1 narrows the thesis distribution: each parameter with a neutral value is drawn
in that share of its normalised range around the neutral value (1: the thesis's draw unchanged).
``damage_effects`` keeps some effects of the chain and makes the others neutral (the draw is the
same, so each example keeps its crop): a model can be trained on the damage it can undo.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from automaster.config import Config, parse_effects
from automaster.degrade import degrade, draw_params, make_generator, only_effects
from automaster.effects.params import BY_NAME, PARAMS, stack
from automaster.model.spectral import level_gain_db
from automaster.training.bank import SAMPLE_RATE, ClipBank

_CROP_TRIES = 4  # crop positions tried before accepting a quiet one
_QUIET_DB = -45.0  # a crop quieter than this (RMS dBFS) is re-drawn
_HEADROOM_TRIES = 4  # parameter redraws when the damage needs more headroom than the table allows


def narrow(params: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Pull every parameter with a neutral value towards it: ``u' = n + scale * (u - n)`` in
    normalised units (``scale`` 1: unchanged)."""
    if scale == 1.0:
        return params
    out = dict(params)
    for spec in PARAMS:
        if spec.neutral is None or spec.name == "output_gain_db" or spec.name not in params:
            continue
        n = spec.normalize(torch.tensor(float(spec.neutral)))
        out[spec.name] = spec.denormalize(n + scale * (spec.normalize(params[spec.name]) - n))
    return out


class FreshDamage:
    """Crops of a :class:`ClipBank` damaged afresh; see the module docstring.

    Args:
        bank: the clean audio.
        crop_samples: samples per crop (a multiple of the hop keeps frames and samples aligned).
        config: degrade settings, ``train.damage_scale``, ``audio`` (for the mels of the cascade).
        seed: the base seed; ``tag`` separates streams (training, validation) of one seed.
    """

    def __init__(self, bank: ClipBank, crop_samples: int, config: Config, seed: int = 0, tag: str = "train") -> None:
        if len(bank) == 0:
            raise ValueError("an empty bank")
        if crop_samples < 2 * config.audio.n_fft:
            raise ValueError(f"crops of {crop_samples} samples are shorter than two FFT frames")
        self.bank, self.crop_samples, self.config = bank, int(crop_samples), config
        self.seed, self.tag = int(seed), tag
        self.n_frames = self.crop_samples // config.audio.hop_length
        self.effects = parse_effects(config.train.damage_effects)
        self._cum = np.cumsum(bank.lengths) / float(bank.lengths.sum())

    def _crop(self, gen: torch.Generator) -> np.ndarray:
        u = float(torch.rand(1, generator=gen))
        clip = min(int(np.searchsorted(self._cum, u, side="right")), len(self.bank) - 1)
        room = max(0, int(self.bank.lengths[clip]) - self.crop_samples)
        x = np.zeros(self.crop_samples, np.float32)
        for _ in range(_CROP_TRIES):
            start = int(torch.randint(0, room + 1, (1,), generator=gen))
            x = self.bank.crop(clip, start, self.crop_samples)
            if 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-12) > _QUIET_DB:
                break
        return x

    def draw(self, epoch: int, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor], torch.Generator]:
        """Example ``index`` of ``epoch``: clean crop ``(T,)``, physical parameters, and the
        generator (positioned for the reverb noise of :func:`degrade`)."""
        gen = make_generator(self.seed, f"{self.tag}:{epoch}", index)
        x = self._crop(gen)
        rms_db = 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-12)
        params = draw_params(self.n_frames + 1, gen, self.config.degrade, clip_rms_db=rms_db)
        return x, only_effects(narrow(params, self.config.train.damage_scale), self.effects), gen

    def batch(self, epoch: int, indices: list[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Examples ``indices`` of ``epoch``, damaged on ``device``.

        Returns ``wave_original``, ``wave_degraded`` ``(B, 1, T)``, ``level_db`` ``(B,)`` (the RMS
        gain from degraded to clean), ``params`` ``(B, P, n_frames)`` normalised, ``sample_rate``.
        """
        draws = [self.draw(epoch, i) for i in indices]
        clean = torch.from_numpy(np.stack([d[0] for d in draws]))[:, None].to(device)  # (B, 1, T)
        params = {k: torch.cat([d[1][k] for d in draws]).to(device) for k in draws[0][1]}
        gens = [d[2] for d in draws]
        try:
            wet = degrade(clean, SAMPLE_RATE, params, gens, self.config.degrade)
        except ValueError:  # one item needs more headroom than the table allows: redraw it alone
            return self._batch_one_by_one(epoch, indices, device)
        return self._finish(clean, wet.audio, wet.params)

    def _batch_one_by_one(self, epoch: int, indices: list[int], device) -> dict[str, torch.Tensor]:
        parts = []
        for i in indices:
            for attempt in range(_HEADROOM_TRIES):
                x, params, gen = self.draw(epoch if attempt == 0 else -1 - attempt, i)
                clean = torch.from_numpy(x)[None, None].to(device)
                try:
                    wet = degrade(clean, SAMPLE_RATE, {k: v.to(device) for k, v in params.items()}, gen, self.config.degrade)
                    break
                except ValueError:
                    if attempt == _HEADROOM_TRIES - 1:
                        raise
            parts.append(self._finish(clean, wet.audio, wet.params))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _finish(self, clean: torch.Tensor, wet: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = self.n_frames
        physical = {k: (v[..., :n] if BY_NAME[k].per_frame else v) for k, v in params.items()}
        return {
            "wave_original": clean,
            "wave_degraded": wet.to(clean.dtype),
            "level_db": level_gain_db(clean, wet),
            "params": stack({k: v.float() for k, v in physical.items()}, n),
            "sample_rate": torch.full((clean.shape[0],), SAMPLE_RATE, dtype=torch.int64),
        }

    def rows(self, n: int, epoch: int = 0) -> list[dict[str, Any]]:
        """``n`` examples as full-length rows in the demaster dataset's decoded format
        (:func:`automaster.dataset.decode_row`): fixed validation pairs for the held-out audio."""
        from automaster.dsp.mel import mel_db_rows
        from automaster.dsp.stft import stft_rows

        audio = self.config.audio
        out = []
        for i in range(n):
            b = self.batch(epoch, [i])
            clean, wet = b["wave_original"][0, 0].cpu().numpy(), b["wave_degraded"][0, 0].cpu().numpy()
            mels = mel_db_rows(stft_rows(np.stack([clean, wet]), audio.n_fft, audio.hop_length), SAMPLE_RATE, audio.n_mels)
            frames = mels.shape[-1]
            row = {
                "track_id": f"{self.tag}-{i}", "variant": 0, "sample_rate": SAMPLE_RATE, "n_samples": len(clean),
                "n_mels": audio.n_mels, "n_frames": frames, "mel_original_db": mels[0], "mel_degraded_db": mels[1],
                "wave_original": clean, "wave_degraded": wet,
            }  # fmt: skip
            for k, spec in enumerate(PARAMS):
                value = spec.denormalize(b["params"][0, k]).cpu().numpy()
                row[spec.name] = np.interp(np.arange(frames), np.arange(len(value)), value).astype(np.float32) if spec.per_frame else float(value.mean())
            out.append(row)
        return out
