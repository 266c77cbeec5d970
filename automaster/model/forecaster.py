"""LSTM forecaster: per-frame effect parameters from the whole spectrogram.

The thesis fed its LSTM one mean value per frame, which throws away where in frequency the damage
sits (an EQ bell at 200 Hz and one at 5 kHz have the same mean). Here a small conv front-end reads
every mel band of every frame (with a 3-frame temporal context), folds the frequency axis into a
feature vector per frame, and a bidirectional LSTM runs over the frames.

Shapes: input ``(B, C, M, F)`` (``C`` mel channels, e.g. degraded and restored), output
``(B, P, F)`` normalised parameters in (0, 1) in ParamSpec table order. Per-clip parameters are
predicted per frame too; :func:`automaster.effects.params.unstack` averages them over frames.
"""

from __future__ import annotations

import torch
from torch import nn

from automaster.effects.params import N_PARAMS


class FrequencyFrontEnd(nn.Module):
    """Conv stack striding over frequency only: ``(B, C, M, F)`` -> ``(B, F, D)``.

    Each layer halves the mel axis (kernel 5 over frequency, 3 over time, stride (2, 1)) so the
    frame axis is untouched: any ``F`` works, no padding and no crop.
    """

    def __init__(self, in_channels: int, n_mels: int = 128, channels: int = 32, n_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        m = n_mels
        for i in range(n_layers):
            c = channels // 2 if i == 0 else channels
            layers += [
                # No normalisation layer: the absolute level of the input (what the output gain
                # and the compressor threshold are about) must survive; BatchNorm's running
                # statistics also made crops (training) and full tracks (inference) disagree.
                nn.Conv2d(prev, c, kernel_size=(5, 3), stride=(2, 1), padding=(2, 1)),
                nn.ReLU(inplace=True),
            ]
            prev = c
            m = (m + 1) // 2
        self.net = nn.Sequential(*layers)
        self.out_features = prev * m
        self.n_mels = n_mels

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.shape[-2] != self.n_mels:
            raise ValueError(f"expected {self.n_mels} mel bands, got shape {tuple(mel.shape)}")
        h = self.net(mel)  # (B, C', M', F)
        b, c, m, f = h.shape
        return h.reshape(b, c * m, f).transpose(1, 2)  # (B, F, C' * M')


class Forecaster(nn.Module):
    """Conv front-end -> BiLSTM over frames -> sigmoid -> ``(B, P, F)`` in (0, 1).

    The sigmoid is the only bound: no clamps, so a parameter near its range's edge still gets a
    gradient (the thesis's clamps pinned predictions at the bounds with zero gradient).

    Args:
        in_channels: mel channels read (1: degraded only; 2: degraded and restored).
        n_mels: mel bands.
        hidden: LSTM hidden size per direction.
        layers: LSTM layers.
        dropout: dropout between LSTM layers and before the output projection.
        n_params: parameters predicted (the ParamSpec table's size).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_mels: int = 128,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        n_params: int = N_PARAMS,
        frontend_channels: int = 32,
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"expected hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
        self.in_channels = in_channels
        self.frontend = FrequencyFrontEnd(in_channels, n_mels, frontend_channels)
        self.proj = nn.Sequential(nn.Linear(self.frontend.out_features, hidden), nn.ReLU(inplace=True))
        self.lstm = nn.LSTM(
            hidden,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, n_params)
        self.n_params = n_params

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, C, M, F)`` mels in [0, 1] -> ``(B, P, F)`` normalised parameters in (0, 1)."""
        if mel.dim() != 4 or mel.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, n_mels, F) mel, got shape {tuple(mel.shape)}")
        h = self.proj(self.frontend(mel))  # (B, F, H)
        h, _ = self.lstm(h)  # (B, F, 2H)
        logits = self.head(self.dropout(h))  # (B, F, P)
        return torch.sigmoid(logits).transpose(1, 2)  # (B, P, F)
