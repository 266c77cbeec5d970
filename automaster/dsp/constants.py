"""The model's analysis settings, defined once: its sample rate, STFT framing, mel bands and the
fixed dB range of its normalised mels. :class:`automaster.config.AudioConfig`'s defaults are these
values, and the DSP functions' defaults too, so a checkpoint's config and the DSP agree."""

from __future__ import annotations

MODEL_RATE = 44100  # Hz: every clip is analysed (and the model runs) at this rate
N_FFT = 2048
HOP_LENGTH = 512
N_MELS = 128
# 10*log10(1e-6) is the power floor; the loudest mel bands of full-scale music sit near +40 dB.
DB_MIN = -60.0
DB_MAX = 40.0
