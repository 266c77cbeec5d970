"""Mastering with a trained cascade, Ray-free: chunks, inversions, policy (echo stage, forecast
policy), levels and the :class:`Masterer` that runs them (see :mod:`.masterer`)."""

from automaster.config import INVERSIONS, MasterConfig
from automaster.mastering.chunks import Chunk, plan_chunks, resample, total_frames, window
from automaster.mastering.inversions import griffinlim_audio, mel_db
from automaster.mastering.levels import HEADROOM_PEAK_DBFS
from automaster.mastering.masterer import (
    STAGES, FileError, Masterer, MasteringError, default_inversion, prepare_for_inference,
)
from automaster.mastering.policy import (
    ECHO_PARAMS, MAX_FORECAST_ERROR, MIN_ECHO_GAIN, chain_policy, forecast_errors, parameter_stats,
)

__all__ = [
    "ECHO_PARAMS", "HEADROOM_PEAK_DBFS", "INVERSIONS", "MAX_FORECAST_ERROR", "MIN_ECHO_GAIN", "STAGES", "Chunk",
    "FileError", "MasterConfig", "Masterer", "MasteringError", "chain_policy", "default_inversion", "forecast_errors",
    "griffinlim_audio", "mel_db", "parameter_stats", "plan_chunks", "prepare_for_inference", "resample",
    "total_frames", "window",
]
