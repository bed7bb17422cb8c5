"""The install commands the Neuron docs give for the DLAMI's NxDI virtualenv keep its transformers 4.57: NxDI's
hf_adapter / accuracy modules fail to import on transformers 5.x, so no extra installed there may name it."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def extras() -> dict[str, list[str]]:
    """setup.py's extras_require, read from this checkout's source (not the installed metadata)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))


def neuron_installs(doc: str) -> list[str]:
    """The `pip install ... -e` commands of a Neuron doc (zaya1 installed into the NxDI venv)."""
    return re.findall(r"pip install [^\n`#]*-e [^\s`#]+", (ROOT / "docs" / doc).read_text())


@pytest.mark.parametrize("doc", ["trainium.md", "vllm.md"])
def test_neuron_docs_never_install_transformers_into_the_nxdi_venv(doc):
    commands = neuron_installs(doc)
    assert commands, f"no zaya1 install command found in docs/{doc}"
    table = extras()
    for command in commands:
        named = re.search(r"\[([\w,-]+)\]", command)
        for extra in named.group(1).split(",") if named else []:
            assert not [r for r in table[extra] if r.startswith("transformers")], (doc, command, table[extra])


def test_the_test_extra_would_break_nxdi():
    """What the check above guards against: `.[test]` pins transformers >= 5.23, which NxDI cannot import."""
    assert any(r.startswith("transformers>=5") for r in extras()["test"])
