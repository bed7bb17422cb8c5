"""``ZayaForCausalLM.save_pretrained`` (the Hugging Face layout) and ``num_parameters``, against upstream
transformers, upstream's own converter (the golden checkpoints' hf-layout/ copies, made from the same
original-layout weights) and Zyphra's golden logits."""

from __future__ import annotations

import errno
import json
import warnings
from itertools import product
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zaya1.hf_export
from zaya1 import ArtifactError, ZayaConfig, ZayaForCausalLM
from zaya_testlib import GOLDEN_DIR, GOLDEN_SETS, TOL, load_hf, max_diff, upstream

pytestmark = pytest.mark.usefixtures("inference")


def load_upstream(path: Path):
    """upstream's ZayaForCausalLM (eager, float32) and whether every tensor of the checkpoint found its place."""
    model, info = upstream().ZayaForCausalLM.from_pretrained(
        path, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32,
        output_loading_info=True)
    return model.eval(), not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))


@pytest.mark.parametrize("name", GOLDEN_SETS)
def test_original_layout_saved_for_transformers(tmp_path, name):
    """One step from an original-layout checkpoint to one transformers loads: the same config and tensors as
    upstream's converter wrote, and upstream computes zaya1's logits from it."""
    source = GOLDEN_DIR / name
    eps = ZayaConfig.from_pretrained(source).rms_norm_eps
    ours = ZayaForCausalLM.from_pretrained(source, router_norm_eps=eps, skip_expert_output="zero")  # HF semantics
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing transformers would ignore
        out = ours.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    converted = source / "hf-layout"
    saved_cfg, their_cfg = (json.loads((d / "config.json").read_text()) for d in (out, converted))
    shared = (saved_cfg.keys() & their_cfg.keys()) - {"rope_parameters"}
    assert len(shared) >= 20 and {k: saved_cfg[k] for k in shared} == {k: their_cfg[k] for k in shared}
    assert saved_cfg["rope_parameters"]["hybrid"] == their_cfg["rope_parameters"]["hybrid"]
    saved, theirs = load_file(out / "model.safetensors"), load_file(converted / "model.safetensors")
    assert saved.keys() == theirs.keys()
    assert all(torch.equal(saved[k], theirs[k].to(saved[k].dtype)) for k in saved)  # bf16-exact values

    hf, complete = load_upstream(out)
    assert complete
    ids = load_file(source / "golden.safetensors")["a_input_ids"]
    logits = ours(ids).logits
    assert max_diff(hf(ids).logits, logits) <= TOL
    again = ZayaForCausalLM.from_pretrained(out)
    assert again.config == ours.config.replace(layout="hf") and torch.equal(again(ids).logits, logits)


def test_original_references_survive_a_save_with_a_warning(tmp_path):
    """Saved as loaded (router eps 1e-6, the skip expert's scaled input): zaya1 reads the two fields back and
    still matches Zyphra's golden logits; transformers has no such fields, which the warning says."""
    source = GOLDEN_DIR / GOLDEN_SETS[0]
    ours = ZayaForCausalLM.from_pretrained(source)
    with pytest.warns(UserWarning, match=r"transformers ignores \{'router_norm_eps': 1e-06, 'skip_expert_output': "
                                         r"'scaled_input'\}.* load with router_norm_eps=1e-05, skip_expert_output"):
        out = ours.save_pretrained(tmp_path / "hf")
    again = ZayaForCausalLM.from_pretrained(out)
    assert (again.config.router_norm_eps, again.config.skip_expert_output) == (1e-6, "scaled_input")
    golden = load_file(source / "golden.safetensors")
    assert max_diff(again(golden["a_input_ids"]).logits, golden["a_logits"]) <= TOL
    assert load_upstream(out)[1]  # transformers still loads every tensor


def test_upstream_checkpoint_round_trips(chat, tmp_path):
    """An upstream-saved checkpoint (untied lm_head, sliding layers, generation_config.json) saved again:
    the same tensors, the same logits in transformers, the same generation settings."""
    out = chat.ours.save_pretrained(tmp_path / "again")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    saved, theirs = load_file(out / "model.safetensors"), load_file(chat.path / "model.safetensors")
    assert saved.keys() == theirs.keys() and all(torch.equal(saved[k], theirs[k]) for k in saved)
    hf = load_hf(out)
    ids = chat.batch.input_ids
    assert torch.equal(hf(ids).logits, chat.hf(ids).logits)
    assert (upstream().GenerationConfig.from_pretrained(out).eos_token_id
            == chat.hf.generation_config.eos_token_id == [1, 4, chat.stop])


def test_a_failed_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    ours = ZayaForCausalLM.from_pretrained(GOLDEN_DIR / GOLDEN_SETS[0] / "hf-layout")
    out = ours.save_pretrained(tmp_path / "hf")
    before = (out / "model.safetensors").read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(zaya1.hf_export, "save_file", half_then_fail)
    with pytest.raises(ArtifactError, match="No space left on device.* nothing was written there. Check"):
        ours.save_pretrained(tmp_path / "new")
    with pytest.raises(ArtifactError, match=r"nothing was written there \(the previous save is untouched\)"):
        ours.save_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no new or partial directory
    assert (out / "model.safetensors").read_bytes() == before
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"holds files save_pretrained does not write \(tokenizer.json\)"):
        ours.save_pretrained(out)


@pytest.mark.parametrize("tied", [True, False])
def test_num_parameters_as_transformers_counts(tiny, tied):
    m = tiny("gqa8x2", tie_word_embeddings=tied)
    for only_trainable, exclude_embeddings in product([False, True], repeat=2):
        assert (m.ours.num_parameters(only_trainable, exclude_embeddings)
                == m.hf.num_parameters(only_trainable, exclude_embeddings))
    assert m.ours.num_parameters() - m.ours.num_parameters(exclude_embeddings=True) == m.config.vocab_size * 128
