"""Outputs that are whole or absent: a file or a directory is written under a temporary name next to its
destination, flushed to disk, and renamed into place only when complete, so an interrupted write never
leaves anything that looks finished and a previous complete output stays untouched until then. Used for
compiled Neuron artifacts (zaya1.neuron.artifacts), converted weights (scripts/convert.py) and
``ZayaForCausalLM.save_pretrained``."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from safetensors.torch import save_file

from .errors import ArtifactError


def note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(text)


def unwritable(target: Path, where: Path, exc: OSError | None, what: str = "compiled artifacts") -> ArtifactError:
    reason = f" ({exc.strerror or exc})" if exc is not None else ""
    return ArtifactError(f"cannot write {what} to {target}: {where} is not a writable directory{reason}. Choose "
                         f"another output directory (e.g. --compiled-model-path) or fix its permissions.")


def ensure_parent(target: Path, what: str = "compiled artifacts") -> Path:
    """Create ``target``'s parent if needed and check up-front that it is a writable directory."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ArtifactError(f"cannot write {what} to {target}: {blocker} is a file, not a directory. Choose "
                                f"another output directory (e.g. --compiled-model-path).") from None
        raise unwritable(target, parent, exc, what) from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise unwritable(target, parent, None, what)
    return parent


def fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` to ``final``; an existing ``final`` is removed only after that succeeded."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path, what: str, finish: Callable[[Path], Any] | None = None,
               complete: Callable[[Path], bool] = lambda path: False) -> Iterator[Path]:
    """Yield ``<final>.partial-<pid>`` to write ``what`` into; when the body succeeds, run ``finish(tmp)`` (e.g.
    a completion marker), flush it and rename it to ``final`` (a previous ``final`` is replaced only now).
    On any failure the temp directory is removed and ``final`` is left as it was (``complete(final)`` says
    whether that is a previous complete output, for the note added to the exception); failures of the
    finishing steps become ArtifactError. The caller checks ``final``'s parent and whether ``final`` may be
    replaced before calling."""
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise unwritable(final, final.parent, exc, what) from None
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        note(exc, f"zaya1: writing {what} to {final} failed; its partial output was removed"
                  + (" and the previous output there is untouched." if complete(final) else "."))
        raise
    try:
        if finish is not None:
            finish(tmp)
        fsync(tmp)
        replace_dir(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ArtifactError(f"finishing {what} in {final} failed ({exc}); the partial output was removed and "
                                f"{final} was left as it was. Check free disk space and permissions, then "
                                f"retry.") from exc
        raise


def save_state_dict_atomic(state_dict: Mapping[str, Any], path: str | Path,
                           metadata: dict[str, str] | None = None) -> Path:
    """Write ``state_dict`` as safetensors to ``.<name>.tmp-<pid>`` next to ``path``, fsync it and rename it
    to ``path``: ``path`` is either the complete new file or what it was before (never half a file). A
    failure removes the temp file and raises ArtifactError naming ``path``."""
    path = Path(path).absolute()
    ensure_parent(path, what="weights")
    if path.is_dir():
        raise ArtifactError(f"cannot write weights to {path}: it is a directory. Pass a file path ending in "
                            f".safetensors.")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(dict(state_dict), str(tmp), metadata=metadata)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ArtifactError(f"writing {path} failed midway ({exc}); nothing was written there"
                                + (" (the previous file is untouched)" if path.exists() else "")
                                + ". Check free disk space and permissions, then retry.") from exc
        raise
    return path
