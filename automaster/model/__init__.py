"""The model: U-Net (mel restoration) + BiLSTM forecaster (effect parameters), losses, checkpoints.

Torch only: no ray, no mlflow.
"""

from automaster.model.cascade import MODES, Cascade, restore_waveform
from automaster.model.checkpoint import CheckpointError, load_model, load_training_state, save_checkpoint
from automaster.model.forecaster import Forecaster
from automaster.model.losses import (
    CompositeLoss,
    MelL1,
    MelMultiScaleLoss,
    MultiResolutionSTFTLoss,
    ParamLoss,
    mel_l1_db,
)
from automaster.model.unet import UNet

__all__ = [
    "MODES",
    "Cascade",
    "CheckpointError",
    "CompositeLoss",
    "Forecaster",
    "MelL1",
    "MelMultiScaleLoss",
    "MultiResolutionSTFTLoss",
    "ParamLoss",
    "UNet",
    "load_model",
    "load_training_state",
    "mel_l1_db",
    "restore_waveform",
    "save_checkpoint",
]
