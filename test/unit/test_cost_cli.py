"""``zaya1 cost`` without torch-xla (this CPU environment): one clear line and exit status 2, no traceback.
The accounting itself is tested where torch-xla exists (test/nxdi_cpu/test_cost.py)."""

import importlib.util

import pytest

from zaya1.tools.cli import main


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch-xla is installed here")
def test_cost_without_torch_xla(capsys):
    assert main(["cost", "--tp", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zaya1: error: zaya1 cost needs torch-xla"), err
    assert "docs/trainium-cost.md" in err[0]
