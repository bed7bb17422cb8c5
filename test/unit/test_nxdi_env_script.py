"""scripts/nxdi_cpu_env.sh --check on the source layouts a new machine meets: the cold path of the NxDI CPU stage
(archives unpacked, pip pointed at the folder holding setup.py) is proved here, without building the venv, so
a cached environment cannot hide a broken install step (CI runs the same check on the vendored archives)."""
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "nxdi_cpu_env.sh"


def source_tree(root: Path, name: str, setup: bool = True, version: str = "1") -> Path:
    """A repository's source folder as its archive holds it: setup.py (optional here) and a package."""
    (root / name / "src" / name.replace("-", "_")).mkdir(parents=True)
    (root / name / "src" / name.replace("-", "_") / "__init__.py").write_text(f"__version__ = {version!r}\n")
    if setup:
        (root / name / "setup.py").write_text(f"from setuptools import setup\nsetup(name={name!r})\n")
    return root / name


def archive(tmp_path: Path, name: str, file_name: str, setup: bool = True, version: str = "1") -> Path:
    """A git-archive-like .tar.gz: ONE top-level folder ``name/`` holding setup.py (the vendored layout)."""
    tree = source_tree(tmp_path / f"tree-{file_name}", name, setup, version)
    out = tmp_path / file_name
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree, arcname=name)
    return out


def check(tmp_path: Path, *args: str, vendor: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ZAYA1_VENDOR": str(vendor or tmp_path / "no-vendor")}
    return subprocess.run(["bash", str(SCRIPT), "--check", "--venv", str(tmp_path / "venv"), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def resolved(run: subprocess.CompletedProcess) -> dict[str, str]:
    assert run.returncode == 0, run.stderr
    return dict(line.split(": ", 1) for line in run.stdout.splitlines())


def test_vendored_archives_resolve_to_their_top_level_folder(tmp_path):
    """(a) The archives' layout (the one pip could not install: setup.py one level down), found as the defaults
    in ZAYA1_VENDOR: pip is pointed at the top-level folder, the stamp printed, nothing installed."""
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    archive(vendor, "neuronx-distributed-inference", "neuronx-distributed-inference-4bcdc54.tar.gz")
    archive(vendor, "neuronx-distributed", "neuronx-distributed-fbac349.tar.gz")
    out = resolved(check(tmp_path, vendor=vendor))
    assert out["nxdi"].endswith("neuronx-distributed-inference-4bcdc54.tar.gz unpacked>/neuronx-distributed-inference")
    assert out["nxd"].endswith("neuronx-distributed-fbac349.tar.gz unpacked>/neuronx-distributed")
    assert re.fullmatch(r"[0-9a-f]{16}", out["stamp"])
    assert out["venv"].endswith("not built: the next run builds it")
    assert not (tmp_path / "venv").exists()


def test_archive_bytes_change_the_stamp_and_a_matching_venv_is_up_to_date(tmp_path):
    nxdi = archive(tmp_path, "neuronx-distributed-inference", "nxdi.tar.gz")
    nxd = archive(tmp_path, "neuronx-distributed", "nxd.tar.gz")
    stamp = resolved(check(tmp_path, "--nxdi-src", str(nxdi), "--nxd-src", str(nxd)))["stamp"]
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".zaya1-stamp").write_text(stamp + "\n")
    assert resolved(check(tmp_path, "--nxdi-src", str(nxdi), "--nxd-src", str(nxd)))["venv"].endswith("up to date")
    other = archive(tmp_path / "other", "neuronx-distributed", "nxd.tar.gz", version="2")
    out = resolved(check(tmp_path, "--nxdi-src", str(nxdi), "--nxd-src", str(other)))
    assert out["stamp"] != stamp and "is stale" in out["venv"]


def test_plain_source_folders_are_fingerprinted_by_their_files(tmp_path):
    """(b) Unpacked releases (folders that are not git checkouts): accepted as they are, or with the one
    top-level folder an unpacked archive has; editing a file changes the stamp."""
    nxdi = source_tree(tmp_path, "neuronx-distributed-inference")
    nxd = source_tree(tmp_path / "unpacked", "neuronx-distributed").parent
    out = resolved(check(tmp_path, "--nxdi-src", str(nxdi), "--nxd-src", str(nxd)))
    assert out["nxdi"] == str(nxdi) and out["nxd"] == str(nxd / "neuronx-distributed")
    (nxdi / "src" / "neuronx_distributed_inference" / "__init__.py").write_text("# edited\n")
    assert resolved(check(tmp_path, "--nxdi-src", str(nxdi), "--nxd-src", str(nxd)))["stamp"] != out["stamp"]


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_source_without_setup_py_is_refused_in_one_line(tmp_path, kind):
    """(c) A folder (or an archive) without setup.py: exit 2, one line naming it, before anything is built."""
    nxd = source_tree(tmp_path, "neuronx-distributed")
    bad = (source_tree(tmp_path / "bad", "neuronx-distributed-inference", setup=False) if kind == "folder"
           else archive(tmp_path, "neuronx-distributed-inference", "nxdi.tar.gz", setup=False))
    run = check(tmp_path, "--nxdi-src", str(bad), "--nxd-src", str(nxd))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and str(bad) in run.stderr and "no setup.py or pyproject.toml" in run.stderr


@pytest.mark.parametrize("given", ["missing", "not-an-archive", "no-vendor"])
def test_missing_or_unreadable_source_is_refused_in_one_line(tmp_path, given):
    """(d) A path that does not exist, a file that is not a .tar.gz, or no --*-src and no vendored archive."""
    nxd = source_tree(tmp_path, "neuronx-distributed")
    args = ["--nxd-src", str(nxd)]
    if given == "missing":
        args += ["--nxdi-src", str(tmp_path / "nowhere")]
        expected = f"--nxdi-src {tmp_path / 'nowhere'} does not exist"
    elif given == "not-an-archive":
        (tmp_path / "notes.txt").write_text("not a tarball\n")
        args += ["--nxdi-src", str(tmp_path / "notes.txt")]
        expected = "is not a readable .tar.gz archive"
    else:
        expected = f"no neuronx-distributed-inference-*.tar.gz in {tmp_path / 'no-vendor'}; pass --nxdi-src"
    run = check(tmp_path, *args)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and expected in run.stderr, run.stderr
