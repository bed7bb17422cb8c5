"""The NxDI generation of zaya1's vLLM plugin (vllm-neuron 0.2-0.5; ``zaya1.vllm_plugin`` chooses it): lets
vllm-neuron serve ZAYA1 through ``NeuronZayaForCausalLM`` with no patch to vLLM, vllm-neuron or NxDI. See
docs/vllm.md.

vLLM calls ``register()`` once in every process it starts (engine, engine core, each worker). It registers
what that process can use, and is silent (never raises) where vLLM, transformers or the Neuron SDK is absent:

* ``AutoConfig`` ``model_type: zaya`` (transformers < 5.23): vLLM's ``ModelConfig`` and NxDI's
  ``load_pretrained_config`` read config.json through it (``hf_config.ZayaHFConfig``).
* NxDI's ``MODEL_TYPES["zaya"]["causal-lm"]`` = ``NeuronZayaForCausalLM`` (``zaya1.neuron.register``):
  vllm-neuron maps ``architectures[0]`` "ZayaForCausalLM" to it.
* vLLM's ``ModelRegistry``: vLLM refuses an architecture it has no class for, although vllm-neuron never
  builds vLLM's class; ``ZayaForCausalLMStub`` fills that slot (unless vLLM has its own ZayaForCausalLM).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..errors import NeuronUnavailableError
from . import register as register_nxdi
from . import sdk_available

ARCHITECTURE = "ZayaForCausalLM"
STUB_ERROR = ("vLLM tried to build its own ZayaForCausalLM: zaya1 serves ZAYA1 in vLLM only through vllm-neuron "
              "(NxDI's NeuronZayaForCausalLM on Trainium). Run vLLM with the vllm-neuron platform on a trn2 "
              "instance (docs/vllm.md), or use zaya1.ZayaForCausalLM / `zaya1 generate` on CPU and GPU.")


class ZayaForCausalLMStub(nn.Module):
    """The model-registry entry vLLM requires for "ZayaForCausalLM". vllm-neuron runs NxDI's model instead,
    so building or calling this one is a platform mistake, reported as such."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__()
        raise NeuronUnavailableError(STUB_ERROR)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:  # vLLM >= 0.12's VllmModel interface
        raise NeuronUnavailableError(STUB_ERROR)

    get_input_embeddings = embed_input_ids  # its name before vLLM 0.12

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds=None) -> torch.Tensor:
        raise NeuronUnavailableError(STUB_ERROR)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NeuronUnavailableError(STUB_ERROR)


def register_auto_config_if_needed() -> None:
    """``model_type: zaya`` in transformers' AutoConfig where transformers is installed (a no-op on >= 5.23)."""
    if importlib.util.find_spec("transformers") is not None:
        from .hf_config import register_auto_config  # transformers is optional for zaya1

        register_auto_config()


def register() -> None:
    """Register ZAYA1 wherever this process can use it (module docstring); safe to call more than once."""
    if sdk_available():
        register_nxdi()  # NxDI's model types and the AutoConfig registration
    else:
        register_auto_config_if_needed()
    if importlib.util.find_spec("vllm") is not None:
        from vllm import ModelRegistry

        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:ZayaForCausalLMStub")
