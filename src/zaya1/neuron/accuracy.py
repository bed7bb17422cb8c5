"""NxDI's logit check (``check_accuracy_logits_v2``) of a Neuron model against zaya1's CPU model, like for like.

NxDI's check drives the Neuron model through its HuggingFaceGenerationAdapter with ``min_new_tokens =
max_new_tokens`` (utils/accuracy.py): transformers' MinNewTokensLength processor puts -inf in the EOS columns of
every device score, and NxDI's own golden (``generate_expected_logits``: the Hugging Face model's ``generate``
with the same arguments) has them too. ``expected_logits`` makes the golden the same way from zaya1's CPU
model (its ``generate`` with ``min_new_tokens``, greedy, output scores), so the greedy continuation never holds
an EOS the device may not pick, and both sides mask the same columns, which torch_neuronx's
``logit_validation`` leaves out. ``check_logits`` names the EOS list explicitly, so the adapter masks exactly
the ids the golden masks.
"""

from __future__ import annotations

import torch


def expected_logits(reference, prompts: torch.Tensor, num_tokens: int, eos_token_ids: list[int]) -> torch.Tensor:
    """NxDI's golden from ``reference`` (a CPU ZayaForCausalLM): greedy scores of ``num_tokens`` new tokens after
    ``prompts`` [B, S], EOS columns -inf at every step. -> [num_tokens, B, V] (NxDI's layout)."""
    out = reference.generate(prompts, max_new_tokens=num_tokens, min_new_tokens=num_tokens, do_sample=False,
                             repetition_penalty=1.0, eos_token_id=eos_token_ids, return_dict_in_generate=True,
                             output_scores=True)
    return torch.stack(out.scores)


def check_logits(neuron, expected: torch.Tensor, prompts: torch.Tensor, eos_token_ids: list[int],
                 **tolerances) -> dict:
    """NxDI's ``check_accuracy_logits_v2`` of ``neuron`` (a NeuronZayaForCausalLM returning logits) against
    ``expected`` [N, B, V] (``expected_logits`` with the same EOS list); ``tolerances``: its ``tol_map`` /
    ``divergence_difference_tol`` (default: torch_neuronx's). Raises NxDI's LogitMatchingValidationError."""
    from neuronx_distributed_inference.utils.accuracy import check_accuracy_logits_v2
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, pad_token_id=neuron.config.pad_token_id, eos_token_id=eos_token_ids)
    return check_accuracy_logits_v2(neuron, expected, prompts, torch.ones_like(prompts), config,
                                    num_tokens_to_check=expected.shape[0], **tolerances)
