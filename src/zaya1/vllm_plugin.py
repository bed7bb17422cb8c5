"""vLLM general plugin (entry point group ``vllm.general_plugins``, name ``zaya1``): one entry point for both
generations of vllm-neuron, registering exactly one ZAYA1 model in each vLLM process.

* vllm-neuron >= 0.21 (Neuron SDK >= 2.34; native models only): vLLM's ``ModelRegistry`` maps
  "ZayaForCausalLM" to ``zaya1.vllm_neuron.ZayaNativeForCausalLM`` (docs/vllm-neuron.md).
* vllm-neuron 0.2-0.5 (NxDI-based, SDK <= 2.33), or no vllm-neuron: the NxDI registration of
  ``zaya1.neuron.vllm_plugin`` (docs/vllm.md).
"""

from __future__ import annotations

import importlib.metadata
import re

from .neuron import vllm_plugin as nxdi_plugin

NATIVE_FROM = (0, 21)  # vllm-neuron 0.21 dropped NxDI models (NxDI commit 7647724)
NATIVE_MODEL = "zaya1.vllm_neuron.model:ZayaNativeForCausalLM"


def vllm_neuron_generation() -> str | None:
    """"native" for vllm-neuron >= 0.21, "nxdi" for older releases, None when it is not installed."""
    try:
        version = importlib.metadata.version("vllm-neuron")
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    return "native" if numbers >= NATIVE_FROM else "nxdi"


def register() -> None:
    """Register ZAYA1 for the vllm-neuron generation of this process; safe to call more than once."""
    if vllm_neuron_generation() == "native":
        nxdi_plugin.register_auto_config_if_needed()
        from vllm import ModelRegistry  # the native plugin runs inside vLLM

        ModelRegistry.register_model(nxdi_plugin.ARCHITECTURE, NATIVE_MODEL)
    else:
        nxdi_plugin.register()
