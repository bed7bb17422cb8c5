"""What a transformers user does first, on checkpoints saved by upstream transformers (config.json, weights, a
SentencePiece-style tokenizer with a chat template, generation_config.json), compared with upstream itself:
chat ids, dtypes, per-layer-type rotary widths, upstream's own test config, generation_config defaults and
transformers' generate arguments and streamers."""

from __future__ import annotations

import io
import json
import shutil
import sys
from contextlib import redirect_stdout

import pytest
import torch
import transformers

import zaya1
from zaya1.errors import ConfigError, InputError
from zaya1.streaming import TextStreamer
from zaya1.tokenizer import Tokenizer
from zaya_testlib import ROPE, TOL, build_hf_checkpoint, hf_config, load_hf, max_diff, upstream

pytestmark = pytest.mark.usefixtures("inference")

PROMPTS = ["the cat sat on the mat", "Hello world"]  # conftest's chat checkpoint's batch


def with_generation_config(src, dst, **settings):
    shutil.copytree(src, dst)
    (dst / "generation_config.json").unlink()
    transformers.GenerationConfig(**settings).save_pretrained(dst)
    return load_hf(dst), zaya1.ZayaForCausalLM.from_pretrained(dst)


# ---------------------------------------------------------------------------------------------- tokenizer
def test_chat_ids_equal_apply_chat_template(chat):
    for text in PROMPTS:
        expected = chat.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"]
        assert chat.zt.encode(text, chat=True) == list(expected)


def test_plain_text_without_special_tokens(chat):
    """ZAYA1-8B-style: the tokenizer appends its end-of-turn to plain text unless asked not to."""
    text = PROMPTS[0]
    assert chat.zt.encode(text) == chat.tok(text).input_ids
    assert chat.zt.encode(text)[-1] == 4
    bare = chat.zt.encode(text, add_special_tokens=False)
    assert bare == chat.tok(text, add_special_tokens=False).input_ids and 4 not in bare and 2 not in bare


def test_chat_without_template_is_refused(chat, tmp_path, monkeypatch):
    shutil.copytree(chat.path, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (tmp_path / "c" / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in (tmp_path / "c").glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(InputError, match="no chat template"):
        Tokenizer.from_pretrained(tmp_path / "c").encode("hi", chat=True)
    monkeypatch.setitem(sys.modules, "transformers", None)  # tokenizers alone says the same
    with pytest.raises(InputError, match="no chat template"):
        Tokenizer.from_pretrained(tmp_path / "c").encode("hi", chat=True)


def test_chat_template_without_transformers_names_what_to_install(chat, monkeypatch):
    """tokenizers alone reads tokenizer.json but cannot render a Jinja chat template: say so, not 'no template'."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    tokenizer = Tokenizer.from_pretrained(chat.path)
    assert not hasattr(tokenizer.backend, "apply_chat_template")  # really the tokenizers-only path
    assert tokenizer.encode(PROMPTS[0]) == chat.tok(PROMPTS[0]).input_ids  # plain text still encodes
    with pytest.raises(InputError, match=r"rendering the chat template of .* needs transformers, which is not "
                                         r"installed: pip install 'transformers>=5.23,<5.40'"):
        tokenizer.encode("hi", chat=True)


# ---------------------------------------------------------------------------------------------- streaming
def _stream(streamer_cls, tokenizer, ids: list[int], **kwargs) -> str:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        streamer = streamer_cls(tokenizer, skip_prompt=True, **kwargs)
        streamer.put(torch.tensor([[2, 267]]))  # the prompt
        for token in ids:
            streamer.put(torch.tensor([token]))
        streamer.end()
    return buffer.getvalue()


def test_text_streamer_keeps_word_spaces_and_multibyte_characters(chat):
    """Metaspace word spaces and characters split over byte tokens: the streamed text is decode(all), and
    what transformers' TextStreamer prints."""
    ids = chat.zt.encode("the cat sat on 日本 the mat. Hello é world", add_special_tokens=False)
    assert any(chat.zt.decode([i]) == "\ufffd" for i in ids), "no split multi-byte character in the test"
    expected = chat.zt.decode(ids)
    assert " ".join(chat.zt.decode([i]) for i in ids) != expected  # token-by-token decoding is wrong
    ours = _stream(TextStreamer, chat.zt, ids)
    assert ours == expected + "\n"
    assert "\ufffd" not in ours
    assert ours == _stream(transformers.TextStreamer, chat.tok, ids, skip_special_tokens=True)


def test_streamer_objects_and_callbacks(chat):
    """transformers' TextStreamer / TextIteratorStreamer (put/end protocol) and a plain callback."""
    ids = chat.batch.input_ids[1:, -2:]
    expected = chat.hf.generate(ids, max_new_tokens=8, do_sample=False)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        got = chat.ours.generate(ids, max_new_tokens=8, streamer=transformers.TextStreamer(chat.tok,
                                                                                               skip_prompt=True))
    assert torch.equal(got, expected)
    assert buffer.getvalue() == chat.tok.decode(got[0, 2:]) + "\n"
    iterator = transformers.TextIteratorStreamer(chat.tok, skip_prompt=True, skip_special_tokens=True)
    chat.ours.generate(ids, max_new_tokens=8, streamer=iterator)
    assert "".join(iterator) == chat.tok.decode(got[0, 2:], skip_special_tokens=True)
    steps = []
    chat.ours.generate(ids, max_new_tokens=8, streamer=lambda t: steps.append(t.tolist()))
    assert [s[0] for s in steps] == got[0, 2:].tolist()


# ---------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("saved", [torch.float32, torch.bfloat16])
def test_dtype_auto_and_torch_dtype(chat, tmp_path, saved):
    path = tmp_path / "c"
    load_hf(chat.path).to(saved).save_pretrained(path)
    reference = upstream().ZayaForCausalLM.from_pretrained(path, dtype="auto")
    assert zaya1.ZayaForCausalLM.from_pretrained(path, dtype="auto").dtype == reference.dtype == saved
    assert zaya1.ZayaForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert zaya1.ZayaForCausalLM.from_pretrained(path, torch_dtype="float16").dtype == torch.float16


@pytest.mark.parametrize("sliding_rope", [{"partial_rotary_factor": 0.25}, {"partial_rotary_factor": 1.0}, {}],
                         ids=["quarter", "full", "unset"])
def test_per_layer_type_rotary_width(tmp_path, report, sliding_rope):
    """Sliding layers rotate their own share of each head (unset in their rope dict: upstream's 1.0)."""
    rope = {"hybrid": dict(ROPE["hybrid"], partial_rotary_factor=0.5),
            "hybrid_sliding": {"rope_type": "default", "rope_theta": 500.0, **sliding_rope}}
    hf = build_hf_checkpoint(tmp_path, hf_config("sliding", rope_parameters=rope), seed=5)
    ours = zaya1.ZayaForCausalLM.from_pretrained(tmp_path)
    assert ours.config.rotary_dims["sliding"] == int(32 * sliding_rope.get("partial_rotary_factor", 1.0))
    ids = torch.randint(3, 160, (2, 13), generator=torch.Generator().manual_seed(0))
    assert report(f"sliding rotary {sliding_rope or 'unset'}", max_diff(ours(ids).logits, hf(ids).logits)) <= TOL
    assert torch.equal(ours.generate(ids, max_new_tokens=6), hf.generate(ids, max_new_tokens=6, do_sample=False))


def upstream_tester_config(**changes) -> transformers.ZayaConfig:
    """transformers' ZayaModelTester: CausalLMModelTester's defaults (hidden_act="gelu", vocab 99, hidden 32,
    2 heads) with ZAYA's overrides (2 layers, moe_intermediate_size 32, top-1, a sliding layer of window 64)."""
    fields = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  head_dim=16, hidden_act="gelu", max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, num_experts=8, moe_intermediate_size=32, num_experts_per_tok=1,
                  layer_types=["hybrid", "hybrid_sliding"], sliding_window=64)
    return upstream().ZayaConfig(**(fields | changes))


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu"])
def test_upstream_tester_config_and_activations(tmp_path, report, act):
    hf = build_hf_checkpoint(tmp_path, upstream_tester_config(hidden_act=act), seed=1)
    ours = zaya1.ZayaForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, 99, (3, 7), generator=torch.Generator().manual_seed(0))
    assert report(f"upstream tester config, hidden_act={act}", max_diff(ours(ids).logits, hf(ids).logits)) <= TOL
    assert torch.equal(ours.generate(ids, max_new_tokens=5, eos_token_id=[]),
                       hf.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None, min_new_tokens=5))


def test_unknown_activation_is_refused(tmp_path):
    build_hf_checkpoint(tmp_path, upstream_tester_config(), seed=1)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"hidden_act": "swishy"}))
    with pytest.raises(ConfigError, match="hidden_act='swishy' is not an activation transformers knows"):
        zaya1.ZayaForCausalLM.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- generate
def test_generation_config_eos_stops_like_upstream(chat):
    batch = chat.batch
    expected = chat.hf.generate(**batch, max_new_tokens=8)  # EOS list from generation_config.json
    width = batch.input_ids.shape[1]
    stop_at = expected[0, width:].tolist().index(chat.stop)  # row 0 stops at the generation_config.json EOS
    assert (expected[0, width + stop_at + 1:] == 0).all() and stop_at < 7
    got = chat.ours.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=8)
    assert torch.equal(got, expected)
    # explicit arguments win over generation_config.json
    assert torch.equal(chat.ours.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=8,
                                             eos_token_id=[]),
                       chat.hf.generate(**batch, max_new_tokens=8, eos_token_id=None, min_new_tokens=8))


def test_generation_config_sampling_defaults_like_upstream(chat, tmp_path):
    """Sampling settings from generation_config.json; the same draws from torch's global RNG as upstream."""
    hf, ours = with_generation_config(chat.path, tmp_path / "s", do_sample=True, temperature=0.7, top_k=20,
                                      top_p=0.9, repetition_penalty=1.3, max_new_tokens=12, eos_token_id=1)
    batch = chat.batch
    for seed in range(3):
        torch.manual_seed(seed)
        expected = hf.generate(**batch)
        torch.manual_seed(seed)
        got = ours.generate(batch.input_ids, attention_mask=batch.attention_mask)
        assert got.shape[1] == batch.input_ids.shape[1] + 12
        assert torch.equal(got, expected), seed
    greedy = hf.generate(**batch, do_sample=False, repetition_penalty=1.0, max_new_tokens=5)
    assert torch.equal(ours.generate(batch.input_ids, attention_mask=batch.attention_mask, do_sample=False,
                                     repetition_penalty=1.0, max_new_tokens=5), greedy)
    assert torch.equal(ours.generate(batch.input_ids, attention_mask=batch.attention_mask, temperature=0,
                                     repetition_penalty=1.0, max_new_tokens=5), greedy)  # 0 = greedy


def test_upstream_integration_test_call(chat):
    """upstream's integration test: generate(..., do_sample=False, top_k=None, top_p=None)."""
    batch = chat.batch
    kwargs = dict(max_new_tokens=6, do_sample=False, top_k=None, top_p=None, temperature=None)
    assert torch.equal(chat.ours.generate(batch.input_ids, attention_mask=batch.attention_mask, **kwargs),
                       chat.hf.generate(**batch, **kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(max_length=14), dict(max_new_tokens=9, min_new_tokens=6), dict(max_new_tokens=7, repetition_penalty=1.5),
    dict(generation_config=transformers.GenerationConfig(max_new_tokens=5, eos_token_id=[], pad_token_id=0)),
    dict(max_new_tokens=6, min_length=14), dict(max_new_tokens=6, repetition_penalty=0.7, eos_token_id=[7, 9]),
], ids=["max_length", "min_new_tokens", "repetition_penalty", "GenerationConfig", "min_length", "penalty<1"])
def test_transformers_generate_arguments(chat, kwargs):
    batch = chat.batch
    expected = chat.hf.generate(**batch, do_sample=False, **kwargs)
    got = chat.ours.generate(batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    assert torch.equal(got, expected)


def test_return_dict_with_scores_and_logits(chat, report):
    batch = chat.batch
    kwargs = dict(max_new_tokens=6, return_dict_in_generate=True, output_scores=True, output_logits=True,
                  repetition_penalty=1.2)
    expected = chat.hf.generate(**batch, do_sample=False, **kwargs)
    got = chat.ours.generate(batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) and len(got.logits) == len(expected.logits)
    assert report("generate scores", max(max_diff(a, b) for a, b in zip(got.scores, expected.scores))) <= TOL
    assert report("generate logits", max(max_diff(a, b) for a, b in zip(got.logits, expected.logits))) <= TOL


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(num_beams=2), ["num_beams=2", "beam search is not supported"]),
    (dict(num_return_sequences=2), ["num_return_sequences=2"]),
    (dict(penalty_alpha=0.6), ["unsupported argument(s) ['penalty_alpha']", "supported:"]),
    (dict(generation_config=transformers.GenerationConfig(num_beams=3)), ["num_beams=3"]),
    (dict(max_length=3), ["max_length=3", "counts the prompt"]),
    (dict(repetition_penalty=0.0), ["repetition_penalty=0.0"]),
    (dict(streamer=42), ["streamer=int must be a callable fn(tokens) or an object with put(tokens) and end()"]),
])
def test_unsupported_generate_arguments_are_refused(chat, kwargs, fragments):
    with pytest.raises(InputError) as err:
        chat.ours.generate(chat.batch.input_ids, max_new_tokens=4, **kwargs) if "max_length" not in kwargs \
            else chat.ours.generate(chat.batch.input_ids, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_empty_prompt_and_broken_generation_config(chat, tmp_path):
    with pytest.raises(InputError, match=r"input_ids is empty \(shape \[1, 0\]\): an empty prompt"):
        chat.ours.generate(torch.tensor([[]]))  # float32, as torch.tensor of an empty list is
    shutil.copytree(chat.path, tmp_path / "c")
    (tmp_path / "c" / "generation_config.json").write_text("{not json")
    with pytest.raises(zaya1.CheckpointError, match="generation_config.json is not valid JSON"):
        zaya1.ZayaForCausalLM.from_pretrained(tmp_path / "c")
