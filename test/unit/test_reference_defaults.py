"""The two references disagree in two places (architecture doc, section 7): the router norm's epsilon and the
output of the MoD skip class. Each layout defaults to its own reference, and both are overridable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import zaya1
from zaya_testlib import GOLDEN_DIR, GOLDEN_SETS, TOL, build_hf_checkpoint, hf_config, load_hf, max_diff

pytestmark = pytest.mark.usefixtures("inference")


# ---------------------------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", GOLDEN_SETS)
def test_layout_defaults(name):
    original = zaya1.ZayaConfig.from_pretrained(GOLDEN_DIR / name)
    hf = zaya1.ZayaConfig.from_pretrained(GOLDEN_DIR / name / "hf-layout")
    assert (original.layout, original.router_norm_eps, original.skip_expert_output) == ("original", 1e-6,
                                                                                      "scaled_input")
    assert (hf.layout, hf.router_norm_eps, hf.skip_expert_output) == ("hf", 1e-5, "zero")
    assert original.rms_norm_eps == hf.rms_norm_eps == 1e-5


@pytest.mark.parametrize("layout", ["", "hf-layout"])
def test_overrides_reach_the_modules(layout):
    path = GOLDEN_DIR / GOLDEN_SETS[0] / layout
    for eps, skip in ((1e-6, "scaled_input"), (1e-5, "zero"), (3e-4, "scaled_input")):
        model = zaya1.ZayaForCausalLM.from_pretrained(path, router_norm_eps=eps, skip_expert_output=skip)
        assert (model.config.router_norm_eps, model.config.skip_expert_output) == (eps, skip)
        for layer in model.model.layers:
            assert layer.mlp.router.norm.eps == eps
            assert layer.mlp.skip_scaled_input == (skip == "scaled_input")
            assert layer.input_layernorm.eps == layer.post_attention_layernorm.eps == 1e-5  # untouched


def test_unknown_override_is_rejected():
    with pytest.raises(zaya1.ConfigError, match="router_eps"):
        zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / GOLDEN_SETS[0], router_eps=1e-6)
    with pytest.raises(zaya1.ConfigError, match="skip_expert_output"):
        zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / GOLDEN_SETS[0], skip_expert_output="identity")


@pytest.mark.parametrize("name", GOLDEN_SETS)
def test_router_eps_default_follows_each_reference(name, report):
    """HF-layout default == upstream transformers; original-layout default == the golden data; the original
    layout with the upstream epsilon == upstream transformers. The epsilon visibly matters on these data."""
    ids = load_file(GOLDEN_DIR / name / "golden.safetensors")["a_input_ids"]
    golden = load_file(GOLDEN_DIR / name / "golden.safetensors")["a_logits"]
    upstream = load_hf(GOLDEN_DIR / name / "hf-layout")(ids).logits
    hf_default = zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / name / "hf-layout")(ids).logits
    original_default = zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / name)(ids).logits
    original_upstream_eps = zaya1.ZayaForCausalLM.from_pretrained(GOLDEN_DIR / name, router_norm_eps=1e-5)(ids).logits
    short = name.removeprefix("zaya1-original-")
    assert report(f"{short} hf-layout default vs upstream", max_diff(hf_default, upstream)) <= TOL
    assert report(f"{short} original default vs golden", max_diff(original_default, golden)) <= TOL
    assert report(f"{short} original router_norm_eps=1e-5 vs upstream",
                  max_diff(original_upstream_eps, upstream)) <= TOL
    assert max_diff(upstream, golden) > 10 * TOL  # otherwise the checks above could not tell the epsilons apart


# ---------------------------------------------------------------------------------------------- skip class
def route_by_hand(w: dict, i: int, u: torch.Tensor, prev: torch.Tensor | None, eps: float):
    """The ZAYA1 router from the checkpoint's upstream-named tensors: probabilities, choice, router state."""
    g = f"model.layers.{i}.mlp.gate."
    state = F.linear(u, w[g + "down_proj.weight"], w[g + "down_proj.bias"])
    if prev is not None:
        state = state + prev * w[g + "router_states_scale"]
    normed = state * torch.rsqrt(state.pow(2).mean(-1, keepdim=True) + eps) * w[g + "router_mlp.norm.weight"]
    h = F.gelu(F.linear(normed, w[g + "router_mlp.fc1.weight"], w[g + "router_mlp.fc1.bias"]))
    h = F.gelu(F.linear(h, w[g + "router_mlp.fc2.weight"], w[g + "router_mlp.fc2.bias"]))
    probs = torch.softmax(F.linear(h, w[g + "router_mlp.out_proj.weight"]), dim=-1)
    return probs, torch.argmax(probs + w[g + "balancing_biases"], dim=-1), state


def expert_by_hand(w: dict, i: int, e: int, u: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(u, w[f"model.layers.{i}.mlp.experts.gate_up_proj"][e]).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w[f"model.layers.{i}.mlp.experts.down_proj"][e])


def moe_inputs_outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Logits, and per layer the MoE block's input (normalised residual) and output (merged into the residual)."""
    seen: list[list] = [[None, None] for _ in model.model.layers]
    hooks = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.post_attention_layernorm.register_forward_hook(
            lambda mod, a, out, i=i: seen[i].__setitem__(0, out)))
        hooks.append(layer.post_mlp_residual_scale.register_forward_hook(
            lambda mod, a, out, i=i: seen[i].__setitem__(1, a[0])))
    try:
        logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, [tuple(s) for s in seen]


def skip_bias_for_half(upstream, i: int, ids: torch.Tensor) -> float:
    """A skip-class bias that sends a third to two thirds of the tokens of layer i to the skip class, placed
    in the widest gap between tokens so that no choice is a near-tie; from upstream's own router probabilities."""
    probs = []
    gate = upstream.model.layers[i].mlp.gate
    hook = gate.register_forward_hook(lambda mod, a, out: probs.append(torch.softmax(out[0], dim=-1)))
    try:
        upstream(ids)
    finally:
        hook.remove()
    p, bias = probs[0], gate.balancing_biases
    gap = ((p[:, :-1] + bias[:-1]).max(-1).values - p[:, -1]).sort().values  # skip wins iff its bias > gap
    k = max(range(len(gap) // 3, 2 * len(gap) // 3 + 1), key=lambda j: gap[j] - gap[j - 1])
    return float(gap[k - 1] + gap[k]) / 2


@pytest.fixture(scope="module", params=["half", "all"])
def skipping(request, tmp_path_factory):
    """A tiny random HF checkpoint whose routers pick the skip class for about half of the tokens of every
    layer ('half') or for every token (skip-class bias +2, 'all'), and the upstream model that wrote it.

    The reference is that in-memory upstream model, not one reloaded from the checkpoint: transformers
    5.23's ``from_pretrained`` resets the skip class's stored balancing bias to -1.0 (``_init_weights``
    assigns it unguarded after loading), so a reloaded upstream model would never skip."""
    path = tmp_path_factory.mktemp(f"skip-{request.param}")
    ids = torch.randint(3, 160, (2, 16), generator=torch.Generator().manual_seed(7))
    upstream = build_hf_checkpoint(path, hf_config("gqa8x2", num_hidden_layers=3), seed=11)
    with torch.no_grad():
        for i, layer in enumerate(upstream.model.layers):  # in order: each layer's choices move later inputs
            bias = 2.0 if request.param == "all" else skip_bias_for_half(upstream, i, ids)
            layer.mlp.gate.balancing_biases[-1] = bias
    upstream.save_pretrained(path)
    return request.param, path, upstream, ids


def test_skip_zero_matches_upstream(skipping, report):
    kind, path, upstream, ids = skipping
    ours = zaya1.ZayaForCausalLM.from_pretrained(path)
    assert ours.config.skip_expert_output == "zero"
    for layer, theirs in zip(ours.model.layers, upstream.model.layers):  # the stored skip bias is kept
        assert torch.equal(layer.mlp.router.balancing_biases, theirs.mlp.gate.balancing_biases)
    assert report(f"skip class forced ({kind}) vs upstream", max_diff(ours(ids).logits, upstream(ids).logits)) <= TOL


@pytest.mark.parametrize("mode", ["zero", "scaled_input"])
def test_skip_output_by_hand(skipping, mode):
    """Every MoE output equals the hand-computed router weight times the chosen expert, or for the skip class
    0 ('zero') or the router weight times the normalised MoE input ('scaled_input')."""
    kind, path, _, ids = skipping
    w = load_file(path / "model.safetensors")
    model = zaya1.ZayaForCausalLM.from_pretrained(path, skip_expert_output=mode)
    _, layers = moe_inputs_outputs(model, ids)
    prev, skipped, total = None, 0, 0
    num_experts = model.config.num_experts
    for i, (u, y) in enumerate(layers):
        probs, choice, prev = route_by_hand(w, i, u, prev, model.config.router_norm_eps)
        weight = probs.gather(-1, choice[..., None])
        expected = torch.zeros_like(y)
        for e in range(num_experts):
            sel = choice == e
            expected[sel] = (weight * expert_by_hand(w, i, e, u))[sel]
        skip = choice == num_experts
        if mode == "scaled_input":
            expected[skip] = (weight * u)[skip]
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        skipped, total = skipped + int(skip.sum()), total + skip.numel()
    if kind == "all":
        assert skipped == total
    else:
        assert 0.25 * total <= skipped <= 0.75 * total


def test_skip_modes_differ(skipping):
    """The choice of skip semantics is visible once tokens are skipped (so the tests above are not vacuous)."""
    _, path, _, ids = skipping
    zero = zaya1.ZayaForCausalLM.from_pretrained(path, skip_expert_output="zero")(ids).logits
    scaled = zaya1.ZayaForCausalLM.from_pretrained(path, skip_expert_output="scaled_input")(ids).logits
    assert max_diff(zero, scaled) > 1e-2
