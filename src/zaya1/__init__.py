"""zaya1: ZAYA1 inference, exact in plain PyTorch and fast on AWS Trainium2 through NxDI."""

from .config import ZayaConfig
from .errors import (ArtifactError, CheckpointError, CheckpointNotFoundError, ConfigError, InputError,
                     NeuronUnavailableError, ZayaError)
from .model import ZayaForCausalLM, ZayaState
from .version import __version__

_NEURON_NAMES = ("NeuronZayaForCausalLM", "ZayaInferenceConfig", "ZayaNeuronConfig")


def __getattr__(name):
    # the Neuron backend is imported on first use only (it imports the Neuron SDK when present)
    if name in _NEURON_NAMES:
        from . import neuron

        return getattr(neuron, name)
    raise AttributeError(f"module 'zaya1' has no attribute {name!r}")


__all__ = ["ZayaConfig", "ZayaForCausalLM", "ZayaState", "ZayaError", "ConfigError", "CheckpointError",
           "CheckpointNotFoundError", "InputError", "ArtifactError", "NeuronUnavailableError", *_NEURON_NAMES]
