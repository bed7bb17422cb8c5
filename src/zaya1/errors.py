"""Error types, and their one-line report at the entry points. Each derives from the builtin a caller would
catch for that kind of mistake, and every message says what is wrong, where (file, tensor key, argument)
and how to fix it."""

import sys


class ZayaError(Exception):
    """Base class of every error zaya1 raises on purpose."""


class ConfigError(ZayaError, ValueError):
    """config.json is unreadable, incomplete or asks for something ZAYA1 inference does not support."""


class CheckpointNotFoundError(ZayaError, FileNotFoundError):
    """A checkpoint directory or one of its files does not exist."""


class CheckpointError(ZayaError, ValueError):
    """The weights do not match the config: missing, unexpected or mis-shaped tensors, broken files."""


class InputError(ZayaError, ValueError):
    """Bad arguments to forward / generate: token ids, lengths, sampling parameters."""


class ArtifactError(ZayaError, ValueError):
    """Compiled Neuron artifacts are incomplete or were built for another configuration, or an output
    (artifacts, converted weights) cannot be written."""


class NeuronUnavailableError(ZayaError, ImportError):
    """The Neuron SDK (torch-neuronx, neuronx-distributed, NxDI) is not installed."""


def run_reporting_errors(prog: str, fn, *args) -> int:
    """fn(*args), with a zaya1 error printed as one line (what, where, how to fix) and exit status 2."""
    try:
        return fn(*args)
    except ZayaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
