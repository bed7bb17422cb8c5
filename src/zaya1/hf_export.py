"""``ZayaForCausalLM.save_pretrained``: a model loaded from either layout, written as a Hugging Face-layout
checkpoint that upstream transformers (>= 5.23), vLLM and zaya1 load: config.json
(``ZayaConfig.to_hf_dict``), model.safetensors under the HF names (the loader's own map,
``checkpoint.hf_key_table``, read backwards) and generation_config.json with the generation settings the
model carries. Quantized experts are written as stored, one compressed-tensors module per expert
projection, with the compressed-tensors ``quantization_config`` (the format transformers + compressed-tensors
and vLLM load). It is written into a temporary sibling directory and renamed into place when complete
(zaya1.atomic), so a half-written checkpoint never looks complete."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import atomic_dir, ensure_parent
from .checkpoint import hf_key_table
from .errors import ArtifactError, InputError

WHAT = "a Hugging Face-layout checkpoint"
# the tokenizer's files, copied with ``tokenizer_from`` (as transformers' tokenizer save_pretrained writes them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")
OUTPUTS = ("config.json", "model.safetensors", "generation_config.json")  # all it writes, without tokenizer_from


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """HF tensor name -> the model's weight (the halves of the fused value projection as copies: safetensors
    refuses tensors that share memory)."""
    params = dict(model.named_parameters()) | dict(model.named_buffers())  # buffers: quantized experts as stored
    return {key: params[target].detach() if index is None else params[target].detach()[index].clone()
            for key, (target, index) in hf_key_table(model.config).items()}


def _check_destination(final: Path, outputs: tuple[str, ...]) -> None:
    ensure_parent(final, what=WHAT)
    if final.exists() and not final.is_dir():
        raise ArtifactError(f"cannot save to {final}: it is a file. Choose a directory path.")
    foreign = sorted(p.name for p in final.iterdir() if p.name not in outputs) if final.is_dir() else []
    if foreign:
        raise ArtifactError(f"{final} holds files save_pretrained does not write ({', '.join(foreign[:5])}); it "
                            f"replaces a directory only when it holds nothing else. Save to a new directory (then "
                            f"copy the tokenizer files there) or empty this one.")


def save_pretrained(model, directory: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """Write ``model`` (a ZayaForCausalLM, any dtype) to ``directory`` in the HF layout; returns its path.
    ``tokenizer_from``: a checkpoint directory whose tokenizer files are copied along."""
    if model.comm.world_size != 1:
        raise InputError(f"save_pretrained on rank {model.comm.rank} of {model.comm.world_size}: save the whole "
                         f"model (ZayaForCausalLM.from_pretrained), not one tensor-parallel rank.")
    final = Path(directory).absolute()
    _check_destination(final, OUTPUTS + (TOKENIZER_FILES if tokenizer_from is not None else ()))
    config = model.config.replace(torch_dtype=str(model.dtype).removeprefix("torch."))
    hf = config.to_hf_dict()
    own = {name: hf[name] for name in ("router_norm_eps", "skip_expert_output") if name in hf}
    if own:
        warnings.warn(f"save_pretrained({final}): transformers ignores {own} in config.json (it uses router eps = "
                      f"rms_norm_eps={config.rms_norm_eps} and a zero skip expert), so its logits will differ from "
                      f"this model's; zaya1 reads them back. For a checkpoint every tool computes alike, load with "
                      f"router_norm_eps={config.rms_norm_eps}, skip_expert_output='zero' before saving.", stacklevel=3)
    defaults = getattr(model, "generation_config", None)
    try:
        with atomic_dir(final, WHAT, complete=lambda path: (path / "config.json").is_file()) as tmp:
            save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            if defaults is not None and defaults.values:
                (tmp / "generation_config.json").write_text(json.dumps(defaults.values, indent=2, sort_keys=True)
                                                            + "\n")
            for name in TOKENIZER_FILES if tokenizer_from is not None else ():
                if (Path(tokenizer_from) / name).is_file():
                    shutil.copyfile(Path(tokenizer_from) / name, tmp / name)
            (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # disk full, permissions: the partial directory is gone already
        raise ArtifactError(f"saving {WHAT} to {final} failed midway ({exc}); nothing was written there"
                            + (" (the previous save is untouched)" if final.exists() else "")
                            + ". Check free disk space and permissions, then retry.") from exc
    return final
