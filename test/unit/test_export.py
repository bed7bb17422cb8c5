"""torch.export of the two step functions (what the Neuron backend traces): the graphs must have static
shapes and no data-dependent ops, and the exported programs must compute what eager mode computes,
state writes included."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_leaves

from zaya_testlib import max_diff

pytestmark = pytest.mark.usefixtures("inference")

BATCH, MAX_SEQ, PREFILL = 2, 32, 16

# ops whose output shape or control flow depends on tensor values
FORBIDDEN = {"nonzero", "nonzero_static", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
             "bincount", "masked_select", "masked_scatter", "item", "_local_scalar_dense", "tolist",
             "repeat_interleave", "histc"}


class Prefill(torch.nn.Module):
    def __init__(self, model, state):
        super().__init__()
        self.model, self.state = model, state

    def forward(self, input_ids, lengths, seq_ids):
        return self.model.prefill(input_ids, lengths, seq_ids, self.state)


class Decode(torch.nn.Module):
    def __init__(self, model, state):
        super().__init__()
        self.model, self.state = model, state

    def forward(self, input_ids, positions, seq_ids):
        return self.model.decode(input_ids, positions, seq_ids, self.state)


def inputs(vocab: int):
    gen = torch.Generator().manual_seed(0)
    prefill = (torch.randint(3, vocab, (BATCH, PREFILL), generator=gen), torch.tensor([PREFILL, 9]),
               torch.tensor([1, 0]))
    decode = (torch.randint(3, vocab, (BATCH, 1), generator=gen), torch.tensor([PREFILL, 9]), torch.tensor([1, 0]))
    return prefill, decode


@pytest.fixture(scope="module")
def exported(tiny):
    m = tiny("gqa8x2")
    prefill_args, decode_args = inputs(m.config.vocab_size)
    programs = {}
    with torch.no_grad():
        for kind, wrapper, args in (("prefill", Prefill, prefill_args), ("decode", Decode, decode_args)):
            ep = torch.export.export(wrapper(m.ours, m.ours.new_state(BATCH, MAX_SEQ)), args)
            programs[kind] = {"exported": ep, "core_aten": ep.run_decompositions()}
    return m, programs, {"prefill": prefill_args, "decode": decode_args}


def data_dependent_nodes(ep) -> list[str]:
    bad = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        name = getattr(target, "__name__", str(target)).split(".")[0]
        if name in FORBIDDEN or "sym" in name and not name.startswith("_assert"):
            bad.append(f"{target}")
        if name in ("index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index"):
            indices = node.args[1]
            for idx in indices:
                if idx is not None and idx.meta["val"].dtype == torch.bool:
                    bad.append(f"{target} with a boolean mask")
        for leaf in tree_leaves(node.meta.get("val")):  # every shape is a plain int: nothing was read from data
            if isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                bad.append(f"{target} produces a symbolic value")
            elif isinstance(leaf, torch.Tensor) and not all(isinstance(s, int) for s in leaf.shape):
                bad.append(f"{target} has a symbolic shape {leaf.shape}")
    return bad


@pytest.mark.parametrize("form", ["exported", "core_aten"])
@pytest.mark.parametrize("kind", ["prefill", "decode"])
def test_graph_is_static(exported, kind, form):
    _, programs, _ = exported
    ep = programs[kind][form]
    assert data_dependent_nodes(ep) == []
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("convolution" in t for t in targets)  # the conv is written without a conv primitive


@pytest.mark.parametrize("form", ["exported", "core_aten"])
def test_exported_steps_equal_eager(exported, form):
    """Run exported prefill, then exported decode on the state it left, vs the same steps in eager mode."""
    m, programs, args = exported
    eager_state = m.ours.new_state(BATCH, MAX_SEQ)
    eager_prefill = m.ours.prefill(*args["prefill"], eager_state)
    prefill = programs["prefill"][form].module()
    got_prefill = prefill(*args["prefill"])
    assert max_diff(got_prefill, eager_prefill) <= 1e-5
    written = {name.removeprefix("state."): buf for name, buf in prefill.named_buffers() if name.startswith("state.")}
    assert sorted(written) == ["conv", "keys", "value_prev", "values"]
    for name, buf in written.items():
        assert max_diff(buf, getattr(eager_state, name)) <= 1e-5, name

    decode = programs["decode"][form].module()
    decode_state = {name.removeprefix("state."): buf for name, buf in decode.named_buffers()
                    if name.startswith("state.")}
    for name, buf in decode_state.items():
        buf.copy_(written[name])
    eager_decode = m.ours.decode(*args["decode"], eager_state)
    assert max_diff(decode(*args["decode"]), eager_decode) <= 1e-5
    for name, buf in decode_state.items():
        assert max_diff(buf, getattr(eager_state, name)) <= 1e-5, name
