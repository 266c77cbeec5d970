"""Ray-free training: fresh damage of clean audio, a plain torch loop on one device, checkpoints.

``python -m automaster.training --audio <folder> --out <dir>`` trains without Ray or MLflow;
the Ray Train and Tune jobs (:mod:`automaster.pipelines.train`) wrap the same loop.
"""

from automaster.training.loop import Reporter, monitor_metric, train

__all__ = ["Reporter", "monitor_metric", "train"]
