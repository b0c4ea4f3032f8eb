"""Checkpoints: run folders, foreign state dicts, and the loader curate uses."""

from .foreign import load_foreign_weights, read_state_dict
from .loader import LoadedModel, load_model
from .run_folder import CONFIG, METRICS, STATE, WEIGHTS, ModelConfig, load_run, new_model, read_config, save_run

__all__ = [
    "CONFIG",
    "METRICS",
    "STATE",
    "WEIGHTS",
    "LoadedModel",
    "ModelConfig",
    "load_foreign_weights",
    "load_model",
    "load_run",
    "new_model",
    "read_config",
    "read_state_dict",
    "save_run",
]
