"""Import shims for the Neuron SDK packages that cannot be installed here (torch_neuronx, neuronxcc, nki,
nkilib, libneuronxla), so that the REAL NxDI / NxD sources import and run in NxDI's CPU mode.

Test-only. The table below holds exactly the names NxD / NxDI import at module level on the CPU path
(../shared/vendor/nxdi-cpu-import-inventory.md) and on the import path of NxDI's accuracy utilities
(utils/accuracy.py, which imports the mllama / llama4 / pixtral / llama models). Each is one of:

* an equivalent: a trivial, documented stand-in (``get_platform_target() -> "trn2"``, a collectives
  config that only holds its replica groups, enums / data classes that only name values), or torch_neuronx's
  test-only logit comparison reimplemented from its documented algorithm (validation_equivalent.py: what
  NxDI's ``check_accuracy_logits_v2`` calls); every use is counted in ``EQUIVALENT_USES``;
* a stub that raises ``ShimReached`` the moment it is called, instantiated or has an attribute read;
  every reach is recorded in ``REACHED``, so a test fails even where NxDI catches the exception.

No compiler, runtime or kernel code is faked: anything that would compile or run on a NeuronCore raises.
``install()`` puts the shims in ``sys.modules`` (idempotent); call it before importing NxD / NxDI.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import sys
import types
from collections import Counter
from dataclasses import dataclass

import validation_equivalent  # this folder is on sys.path wherever the shims are

REACHED: list[str] = []
EQUIVALENT_USES: Counter = Counter()


class ShimReached(RuntimeError):
    """A Neuron SDK name that only the compiler / runtime / a NKI kernel provides was used."""


def _reach(name: str):
    REACHED.append(name)
    raise ShimReached(f"{name} is Neuron SDK code that does not exist here (import shim): the CPU path must "
                      f"not reach it")


def _reach_attribute(owner: str, attr: str):
    if attr.startswith("__"):  # dunders: absent, as on any object (pickle, inspect, annotations probe them)
        raise AttributeError(attr)
    _reach(f"{owner}.{attr}")


class _RaisingMeta(type):
    def __call__(cls, *args, **kwargs):
        _reach(cls._shim_name)

    def __getattr__(cls, attr):
        _reach_attribute(cls._shim_name, attr)


def raising(name: str) -> type:
    """A stand-in that raises when called, instantiated or read (a class, so annotations accept it)."""
    return _RaisingMeta(name.rpartition(".")[2], (), {"_shim_name": name})


def raising_decorator(name: str):
    """``@jit`` / ``@jit(...)``: decorating works (it happens at import), calling the result raises."""

    def wrap(fn):
        def stub(*args, **kwargs):
            _reach(f"{name}({getattr(fn, '__name__', fn)})")

        stub.__name__ = getattr(fn, "__name__", "stub")
        return stub

    def decorator(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return wrap(args[0])
        return wrap

    return decorator


def equivalent(name: str, fn):
    def counted(*args, **kwargs):
        EQUIVALENT_USES[name] += 1
        return fn(*args, **kwargs)

    counted.__name__ = name.rpartition(".")[2]
    return counted


class _RaisingModule(types.ModuleType):
    """A module whose every (non-dunder) attribute read raises; submodules set on it still resolve."""

    def __getattr__(self, attr):
        _reach_attribute(self.__name__, attr)


# ---------------------------------------------------------------------------------------------- equivalents
def get_platform_target(*args, **kwargs) -> str:
    """torch_neuronx.utils.get_platform_target: the compile target; on trn2 it is "trn2"."""
    return "trn2"


@dataclass
class CollectivesConfig:
    """neuronxcc.nki._private_kernels.collectives.CollectivesConfig: NxD builds it from the context-parallel
    replica groups and reads ``rank_src_tgt_pairs[rank]`` (the ring of the rank's group, for the ring
    attention kernel only): each group's ring as (source, target) pairs."""

    replica_groups: list

    @property
    def rank_src_tgt_pairs(self) -> dict:
        return {rank: [[g[i], g[(i + 1) % len(g)]] for i in range(len(g))]
                for g in self.replica_groups for rank in g}


# nkilib enums and data classes NxD / NxDI name at import time (the members they reference); values only
# identify members, nothing computes with them on the CPU path.
BlockShardStrategy = enum.Enum("BlockShardStrategy", "HI_LO PING_PONG")
QKVOutputLayout = enum.Enum("QKVOutputLayout", "BSD NBSd")
NormType = enum.Enum("NormType", "NO_NORM RMS_NORM RMS_NORM_SKIP_GAMMA LAYER_NORM")
ActFnType = enum.Enum("ActFnType", "SiLU GELU GELU_Tanh_Approx Swish SIGMOID SOFTMAX")
RouterActFnType = enum.Enum("RouterActFnType", "SIGMOID SOFTMAX")
ExpertAffinityScaleMode = enum.Enum("ExpertAffinityScaleMode", "NO_SCALE POST_SCALE PRE_SCALE PRE_SCALE_DELAYED")
QuantizationType = enum.Enum("QuantizationType", "NONE ROW STATIC DYNAMIC MX")
QKVWeightLayout = enum.Enum("QKVWeightLayout", "FUSED SEPARATE")
GateUpDim = enum.Enum("GateUpDim", "FUSED SEPARATE")


@dataclass(frozen=True)
class SkipMode:
    skip_token: bool = False
    skip_weight: bool = False


# ---------------------------------------------------------------------------------------------- the table
R = "raises"


class Module(dict):
    """A module whose every attribute raises but the ones given (equivalents)."""


MODULE = Module()  # a module whose attributes all raise
# nki.language.tile_size: NKI's hardware constants; NxDI reads pmax (a tile's 128 partitions, NKI's docs) at import
TILE_SIZE = _RaisingMeta("tile_size", (), {"_shim_name": "neuronxcc.nki.language.tile_size", "pmax": 128})
HLO_PB2 = ("HloModuleProto", "HloComputationProto", "HloInstructionProto", "HloInputOutputAliasProto", "Kind")
TRACE = ("get_torch_dtype", "HloArtifacts", "generate_neff", "NeffArtifacts", "hlo_entry_computation",
         "get_hlo_computation_by_id", "get_hlo_root_instruction", "XLA_DTYPE_TO_METANEFF_DTYPE")
NKI_LANGUAGE = ("ndarray", "float16", "bfloat16", "float32", "int32", "float4_e2m1fn_x4")

SHIMS: dict[str, dict | object] = {
    "libneuronxla": {"neuron_xla_compile": R},
    "neuronxcc.nki": {"jit": "decorator"},
    "neuronxcc.nki._private_kernels.collectives": {"CollectivesConfig": CollectivesConfig},
    "neuronxcc.nki.compiler.backends.neuron.dimensions": {"VNC": R},
    "neuronxcc.nki.kernels.attention": {"FlashConfig": R, "attention_isa_kernel": R},
    "neuronxcc.nki.language": Module(tile_size=TILE_SIZE),
    "nki": {"jit": "decorator"},
    "nki.isa": MODULE,
    "nki.language": {name: R for name in NKI_LANGUAGE},
    # absent kernel: NxDI's import_nki_cte_attention_kernel reads getattr(module, "attention_cte", None) and
    # falls back when it is None (modules/attention/attention_base.py)
    "nkilib.core.attention.attention_cte": {},
    "nkilib.core.cumsum.cumsum": {"cumsum": R},
    "nkilib.core.max.cascaded_max": {"cascaded_max": R},
    "nkilib.core.moe.moe_cte.moe_cte_utils": {"BlockShardStrategy": BlockShardStrategy, "SkipMode": SkipMode},
    "nkilib.core.mlp.mlp": {"mlp": R},
    "nkilib.core.moe_block.moe_block_tkg": {"moe_block_tkg": R},
    "nkilib.core.output_projection.output_projection_cte": {"output_projection_cte": R},
    "nkilib.core.qkv.qkv": {"qkv": R},
    "nkilib.core.rmsnorm.rmsnorm_quant": {"rmsnorm_quant_kernel": R, "RmsNormQuantKernelArgs": R},
    "nkilib.core.subkernels.find_nonzero_indices": {"find_nonzero_indices": R},
    "nkilib.core.subkernels.indexed_flatten": {"indexed_flatten": R},
    "nkilib.core.topk": {"topk": R},
    "nkilib.core.utils.common_types": {
        "QKVOutputLayout": QKVOutputLayout, "NormType": NormType, "ActFnType": ActFnType,
        "RouterActFnType": RouterActFnType, "ExpertAffinityScaleMode": ExpertAffinityScaleMode,
        "QuantizationType": QuantizationType, "QKVWeightLayout": QKVWeightLayout, "GateUpDim": GateUpDim},
    "nkilib.core.utils.kernel_helpers": {"get_verified_program_sharding_info": R, "kernel_assert": R},
    "nkilib.core.utils.tensor_view": {"TensorView": R},
    "nkilib.experimental.transformer.attention_block_tkg": {"attention_block_tkg": R},
    # ModelBuilder (trace/model_builder.py) requires the torch-neuronx 2.x line: the one matching torch 2.9
    "torch_neuronx": {"BucketModelConfig": R, "__version__": "2.9.0+shim"},
    "torch_neuronx.experimental.profiler.v2_x.custom_op_name": {"hlo_debug": R},
    "torch_neuronx.proto.metaneff_pb2": {"MetaNeff": R, "MetaTensor": R},
    "torch_neuronx.pyhlo.hlo_pb2": {name: R for name in HLO_PB2},
    "torch_neuronx.pyhlo.xla_data_pb2": {"PrimitiveType": R},
    # not on the CPU path's import list, but NxDI's accuracy utilities import it (check_accuracy_logits_v2):
    # logit_validation / custom_allclose are reimplemented from torch_neuronx's algorithm (validation_equivalent)
    "torch_neuronx.testing.validation": {"custom_allclose": validation_equivalent.custom_allclose,
                                         "logit_validation": validation_equivalent.logit_validation,
                                         "neuron_allclose": R, "AllCloseSummary": R},
    "torch_neuronx.utils": {"get_platform_target": get_platform_target},
    "torch_neuronx.utils.utils": {"get_platform_target": get_platform_target, "SUPPORTED_TYPES": R},
    "torch_neuronx.xla_impl": MODULE,
    "torch_neuronx.xla_impl.base": {"xla_call": "decorator", "xla_hlo_call": "decorator"},
    "torch_neuronx.xla_impl.bucket_trace": {"create_bucket_model": R},
    "torch_neuronx.xla_impl.custom_call_targets": {"AwsNeuronModuleMarkerEndForward": R,
                                                   "AwsNeuronModuleMarkerStartForward": R},
    "torch_neuronx.xla_impl.ops": {"nki_jit": "decorator", "RmsNorm": R, "xla_hlo_call": "decorator",
                                   "Argmax": R, "TopK": R, "ConcatenateOp": R},
    "torch_neuronx.xla_impl.structure": {"Packer": R, "Flattener": R},
    "torch_neuronx.xla_impl.torchscript": {"replace_weights": R},
    "torch_neuronx.xla_impl.trace": {name: R for name in TRACE},
}
# torch.classes.neuron.* are registered by torch_neuronx's C++ extension; NxD names them in annotations.
TORCH_CLASSES = ("SPMDModel", "LayoutTransformation", "Runtime")


def _build(name: str, spec) -> types.ModuleType:
    module = (_RaisingModule if isinstance(spec, Module) else types.ModuleType)(name)
    module.__file__ = __file__
    module.__path__ = []  # every shim may have submodules
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    for attr, value in spec.items():
        full = f"{name}.{attr}"
        if value == R:
            value = raising(full)
        elif value == "decorator":
            value = raising_decorator(full)
        elif isinstance(value, types.FunctionType):
            value = equivalent(full, value)
        setattr(module, attr, value)
    return module


def install() -> None:
    """Make the shims importable (idempotent). Raises if a real Neuron SDK package is present, so the shims
    can never shadow the real thing."""
    if "torch_neuronx" in sys.modules and getattr(sys.modules["torch_neuronx"], "__file__", None) == __file__:
        return
    real = [top for top in ("torch_neuronx", "neuronxcc", "nki", "nkilib", "libneuronxla")
            if importlib.util.find_spec(top) is not None]
    if real:
        raise RuntimeError(f"the Neuron SDK is installed ({', '.join(real)}): run without the test shims")
    for name in sorted(SHIMS, key=lambda n: n.count(".")):  # parents first; unlisted ones are empty packages
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix == name or prefix not in sys.modules:
                sys.modules[prefix] = _build(prefix, SHIMS[name] if prefix == name else {})
                if depth > 1:
                    setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], sys.modules[prefix])

    import torch

    torch.classes.neuron = types.SimpleNamespace(**{cls: raising(f"torch.classes.neuron.{cls}")
                                                    for cls in TORCH_CLASSES})
