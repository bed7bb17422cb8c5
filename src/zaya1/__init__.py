"""zaya1: ZAYA1 inference, exact in plain PyTorch and fast on AWS Trainium2 through NxDI."""

from .config import ZayaConfig
from .errors import (ArtifactError, CheckpointError, CheckpointNotFoundError, ConfigError, InputError,
                     NeuronUnavailableError, ZayaError)
from .model import ZayaForCausalLM, ZayaState

__version__ = "0.1.0"
