"""Training, evaluation and inference, shared by every encoder and benchmark."""

from sne.train.run import TrainConfig, TrainedRun, as_record, fit, load_run
from sne.train.targets import Target

__all__ = ["TrainConfig", "TrainedRun", "Target", "as_record", "fit", "load_run"]
