"""The references a model's inversions are judged against, at the model rate.

* ``identity``: the degraded input, untouched;
* ``identity_loudness``: the degraded input gain-matched to the clean loudness (an oracle: it
  knows the clean LUFS);
* ``normalised``: plain loudness normalisation, what a user might do instead of restoring: the
  degraded input brought to the ``streaming`` preset (-14 LUFS) under its -1 dBTP ceiling by the
  mastering job's own loudness stage and limiter (not an oracle);
* ``oracle_chain``: the inverse chain driven by the true parameters (the unknown ones neutral);
* ``oracle_mel_griffinlim``: Griffin-Lim from the clean mel with the griffinlim inversion's
  settings: the ceiling of that inversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from automaster.config import AudioConfig, MasterConfig
from automaster.dsp.constants import MODEL_RATE
from automaster.dsp.loudness import loudness_gain_db
from automaster.effects.chain import invert_chain
from automaster.effects.params import PARAMS, neutral_params
from automaster.evaluation.metrics import clip_mel_db
from automaster.mastering.finishing import FinishSettings, finish, loudness_warning
from automaster.mastering.inversions import griffinlim_audio

NORMALISED_PRESET = "streaming"
BASELINES = ("identity", "identity_loudness", "normalised", "oracle_chain", "oracle_mel_griffinlim")
DESCRIPTIONS = {
    "identity": "the degraded input, untouched",
    "identity_loudness": "the degraded input gain-matched to the clean loudness (oracle: knows the clean LUFS)",
    "normalised": "plain loudness normalisation: the degraded input at -14 LUFS under -1 dBTP (the streaming preset)",
    "oracle_chain": "the inverse chain driven by the true parameters (oracle)",
    "oracle_mel_griffinlim": "Griffin-Lim from the clean mel, the griffinlim inversion's settings (its ceiling)",
}


def identity_loudness(degraded: np.ndarray, clean_lufs: float) -> np.ndarray:
    """``degraded`` gain-matched to ``clean_lufs`` (0 dB for silence)."""
    return degraded * np.float32(10.0 ** (loudness_gain_db(degraded, MODEL_RATE, clean_lufs) / 20.0))


def normalised(degraded: np.ndarray) -> tuple[np.ndarray, str]:
    """``degraded`` ``(C, T)`` through the mastering job's finishing stages with the ``streaming``
    preset and no restoration (-14 LUFS, the true-peak limiter at -1 dBTP), and the loudness
    stage's warning (``""`` when none): a near-silent input keeps its level, as in ``master``."""
    out, report = finish(degraded, degraded, MODEL_RATE, FinishSettings(preset=NORMALISED_PRESET), restore_note="none")
    return out, loudness_warning(report)


def oracle_chain(degraded: np.ndarray, truth: dict[str, Any], hop_length: int) -> np.ndarray:
    """The inverse chain on ``degraded`` ``(C, T)`` with the true parameters ``truth`` (name ->
    per-frame trajectory or per-clip value); parameters not in ``truth`` stay neutral."""
    n_frames = 1 + degraded.shape[-1] // hop_length
    params = neutral_params(1, n_frames)
    for p in PARAMS:
        if p.name not in truth:
            continue  # unknown (foreign damage): neutral
        value = torch.as_tensor(np.asarray(truth[p.name], dtype=np.float32)).reshape(1, -1)  # (1, F) or (1, 1)
        if not p.per_frame:
            params[p.name] = value[:, 0]  # (1,)
        elif value.shape[-1] == 1:
            params[p.name] = value.expand(1, n_frames).clone()  # a constant trajectory
        else:
            params[p.name] = value
    with torch.inference_mode():
        return invert_chain(torch.from_numpy(degraded)[None], MODEL_RATE, params)[0].numpy()


def oracle_mel_griffinlim(
    clean: np.ndarray, degraded: np.ndarray, audio_cfg: AudioConfig, settings: MasterConfig
) -> np.ndarray:
    """Griffin-Lim from the clean mel (through dB, as the griffinlim inversion, same floor) with
    that inversion's iterations, momentum, initial phase (the degraded input's, with
    ``init_phase``) and random-phase seed (a one-chunk clip's)."""
    with torch.inference_mode():
        wave = griffinlim_audio(
            clip_mel_db(clean, audio_cfg), clean.shape[-1], audio_cfg, settings, init_from=torch.from_numpy(degraded)
        )
    return wave.numpy()
