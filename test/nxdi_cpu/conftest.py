"""NxDI CPU stage: runs the Neuron backend through the real NxDI / NxD sources in NxDI's CPU mode.

Needs the environment of scripts/nxdi_cpu_env.sh (torch 2.9 + torch-xla, transformers 4.57, NxD and NxDI
installed from source); elsewhere every module here skips with the reason. The Neuron SDK's compiler and
runtime packages are replaced by the import shims in shims/ (documented equivalents or stubs that raise).
"""
import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "shims")]
NXDI = importlib.util.find_spec("neuronx_distributed_inference") is not None
SKIP_REASON = ("NxDI / NxD are not installed: the NxDI CPU stage runs in the environment of "
               "scripts/nxdi_cpu_env.sh (README 'Testing')")

if NXDI:
    import neuron_sdk_shims

    neuron_sdk_shims.install()


@pytest.fixture(autouse=True)
def no_shim_reached():
    """Every test fails if it reached Neuron SDK code the shims only stub, even if NxDI caught the error."""
    if not NXDI:
        yield
        return
    del neuron_sdk_shims.REACHED[:]
    yield
    assert not neuron_sdk_shims.REACHED, f"raising Neuron SDK stubs were reached: {neuron_sdk_shims.REACHED}"
