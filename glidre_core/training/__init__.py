"""Training: typed config, the single-process loop (reused inside Ray Train workers)."""

from glidre_core.training.config import DataConfig, TrainingConfig, load_training_config
from glidre_core.training.trainer import Trainer, TrainingResult

__all__ = ["DataConfig", "Trainer", "TrainingConfig", "TrainingResult", "load_training_config"]
