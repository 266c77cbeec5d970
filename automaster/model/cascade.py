"""The cascade: U-Net (restored mel) and LSTM forecaster (effect parameters), one module.

Modes (``ModelConfig.mode``):

* ``"restore"``: U-Net only; outputs ``"mel"`` (and ``"mel_gain_db"``).
* ``"params"``: forecaster only, reading the degraded mel; outputs ``"params"``.
* ``"cascade"``: both, side by side on the same degraded mel. The forecaster does not read the
  U-Net's output: the restored mel carries no information the degraded one lacks, and keeping
  the two independent lets the chain path (parameters only) skip the U-Net at mastering time
  (``forward(..., outputs=("params",))``), and keeps the parameter loss from pulling on the
  U-Net.

Shapes: ``mel_norm`` ``(B, 1, M, F)`` in [0, 1] (M = 128 mel bands); ``"mel"`` the same shape;
``"params"`` ``(B, P, F)`` normalised to (0, 1) in ParamSpec table order.
"""

from __future__ import annotations

import torch
from torch import nn

from automaster.config import Config, ModelConfig
from automaster.dsp.scale import DB_MAX, DB_MIN
from automaster.effects import params as param_table
from automaster.effects.chain import invert_chain
from automaster.model.forecaster import Forecaster
from automaster.model.unet import UNet

MODES = ("restore", "params", "cascade")


def restore_waveform(degraded_wave: torch.Tensor, sample_rate: int, params_norm: torch.Tensor) -> torch.Tensor:
    """Repair ``degraded_wave`` ``(B, C, T)`` with the inverse chain driven by ``params_norm``.

    Args:
        degraded_wave: ``(B, C, T)`` waveform at ``sample_rate`` (any rate, any channel count;
            channels share the parameters).
        sample_rate: in Hz.
        params_norm: ``(B, P, F)`` normalised parameters; per-clip ones are averaged over frames
            by :func:`automaster.effects.params.unstack` and everything is denormalised to
            physical units.

    Returns:
        ``(B, C, T)`` restored waveform (differentiable in ``params_norm``).
    """
    if degraded_wave.dim() != 3:
        raise ValueError(f"expected (B, C, T) audio, got shape {tuple(degraded_wave.shape)}")
    if params_norm.dim() != 3 or params_norm.shape[0] != degraded_wave.shape[0]:
        raise ValueError(
            f"expected (B={degraded_wave.shape[0]}, {param_table.N_PARAMS}, F) parameters, "
            f"got shape {tuple(params_norm.shape)}"
        )
    physical = param_table.unstack(params_norm)  # name -> (B, F) per frame, (B,) per clip
    return invert_chain(degraded_wave, int(sample_rate), physical)


class Cascade(nn.Module):
    """U-Net + BiLSTM forecaster; see the module docstring for the modes.

    Args:
        mode: ``"restore"``, ``"params"`` or ``"cascade"``.
        unet_depth, unet_width: U-Net downsamplings and base channels.
        lstm_hidden, lstm_layers: forecaster LSTM size (per direction) and depth.
        dropout: dropout in both networks.
        n_mels: mel bands of the input.
        db_range: dB span of the [0, 1] mel normalisation (for ``"mel_gain_db"``).
    """

    def __init__(
        self,
        mode: str = "cascade",
        unet_depth: int = 4,
        unet_width: int = 24,
        lstm_hidden: int = 128,
        lstm_layers: int = 2,
        dropout: float = 0.0,
        n_mels: int = 128,
        db_range: float = DB_MAX - DB_MIN,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.n_mels = n_mels
        self.db_range = float(db_range)
        self.unet = UNet(unet_depth, unet_width, dropout=dropout) if mode != "params" else None
        self.forecaster = (
            Forecaster(1, n_mels, lstm_hidden, lstm_layers, dropout)
            if mode != "restore"
            else None
        )

    @classmethod
    def from_config(cls, config: ModelConfig | Config) -> "Cascade":
        """Build from a :class:`ModelConfig` (or a full :class:`Config`, which also sets the mel
        size and the dB range of the normalisation)."""
        if isinstance(config, Config):
            audio = config.audio
            model_cfg = config.model
            extra = {"n_mels": audio.n_mels, "db_range": audio.db_max - audio.db_min}
        elif isinstance(config, ModelConfig):
            model_cfg, extra = config, {}
        else:
            raise TypeError(f"expected ModelConfig or Config, got {type(config).__name__}")
        return cls(
            mode=model_cfg.mode,
            unet_depth=model_cfg.unet_depth,
            unet_width=model_cfg.unet_width,
            lstm_hidden=model_cfg.lstm_hidden,
            lstm_layers=model_cfg.lstm_layers,
            dropout=model_cfg.dropout,
            **extra,
        )

    def n_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def forward(self, mel_norm: torch.Tensor, outputs: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """``(B, 1, M, F)`` degraded mel in [0, 1] -> dict.

        Args:
            mel_norm: the normalised degraded mel.
            outputs: ``("mel",)``, ``("params",)`` or both (default: everything the mode has);
                asking for one skips the other network (the chain path needs no U-Net).

        Returns:
            ``"mel"`` ``(B, 1, M, F)`` restored and ``"mel_gain_db"`` ``(B, 1, M, F)`` (restored -
            input in dB; restore/cascade modes); ``"params"`` ``(B, P, F)`` normalised
            (params/cascade modes).
        """
        if mel_norm.dim() != 4 or mel_norm.shape[1] != 1 or mel_norm.shape[2] != self.n_mels:
            raise ValueError(f"expected (B, 1, {self.n_mels}, F) mel, got shape {tuple(mel_norm.shape)}")
        available = self.outputs
        wanted = available if outputs is None else tuple(outputs)
        missing = [name for name in wanted if name not in available]
        if missing:
            raise ValueError(f"model mode {self.mode!r} has no {', '.join(missing)} output (has {', '.join(available)})")
        out: dict[str, torch.Tensor] = {}
        if self.unet is not None and "mel" in wanted:
            res = self.unet(mel_norm)
            out["mel"] = res["mel"]
            out["mel_gain_db"] = res["gain"] * self.db_range
        if self.forecaster is not None and "params" in wanted:
            out["params"] = self.forecaster(mel_norm)
        return out

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs this mode produces: ``"mel"`` and/or ``"params"``."""
        return tuple(name for name, net in (("mel", self.unet), ("params", self.forecaster)) if net is not None)

    def restore_waveform(
        self, degraded_wave: torch.Tensor, sample_rate: int, params_norm: torch.Tensor
    ) -> torch.Tensor:
        """Parametric repair ``(B, C, T) -> (B, C, T)``; see :func:`restore_waveform`."""
        if self.forecaster is None:
            raise ValueError("restore_waveform needs parameters: model mode 'restore' predicts none")
        return restore_waveform(degraded_wave, sample_rate, params_norm)
