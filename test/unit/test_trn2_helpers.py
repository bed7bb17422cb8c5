"""The trn2 integration suite's logic that runs without Trainium (test/integration/trn2_helpers.py and the
first-run report): what the device is held to, and how a trn2 run is summarised."""
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import trn2_helpers  # noqa: E402

from zaya1 import ZayaForCausalLM, kernels  # noqa: E402


@pytest.mark.parametrize("name", ["tiny", "gqa"])
def test_bf16_reference_has_the_traced_graphs_numerics(name, monkeypatch):
    """The bf16 bound of the suite comes from the CPU path with the traced graph's numerics: under tracing
    (fp32_internals and the CPU bf16 kernels off, as when NxDI traces) zaya1's bf16 model gives bit for bit
    bf16_reference's logits, and the default CPU bf16 path (fp32 router and attention scores) does not."""
    monkeypatch.setattr(kernels, "EXACT", False)
    g = trn2_helpers.golden(name)
    model = ZayaForCausalLM.from_pretrained(trn2_helpers.golden_dir(name), dtype=torch.bfloat16)
    prompts, continuation = list(g["b_prompt_ids"]), g["b_generated_ids"][:, :-1]
    with torch.no_grad():
        reference = trn2_helpers.bf16_reference(model, prompts, continuation)
        default = trn2_helpers.teacher_forced(model, prompts, continuation)
        with mock.patch.object(torch.jit, "is_tracing", return_value=True):
            traced = trn2_helpers.teacher_forced(model, prompts, continuation)
    assert not kernels.EXACT  # restored
    assert torch.equal(reference, traced)
    assert not torch.equal(default, traced)
