"""Bookkeeping for compiled Neuron artifacts, in plain Python (no Neuron SDK import), so it runs and is
tested anywhere.

* ``ArtifactManifest``: what a compile was made for (tp degree, batch, lengths, buckets, dtype, the
  checkpoint's fingerprint, zaya1 and Neuron SDK versions). ``check_manifest`` compares it with a request
  and names every field that differs; ``check_request`` checks a generation request against it.
* ``atomic_output_dir``: compile into ``<final>.partial-<pid>``, write the manifest last (its presence is
  the completion marker) and only then move the directory into place. A failed or interrupted compile
  leaves nothing that looks complete, and a previous complete compile stays untouched until the new one
  has succeeded (zaya1.atomic.atomic_dir). ``compile_lock`` keeps two compiles out of one directory.

Typical use by the compile script::

    manifest = ArtifactManifest.for_checkpoint(model_dir, tp_degree=4, batch_size=1, seq_len=4096,
                                               max_context_length=2048, buckets=[512, 1024, 2048])
    with atomic_output_dir(out_dir, manifest) as tmp:   # fails at once if out_dir is locked / unwritable
        neuron_model.compile(tmp)
    ...
    manifest = load_manifest(out_dir)                    # incomplete dir -> ArtifactError
    check_manifest(manifest, ArtifactManifest.for_checkpoint(model_dir, ...), artifacts_dir=out_dir)
    check_request(manifest, batch_size, prompt_lengths, max_new_tokens)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import os
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..atomic import atomic_dir, ensure_parent, unwritable
from ..config import FP8, ZayaConfig
from ..errors import ArtifactError, CheckpointError, CheckpointNotFoundError, ConfigError, InputError
from ..version import __version__

try:
    import fcntl
except ImportError:  # not POSIX: fall back to an O_EXCL lock file
    fcntl = None

MANIFEST_NAME = "zaya1-artifacts.json"  # written last: its presence marks a complete compile
FORMAT_VERSION = 1
COMPILE_SCRIPT = "scripts/compile.py"
NEURON_PACKAGES = ("neuronx-cc", "torch-neuronx", "neuronx-distributed", "neuronx-distributed-inference",
                   "libneuronxla")
EXPERT_DTYPES = ("model", "fp8")  # --expert-dtype: experts in the model dtype, or fp8 (zaya1.quantization)
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# field -> compile script flag, for "recompile with ..." hints
_FLAGS = {"tp_degree": "--tp-degree", "batch_size": "--batch-size", "seq_len": "--seq-len",
          "max_context_length": "--max-context-length", "buckets": "--buckets",
          "token_generation_buckets": "--token-generation-buckets", "dtype": "--dtype",
          "on_device_sampling": "--on-device-sampling", "expert_dtype": "--expert-dtype"}
_SETTINGS = tuple(_FLAGS)  # fields a caller can match instead of recompiling


def neuron_sdk_versions() -> dict[str, str]:
    """Installed versions of the Neuron SDK packages (from package metadata; nothing is imported). Empty
    off-Neuron."""
    from importlib import metadata

    versions = {}
    for name in NEURON_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def expert_dtype_flag(flag: str) -> str | None:
    """--expert-dtype as ZayaConfig.with_expert_dtype takes it (None: the experts as the checkpoint stores them)."""
    return None if flag == "model" else flag


def graph_expert_dtype(zaya: ZayaConfig, where: str) -> str:
    """The experts' dtype in the NxDI graphs ("model" or "fp8", as the manifest records it); ConfigError for
    a format the NxDI backend does not compile (mxfp4: the native vLLM-Neuron model runs it)."""
    if zaya.expert_quantization not in (None, FP8):
        raise ConfigError(f"{where}: {zaya.expert_quantization} experts (config.json's quantization_config) are "
                          f"not supported by the NxDI backend, which holds experts in the model dtype or fp8. "
                          f"Compile the bf16 checkpoint (e.g. Zyphra/ZAYA1-8B), with --expert-dtype fp8 for "
                          f"fp8 experts.")
    return zaya.expert_quantization or "model"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).lower().removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype={dtype!r} is not supported for compiled artifacts: use bfloat16, float16 or "
                          f"float32.")
    return DTYPE_NAMES[name]


# ---------------------------------------------------------------------------------------------- manifest
@dataclass
class ArtifactManifest:
    """What one set of compiled artifacts was built for. Written as ``zaya1-artifacts.json``."""

    tp_degree: int
    batch_size: int
    seq_len: int  # total positions per sequence (prompt + new tokens)
    max_context_length: int  # longest prompt the context-encoding graphs take
    buckets: list[int]  # context-encoding buckets; empty means [max_context_length]
    dtype: str
    checkpoint_fingerprint: str  # fingerprint_checkpoint() of the checkpoint the weights came from
    zaya1_version: str = __version__
    neuron_versions: dict[str, str] = field(default_factory=dict)  # empty off-Neuron
    on_device_sampling: bool = False
    token_generation_buckets: list[int] = field(default_factory=list)  # KV-length buckets; empty = [seq_len]
    expert_dtype: str = "model"  # the experts in the graphs: "model" (dtype) or "fp8" (codes + row scales)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        for name in ("tp_degree", "batch_size", "seq_len", "max_context_length"):
            if not _positive_int(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer "
                                  f"({COMPILE_SCRIPT} {_FLAGS[name]}).")
        if self.max_context_length > self.seq_len:
            raise ConfigError(f"max_context_length={self.max_context_length} exceeds seq_len={self.seq_len}: a "
                              f"prompt cannot be longer than the sequence. Lower --max-context-length or raise "
                              f"--seq-len.")
        self.buckets = self._check_buckets("buckets", self.buckets, self.max_context_length, "max_context_length")
        self.token_generation_buckets = self._check_buckets("token_generation_buckets",
                                                            self.token_generation_buckets, self.seq_len, "seq_len")
        self.dtype = _dtype_name(self.dtype)
        if not isinstance(self.checkpoint_fingerprint, str) or not self.checkpoint_fingerprint:
            raise ConfigError(f"checkpoint_fingerprint={self.checkpoint_fingerprint!r} must be the non-empty "
                              f"string from fingerprint_checkpoint(checkpoint_dir).")
        if not isinstance(self.zaya1_version, str):
            raise ConfigError(f"zaya1_version={self.zaya1_version!r} must be a string.")
        if not isinstance(self.neuron_versions, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.neuron_versions.items()):
            raise ConfigError(f"neuron_versions={self.neuron_versions!r} must map package names to version "
                              f"strings.")
        if self.expert_dtype not in EXPERT_DTYPES:
            raise ConfigError(f"expert_dtype={self.expert_dtype!r} must be one of {EXPERT_DTYPES} "
                              f"({COMPILE_SCRIPT} --expert-dtype).")
        if not isinstance(self.on_device_sampling, bool):
            raise ConfigError(f"on_device_sampling={self.on_device_sampling!r} must be true or false.")
        if not _positive_int(self.format_version):
            raise ConfigError(f"format_version={self.format_version!r} must be a positive integer.")

    @staticmethod
    def _check_buckets(name: str, buckets: Any, limit: int, limit_name: str) -> list[int]:
        if buckets is None or (isinstance(buckets, (list, tuple)) and not buckets):
            return [limit]
        if not isinstance(buckets, (list, tuple)) or not all(_positive_int(b) for b in buckets):
            raise ConfigError(f"{name}={buckets!r} must be a list of positive integers ({COMPILE_SCRIPT} "
                              f"{_FLAGS[name]}).")
        buckets = list(buckets)
        if buckets != sorted(set(buckets)):
            raise ConfigError(f"{name}={buckets} must be strictly increasing, e.g. {sorted(set(buckets))}.")
        if buckets[-1] > limit:
            raise ConfigError(f"{name}={buckets}: the largest bucket {buckets[-1]} exceeds {limit_name}={limit}. "
                              f"Drop it or raise {_FLAGS.get(limit_name, limit_name)}.")
        return buckets

    @property
    def largest_context_bucket(self) -> int:
        """The longest prompt the compiled context-encoding graphs accept."""
        return min(self.buckets[-1], self.max_context_length)

    @classmethod
    def for_checkpoint(cls, checkpoint_dir: str | Path, *, tp_degree: int, batch_size: int, seq_len: int,
                       max_context_length: int | None = None, buckets: Sequence[int] | None = None,
                       dtype: Any = "bfloat16", on_device_sampling: bool = False,
                       token_generation_buckets: Sequence[int] | None = None, expert_dtype: str = "model",
                       neuron_versions: dict[str, str] | None = None) -> "ArtifactManifest":
        """The manifest a compile of ``checkpoint_dir`` with these settings writes (and a load expects):
        fingerprints the checkpoint and records the installed zaya1 / Neuron SDK versions."""
        return cls(tp_degree=tp_degree, batch_size=batch_size, seq_len=seq_len,
                   max_context_length=seq_len if max_context_length is None else max_context_length,
                   buckets=list(buckets or []), dtype=dtype,
                   checkpoint_fingerprint=fingerprint_checkpoint(checkpoint_dir),
                   neuron_versions=neuron_sdk_versions() if neuron_versions is None else dict(neuron_versions),
                   on_device_sampling=on_device_sampling,
                   token_generation_buckets=list(token_generation_buckets or []), expert_dtype=expert_dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ArtifactManifest":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a manifest must be a JSON object, got {type(raw).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ConfigError(f"required field(s) {missing} missing")
        return cls(**{k: v for k, v in raw.items() if k in names})  # unknown (newer) fields are ignored


# ---------------------------------------------------------------------------------------------- fingerprint
def fingerprint_checkpoint(checkpoint_dir: str | Path) -> str:
    """``sha256:<hex>`` of config.json's bytes, the index (if any) and every ``*.safetensors`` file's name,
    size and JSON header (tensor names, dtypes, shapes, offsets, metadata) - never the tensor data, so it
    takes milliseconds for a multi-GB checkpoint. Two checkpoints that differ only in tensor values (same
    config, names, shapes and metadata) get the same fingerprint."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {path} does not exist (needed to fingerprint it for "
                                      f"the compiled artifacts). Pass the directory holding config.json and the "
                                      f"*.safetensors files.")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointNotFoundError(f"{config} is missing: a ZAYA1 checkpoint directory needs config.json next "
                                      f"to its *.safetensors files.")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointNotFoundError(f"no *.safetensors files in {path} to fingerprint.")
    digest = hashlib.sha256(b"zaya1-checkpoint-fingerprint-v1\0")

    def feed(name: str, size: int, data: bytes) -> None:
        digest.update(f"{name}\0{size}\0{len(data)}\0".encode())
        digest.update(data)

    config_bytes = config.read_bytes()
    feed(config.name, len(config_bytes), config_bytes)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = index.read_bytes()
        feed(index.name, len(data), data)
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 0 or length > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{file} is not a readable safetensors file (its header is truncated or "
                                      f"corrupt). Download it again.")
            header = handle.read(length)
        feed(file.name, size, header)
    return "sha256:" + digest.hexdigest()


# ---------------------------------------------------------------------------------------------- writing
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def compile_lock(final_dir: str | Path) -> Iterator[Path]:
    """Hold ``<final_dir>.lock`` (an advisory ``flock``, released by the kernel if the process dies) for the
    duration. A second compile into the same directory fails at once with an ArtifactError naming the pid
    that holds the lock. Yields the lock file's path."""
    final = Path(final_dir).absolute()
    lock_path = final.with_name(final.name + ".lock")
    ensure_parent(final)

    def busy(pid: str) -> ArtifactError:
        return ArtifactError(f"another compile (pid {pid or 'unknown'}) is writing {final} (it holds {lock_path}). "
                             f"Wait for it to finish or stop it, or compile into another directory.")

    if fcntl is None:  # O_EXCL lock file with our pid; a lock whose pid is gone is stale
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                pid = lock_path.read_text(errors="replace").strip() if lock_path.exists() else ""
                if pid.isdigit() and not _pid_alive(int(pid)):
                    lock_path.unlink(missing_ok=True)
                    continue
                raise busy(pid) from None
            except OSError as exc:
                raise unwritable(final, final.parent, exc) from None
    else:
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise unwritable(final, final.parent, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # someone holds it
                pid = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise busy(pid) from None
            except OSError as exc:
                os.close(fd)
                raise ArtifactError(f"cannot lock {lock_path} ({exc.strerror or exc}): the file system may not "
                                    f"support file locks. Compile into a local directory.") from None
            try:  # the previous holder may have unlinked the file between our open and flock
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        try:
            os.unlink(lock_path)  # while still holding the lock (see the samestat check above)
        except OSError:
            pass
        os.close(fd)


def _write_manifest(directory: Path, manifest: ArtifactManifest) -> Path:
    """Write ``zaya1-artifacts.json`` through a temp file + rename, so it is either absent or whole."""
    target = directory / MANIFEST_NAME
    tmp = directory / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest.to_dict(), handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def is_complete(artifacts_dir: str | Path) -> bool:
    """Whether ``artifacts_dir`` holds a finished compile (its manifest, written last, is there)."""
    return (Path(artifacts_dir) / MANIFEST_NAME).is_file()


def _leftovers(final: Path) -> list[Path]:
    """``<final>.partial-<pid>`` / ``<final>.old-<pid>`` directories of interrupted compiles."""
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir()
                  if p.name.startswith((f"{final.name}.partial-", f"{final.name}.old-")) and p.is_dir())


@contextmanager
def atomic_output_dir(final_dir: str | Path, manifest: ArtifactManifest, *, lock: bool = True) -> Iterator[Path]:
    """Compile into a temp directory and publish it as ``final_dir`` only when everything succeeded.

    Before the body runs (so before any long compile): the parent must be writable (else ArtifactError),
    ``final_dir`` must be absent, empty or a previous zaya1 compile (anything else is never replaced), and
    ``compile_lock(final_dir)`` is taken (a concurrent compile -> ArtifactError naming its pid). Leftover
    ``.partial-*`` directories of interrupted compiles are removed.

    Yields ``<final_dir>.partial-<pid>`` to write into. On success the manifest (which the body may still
    update, e.g. with SDK versions) is written last as ``zaya1-artifacts.json`` - the completion marker - and
    the directory is renamed to ``final_dir``, replacing a previous compile only now. On any exception the
    temp directory is removed, a previous compile at ``final_dir`` is left untouched, and the exception
    propagates (failures of the publishing steps themselves become ArtifactError)."""
    if not isinstance(manifest, ArtifactManifest):
        raise TypeError(f"manifest must be an ArtifactManifest, got {type(manifest).__name__}")
    final = Path(final_dir).absolute()
    ensure_parent(final)
    if final.exists() and not final.is_dir():
        raise ArtifactError(f"cannot write compiled artifacts to {final}: it is a file. Remove it or choose another "
                            f"output directory.")
    if final.is_dir() and any(final.iterdir()) and not is_complete(final):
        raise ArtifactError(f"{final} exists, is not empty and holds no {MANIFEST_NAME}, so it is not a zaya1 "
                            f"compile and will not be replaced. Delete it (if it is an interrupted compile) or "
                            f"choose another output directory.")
    with compile_lock(final) if lock else nullcontext():
        if lock:  # nobody else can be writing: any leftover is from a compile that died
            for leftover in _leftovers(final):
                if ".old-" in leftover.name and not final.exists() and is_complete(leftover):
                    os.rename(leftover, final)  # died between the two renames of replace_dir: restore
                else:
                    shutil.rmtree(leftover, ignore_errors=True)
        with atomic_dir(final, "compiled artifacts", finish=lambda tmp: _write_manifest(tmp, manifest),
                        complete=is_complete) as tmp:
            yield tmp


# ---------------------------------------------------------------------------------------------- loading
def load_manifest(artifacts_dir: str | Path) -> ArtifactManifest:
    """The manifest of a complete compile; ArtifactError if the directory is missing, incomplete
    (interrupted compile) or its manifest is unreadable."""
    path = Path(artifacts_dir)
    if not path.is_dir():
        leftovers = _leftovers(path.absolute())
        hint = (f" (only {leftovers[0].name} is there: an interrupted compile; delete it)" if leftovers else "")
        raise ArtifactError(f"no compiled artifacts at {path}{hint}. Compile them with {COMPILE_SCRIPT} "
                            f"--compiled-model-path {path}.")
    file = path / MANIFEST_NAME
    if not file.is_file():
        raise ArtifactError(f"{path} has no {MANIFEST_NAME}: it is an incomplete or interrupted compile (or was "
                            f"not written by zaya1). Delete it and recompile with {COMPILE_SCRIPT} --compiled-model-path "
                            f"{path}.")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        manifest = ArtifactManifest.from_dict(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, TypeError) as exc:
        raise ArtifactError(f"{file} is not a valid zaya1 manifest ({exc}). Delete {path} and recompile with "
                            f"{COMPILE_SCRIPT} --compiled-model-path {path}.") from None
    if manifest.format_version > FORMAT_VERSION:
        raise ArtifactError(f"{file} has format_version {manifest.format_version}, newer than this zaya1 reads "
                            f"({FORMAT_VERSION}): upgrade zaya1 or recompile with this version.")
    return manifest


def _show(name: str, value: Any) -> str:
    if name == "checkpoint_fingerprint" and isinstance(value, str):
        return value[:19]  # "sha256:" + 12 hex digits
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def check_manifest(manifest: ArtifactManifest, expected: ArtifactManifest | Mapping[str, Any], *,
                   artifacts_dir: str | Path | None = None, ignore: Sequence[str] = ()) -> None:
    """Raise ArtifactError listing every field in which ``manifest`` (what was compiled) differs from
    ``expected`` (what this run asks for): an ArtifactManifest, or a dict with only the fields to compare.
    Neuron SDK versions are compared for packages recorded on both sides."""
    if isinstance(expected, ArtifactManifest):
        wanted = expected.to_dict()
    else:
        wanted = dict(expected)
        unknown = sorted(set(wanted) - {f.name for f in dataclasses.fields(ArtifactManifest)})
        if unknown:
            raise TypeError(f"unknown manifest field(s) {unknown}")
        if "dtype" in wanted:
            wanted["dtype"] = _dtype_name(wanted["dtype"])
        for name in ("buckets", "token_generation_buckets"):
            if name in wanted:
                wanted[name] = list(wanted[name] or [])
    where = f" in {artifacts_dir}" if artifacts_dir is not None else ""
    diffs, flags, settings = [], [], []
    for name, want in wanted.items():
        have = getattr(manifest, name)
        if name in ignore or name == "format_version" or want is None:
            continue
        if name in ("buckets", "token_generation_buckets") and not want:
            continue  # not requested
        if name == "neuron_versions":
            for pkg in sorted(set(have) & set(want)):
                if have[pkg] != want[pkg]:
                    diffs.append(f"compiled with {pkg} {have[pkg]}, installed {want[pkg]}")
            continue
        if have == want:
            continue
        limit = {"buckets": "max_context_length", "token_generation_buckets": "seq_len"}.get(name)
        if limit and wanted.get(limit, getattr(manifest, limit)) != getattr(manifest, limit):
            continue  # follows from the differing limit, already reported
        if name == "checkpoint_fingerprint":
            diffs.append(f"compiled from another checkpoint (fingerprint {_show(name, have)}, this checkpoint "
                         f"{_show(name, want)})")
            flags.append("--model-path <this checkpoint>")
        elif name == "zaya1_version":
            diffs.append(f"compiled with zaya1 {have}, running {want}")
        else:
            diffs.append(f"compiled for {name}={_show(name, have)}, requested {_show(name, want)}")
            if name == "on_device_sampling":
                flags.append(f"{_FLAGS[name]} greedy|sample" if want else f"(no {_FLAGS[name]})")
            else:
                flags.append(f"{_FLAGS[name]} {_show(name, want)}")
            settings.append(f"{name}={_show(name, have)}")
    if not diffs:
        return
    out = f" --compiled-model-path {artifacts_dir}" if artifacts_dir is not None else ""
    fix = f"recompile with {COMPILE_SCRIPT} {' '.join(flags) if flags else '(same settings)'}{out}"
    if settings:
        fix += f", or pass the matching setting(s) {', '.join(settings)}"
    raise ArtifactError(f"the compiled artifacts{where} do not match this run: {'; '.join(diffs)} - {fix}.")


def check_request(manifest: ArtifactManifest, batch_size: int, prompt_lengths: Sequence[int],
                  max_new_tokens: int) -> None:
    """Raise InputError if a generation request does not fit the compiled shapes: more sequences than the
    compiled batch, a prompt longer than the largest context-encoding bucket, or prompt + new tokens beyond
    the compiled seq_len."""
    if not _positive_int(batch_size):
        raise InputError(f"batch_size={batch_size!r} must be a positive integer.")
    if not _positive_int(max_new_tokens):
        raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
    lengths = []
    for i, n in enumerate(prompt_lengths):  # ints, or integer tensors / numpy scalars
        try:
            lengths.append(-1 if isinstance(n, bool) else operator.index(n))
        except TypeError:
            lengths.append(-1)
        if lengths[-1] < 1:
            raise InputError(f"prompt {i} has length {n!r}: every prompt needs at least one token.")
    if len(lengths) != batch_size:
        raise InputError(f"{len(lengths)} prompt length(s) for batch_size={batch_size}: give one per sequence.")
    if batch_size > manifest.batch_size:
        raise InputError(f"a batch of {batch_size} sequences exceeds the compiled batch_size={manifest.batch_size}. "
                         f"Split the request into batches of at most {manifest.batch_size}, or recompile with "
                         f"{COMPILE_SCRIPT} --batch-size {batch_size}.")
    limit = manifest.largest_context_bucket
    longest = max(range(batch_size), key=lambda i: lengths[i])
    if lengths[longest] > limit:
        raise InputError(f"prompt {longest} has {lengths[longest]} tokens, longer than the largest compiled "
                         f"context-encoding bucket {limit} (max_context_length={manifest.max_context_length}, "
                         f"buckets={_show('buckets', manifest.buckets)}). Truncate it to at most {limit} tokens, "
                         f"or recompile with {COMPILE_SCRIPT} --max-context-length {lengths[longest]} and a bucket "
                         f">= {lengths[longest]}.")
    if lengths[longest] + max_new_tokens > manifest.seq_len:
        total = lengths[longest] + max_new_tokens
        raise InputError(f"prompt {longest} ({lengths[longest]} tokens) + max_new_tokens ({max_new_tokens}) = "
                         f"{total} exceeds the compiled seq_len={manifest.seq_len}. Lower max_new_tokens to at most "
                         f"{manifest.seq_len - lengths[longest]}, or recompile with {COMPILE_SCRIPT} --seq-len "
                         f"{total}.")
