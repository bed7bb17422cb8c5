"""AWS Trainium2 backend through NeuronX Distributed Inference (NxDI).

``NeuronZayaForCausalLM``, ``ZayaInferenceConfig`` and ``ZayaNeuronConfig`` import without the Neuron SDK;
using them without it raises ``NeuronUnavailableError`` with install instructions. The model math is the
same torch modules as the CPU path (zaya1.model); this package only adapts them to NxDI's contracts.
"""

from __future__ import annotations

import importlib.util

from ..errors import NeuronUnavailableError

SDK_PACKAGES = ("torch_neuronx", "neuronx_distributed", "neuronx_distributed_inference")
INSTALL_HINT = (
    "The Neuron SDK is not installed. On a Trainium2 instance (Neuron DLAMI), activate the NxDI virtualenv "
    "(e.g. `source /opt/aws_neuronx_venv_pytorch_*_nxd_inference/bin/activate`) or install from the Neuron "
    "package repository: `pip install --extra-index-url https://pip.repos.neuron.amazonaws.com "
    "neuronx-distributed-inference`, then `pip install -e .` in this repository.")


def sdk_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in SDK_PACKAGES)


def missing_sdk_packages() -> list[str]:
    return [name for name in SDK_PACKAGES if importlib.util.find_spec(name) is None]


class _Unavailable(type):
    """Metaclass of the placeholders: instantiating one or reading any attribute explains what to install."""

    def __call__(cls, *args, **kwargs):
        raise NeuronUnavailableError(f"{cls.__name__} needs {', '.join(missing_sdk_packages())}. {INSTALL_HINT}")

    def __getattr__(cls, name):
        raise NeuronUnavailableError(f"{cls.__name__}.{name} needs {', '.join(missing_sdk_packages())}. "
                                     f"{INSTALL_HINT}")


if sdk_available():
    from neuronx_distributed_inference.models.config import OnDeviceSamplingConfig

    from .application import NeuronZayaForCausalLM
    from .hf_config import register_auto_config  # NxDI needs transformers, so it is there
    from .modeling import NeuronZayaModel, ZayaInferenceConfig, ZayaNeuronConfig
else:
    NeuronZayaForCausalLM = _Unavailable("NeuronZayaForCausalLM", (), {"__module__": __name__})
    NeuronZayaModel = _Unavailable("NeuronZayaModel", (), {"__module__": __name__})
    ZayaInferenceConfig = _Unavailable("ZayaInferenceConfig", (), {"__module__": __name__})
    ZayaNeuronConfig = _Unavailable("ZayaNeuronConfig", (), {"__module__": __name__})
    OnDeviceSamplingConfig = _Unavailable("OnDeviceSamplingConfig", (), {"__module__": __name__})

MODEL_TYPE = "zaya"  # vllm-neuron looks up architectures[0] "ZayaForCausalLM" -> "zaya" / "causal-lm"


def register() -> None:
    """Register ZAYA1 in NxDI's model registry (``MODEL_TYPES``, mutated in place: vllm-neuron imports the
    dict by name) and, on transformers < 5.23, ``model_type: zaya`` in ``AutoConfig`` (NxDI's
    ``load_pretrained_config`` reads config.json through it), without editing any installed file. Call it in
    every process that loads models; for vLLM the ``vllm.general_plugins`` entry point
    (``zaya1.neuron.vllm_plugin:register``) does, in each process."""
    if not sdk_available():
        raise NeuronUnavailableError(f"zaya1.neuron.register() needs {', '.join(missing_sdk_packages())}. "
                                     f"{INSTALL_HINT}")
    from neuronx_distributed_inference.utils.constants import MODEL_TYPES

    register_auto_config()
    MODEL_TYPES[MODEL_TYPE] = {"causal-lm": NeuronZayaForCausalLM}


__all__ = ["NeuronZayaForCausalLM", "NeuronZayaModel", "ZayaInferenceConfig", "ZayaNeuronConfig",
           "OnDeviceSamplingConfig", "register", "sdk_available", "INSTALL_HINT"]
