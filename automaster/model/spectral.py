"""Spectral restoration: a bounded gain per STFT bin and frame, and one level gain per clip.

The network reads the log-magnitude STFT (n_fft 2048, hop 512 at 44.1 kHz) of the mono downmix
of the degraded input and predicts

* ``gain_db`` ``(B, K, F)``: a gain per bin and frame, ``max_gain_db * tanh(raw / max_gain_db)``
  with ``raw`` zero-mean over the clip (spectral shape and dynamics, not the overall level);
* ``level_db`` ``(B,)``: the gain that brings the input to the original master's loudness,
  bounded the same way by ``max_level_db``, from a small head reading band statistics, RMS and
  peak of the input (not the U-Net: its features drift while it trains).

Both are applied to every channel's STFT, whose phase is kept, and the iSTFT returns exactly the
input's length, so the model trains end to end on waveform losses. The last layer of each head
is zero-initialised: an untrained model is the identity.

The frequency axis is cut to ``1024 / stem_stride`` bands by a strided stem, then halved
``depth`` times by a U-Net whose time axis is never downsampled (any frame count works); the
bottleneck sees about a third of a second through dilated time convolutions.

Shapes: waveforms ``(B, C, T)``; STFT ``(B, C, K, F)`` with ``K = n_fft // 2 + 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from automaster.config import Config, LossConfig, ModelConfig
from automaster.dsp.stft import HOP_LENGTH, N_FFT
from automaster.model.losses import MultiResolutionSTFTLoss, weighted_terms

MODE = "spectral"
_BINS = N_FFT // 2  # bins the network sees (the Nyquist bin takes its neighbour's gain)
_DB_EPS = 1e-5
_DB_SCALE = 40.0  # log-magnitude dB / 40: inputs of order 1
_TIME_DILATIONS = (1, 2, 4, 8)
_LEVEL_BANDS = 32  # bands of 32 bins that the level head reads


def _soft_bound(raw: torch.Tensor, bound_db: float) -> torch.Tensor:
    """``bound * tanh(raw / bound)``: slope 1 at 0, never beyond ``±bound``."""
    return bound_db * torch.tanh(raw / bound_db)


def stft_mono(wave: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, T)`` -> every channel's STFT ``(B, C, K, F)`` and the mono downmix's ``(B, K, F)``."""
    batch, channels, length = wave.shape
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    flat = wave.reshape(batch * channels, length)
    spec = torch.stft(flat, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    spec = spec.reshape(batch, channels, *spec.shape[-2:])
    if channels == 1:  # a mono input is its own downmix (a complex mean over one channel is slow)
        return spec, spec[:, 0]
    return spec, spec.mean(dim=1)  # the STFT is linear: the downmix's STFT is the mean


def level_features(mag_db: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
    """What the level head reads ``(B, 2 * 32 + 2)``: the mean and spread over frames of the mono
    log magnitude ``(B, 1024, F)`` (dB) in 32 bands, and the input's RMS and peak in dBFS (the
    damage normalises peaks, so their gap carries the level), all over ``_DB_SCALE``."""
    bands = mag_db.reshape(mag_db.shape[0], _LEVEL_BANDS, -1, mag_db.shape[-1]).mean(dim=2) / _DB_SCALE
    mono = wave.mean(dim=1)  # (B, T)
    rms_db = 10.0 * torch.log10(mono.pow(2).mean(dim=-1) + 1e-10)
    peak_db = 20.0 * torch.log10(mono.abs().amax(dim=-1) + 1e-5)
    stats = torch.stack([rms_db, peak_db], dim=1) / _DB_SCALE
    return torch.cat([bands.mean(dim=-1), bands.std(dim=-1, unbiased=False), stats], dim=1)


def mono_log_magnitude(mono_spec: torch.Tensor) -> torch.Tensor:
    """The mono STFT ``(B, K, F)`` -> its log magnitude in dB below Nyquist ``(B, 1024, F)``."""
    return 20.0 * torch.log10(mono_spec.abs()[:, :_BINS] + _DB_EPS)


class _ResBlock(nn.Module):
    """Two 3x3 convolutions (time dilation ``dilation``) with a residual connection."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        pad = (1, dilation)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=pad, dilation=(1, dilation))
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=pad, dilation=(1, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class SpectralRestorer(nn.Module):
    """Log-magnitude STFT -> bounded gain per bin and frame + level gain per clip.

    Args:
        width: channels after the stem (level ``i`` of the U-Net has ``width * (i + 1)``); 0: no
            U-Net, the level head alone (the per-bin gain is 0 dB).
        depth: frequency halvings after the stem.
        stem_stride: frequency stride of the stem (1024 bins -> ``1024 / stem_stride`` bands).
        max_gain_db: bound of the per-bin gain.
        max_level_db: bound of the level gain.
    """

    mode = MODE

    def __init__(
        self, width: int = 8, depth: int = 3, stem_stride: int = 4, max_gain_db: float = 12.0, max_level_db: float = 24.0
    ) -> None:
        super().__init__()
        if width < 0 or depth < 0 or stem_stride not in (1, 2, 4, 8):
            raise ValueError(f"need width >= 0, depth >= 0, stem_stride in 1, 2, 4, 8; got {width}, {depth}, {stem_stride}")
        bands = _BINS // stem_stride
        if bands % (2**depth):
            raise ValueError(f"{bands} bands cannot be halved {depth} times")
        if max_gain_db <= 0 or max_level_db <= 0:
            raise ValueError(f"gain bounds must be > 0, got {max_gain_db}, {max_level_db}")
        self.max_gain_db, self.max_level_db = float(max_gain_db), float(max_level_db)
        self.has_mask = width > 0
        if self.has_mask:
            self._build_unet(width, depth, stem_stride)
        # Level: from the input alone, not the trunk (whose features drift while it trains): the
        # mean and spread over frames of the log magnitude in _LEVEL_BANDS bands, and the input's
        # RMS and peak in dBFS (the damage normalises peaks, so their gap carries the level).
        self.level_mlp = nn.Sequential(
            nn.Linear(2 * _LEVEL_BANDS + 2, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)
        )
        for last in (self.gain_head, self.level_mlp[-1]) if self.has_mask else (self.level_mlp[-1],):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def _build_unet(self, width: int, depth: int, stem_stride: int) -> None:
        """The per-bin gain's U-Net (attributes at the top level: the checkpoints' key names)."""
        chans = [width * (i + 1) for i in range(depth + 1)]
        kernel = 2 * stem_stride - 1 if stem_stride > 1 else 3
        self.stem = nn.Conv2d(1, width, (kernel, 3), stride=(stem_stride, 1), padding=(kernel // 2, 1))
        self.enc = nn.ModuleList(_ResBlock(c) for c in chans[:-1])
        self.down = nn.ModuleList(
            nn.Conv2d(a, b, (4, 1), stride=(2, 1), padding=(1, 0)) for a, b in zip(chans[:-1], chans[1:])
        )
        self.bottleneck = nn.Sequential(*(_ResBlock(chans[-1], d) for d in _TIME_DILATIONS))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(b, a, (4, 1), stride=(2, 1), padding=(1, 0)) for a, b in zip(chans[:-1], chans[1:])
        )
        self.dec = nn.ModuleList(_ResBlock(c) for c in chans[:-1])
        if stem_stride > 1:
            self.unstem = nn.ConvTranspose2d(width, width, (2 * stem_stride, 1), stride=(stem_stride, 1), padding=(stem_stride // 2, 0))
        else:
            self.unstem = nn.Conv2d(width, width, 3, padding=1)
        self.gain_head = nn.Conv2d(width, 1, 3, padding=1)

    @classmethod
    def from_config(cls, config: ModelConfig | Config) -> "SpectralRestorer":
        """Build from a :class:`ModelConfig` (or a full :class:`Config`)."""
        m = config.model if isinstance(config, Config) else config
        if m.mode != MODE:
            raise ValueError(f"SpectralRestorer needs model.mode = {MODE!r}, got {m.mode!r}")
        return cls(m.spectral_width, m.spectral_depth, m.spectral_stem_stride, m.max_gain_db, m.max_level_db)

    def n_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def analyse(self, mono_spec: torch.Tensor, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mono STFT ``(B, K, F)`` and the waveform ``(B, C, T)`` -> ``gain_db`` ``(B, K, F)``, ``level_db`` ``(B,)``."""
        mag_db = mono_log_magnitude(mono_spec)  # (B, 1024, F)
        level_db = self._level(mag_db, wave)
        if not self.has_mask:
            return {"gain_db": torch.zeros_like(mono_spec.real), "level_db": level_db}
        x = self.stem(mag_db[:, None] / _DB_SCALE)  # (B, width, bands, F)
        skips = []
        for block, down in zip(self.enc, self.down):
            x = block(x)
            skips.append(x)
            x = down(F.gelu(x))
        x = self.bottleneck(x)  # (B, C_deep, bands / 2**depth, F)
        for up, block, skip in zip(reversed(self.up), reversed(self.dec), reversed(skips)):
            x = block(up(F.gelu(x)) + skip)
        raw = self.gain_head(F.gelu(self.unstem(F.gelu(x))))[:, 0]  # (B, 1024, F)
        # The clip's overall level is the level head's alone: the per-bin gain is zero-mean per clip.
        raw = raw - raw.mean(dim=(1, 2), keepdim=True)
        raw = torch.cat([raw, raw[:, -1:]], dim=1)  # Nyquist bin: its neighbour's gain
        return {"gain_db": _soft_bound(raw, self.max_gain_db), "level_db": level_db}

    def _level(self, mag_db: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
        """``(B,)`` level gain in dB from the log magnitude ``(B, 1024, F)`` and the waveform."""
        return self.level_from_features(level_features(mag_db, wave))

    def level_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` level gain in dB from :func:`level_features` ``(B, 66)``."""
        return _soft_bound(self.level_mlp(features)[:, 0], self.max_level_db)

    def forward(self, wave: torch.Tensor, outputs: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Restore ``wave`` ``(B, C, T)``.

        Returns:
            ``"wave"`` ``(B, C, T)`` (exactly the input's length), ``"gain_db"`` ``(B, K, F)``,
            ``"level_db"`` ``(B,)``. ``outputs=("gain_db", "level_db")`` skips the synthesis.
        """
        if wave.dim() != 3:
            raise ValueError(f"expected (B, C, T) audio, got shape {tuple(wave.shape)}")
        if wave.shape[-1] < N_FFT // 2 + 1:
            raise ValueError(f"need at least {N_FFT // 2 + 1} samples, got {wave.shape[-1]}")
        spec, mono = stft_mono(wave)
        if outputs is not None and tuple(outputs) == ("level_db",):  # the level head alone: no U-Net
            return {"level_db": self._level(mono_log_magnitude(mono), wave)}
        out = self.analyse(mono, wave)
        if outputs is not None and "wave" not in outputs:
            return out
        gain = torch.pow(10.0, (out["gain_db"] + out["level_db"].view(-1, 1, 1)) / 20.0)  # (B, K, F)
        restored = spec * gain[:, None]
        batch, channels, length = wave.shape
        window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
        flat = restored.reshape(batch * channels, *restored.shape[-2:])
        y = torch.istft(flat, N_FFT, HOP_LENGTH, window=window, center=True, length=length)
        out["wave"] = y.reshape(batch, channels, length)
        return out


def neg_si_sdr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Minus the scale-invariant SDR in dB, averaged over items and channels ``(B, C, T)``."""
    est, ref = estimate.flatten(0, -2), target.flatten(0, -2)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    proj = alpha * ref
    ratio = proj.pow(2).sum(-1) / ((est - proj).pow(2).sum(-1) + eps)
    return -(10.0 * torch.log10(ratio + eps)).mean()


class SpectralLoss(nn.Module):
    """``mrstft · MR-STFT + wave_l1 · L1 + si_sdr · (-SI-SDR) + level_db · |level - target|``.

    Weights from :class:`LossConfig`, terms keyed like them. ``batch`` needs ``wave_original``
    ``(B, C, T)`` and, for the level term, ``level_db`` ``(B,)`` (clean minus degraded loudness).
    """

    TERMS = ("mrstft", "wave_l1", "si_sdr", "level_db")

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.weights = {name: float(getattr(self.config, name)) for name in self.TERMS}
        self.mr_stft = MultiResolutionSTFTLoss()

    def _term(self, name: str, outputs: dict, batch: dict) -> torch.Tensor | None:
        clean = batch["wave_original"].to(outputs["wave"])
        if name == "mrstft":
            return self.mr_stft(outputs["wave"], clean)
        if name == "wave_l1":
            return F.l1_loss(outputs["wave"], clean)
        if name == "si_sdr":
            return neg_si_sdr(outputs["wave"], clean)
        if "level_db" not in batch:
            return None
        return F.l1_loss(outputs["level_db"], batch["level_db"].to(outputs["level_db"]))

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns ``(total, terms)``; zero-weight terms are logged unless ``log_zero_terms`` is false."""
        total, terms = weighted_terms(self.weights, self.config.log_zero_terms, lambda name: self._term(name, outputs, batch))
        if total is None:
            total = torch.zeros((), device=outputs["wave"].device)
        return total, terms


def level_gain_db(clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """Per item, the gain in dB that gives ``degraded`` the RMS of ``clean`` (both ``(B, C, T)``)."""
    ratio = (clean.pow(2).mean(dim=(1, 2)) + 1e-10) / (degraded.pow(2).mean(dim=(1, 2)) + 1e-10)
    return 10.0 * torch.log10(ratio)


__all__ = [
    "MODE", "SpectralLoss", "SpectralRestorer", "level_features", "level_gain_db", "mono_log_magnitude", "neg_si_sdr", "stft_mono",
]
