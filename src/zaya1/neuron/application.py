"""``NeuronZayaForCausalLM``: NxDI's application class for ZAYA1 (compile, load, CPU mode) with the step API
of zaya1.generation, so generation runs through the same loop as on CPU/GPU.

The step functions go through NxDI's own ``NeuronBaseForCausalLM.forward`` (models/model_base.py): its model
wrapper pads to the compiled buckets, sorts rows by seq_ids, and routes to context encoding when
``position_ids.min() == 0`` and there is more than one token, else to token generation.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM
from neuronx_distributed_inference.modules.generation.sampling import prepare_sampling_params

from .artifacts import (MANIFEST_NAME, ArtifactManifest, check_manifest, check_request, graph_expert_dtype,
                        load_manifest)
from ..checkpoint import resolve_dtype
from ..errors import ArtifactError, InputError
from ..generation import SamplingParams, generate
from ..model import ZayaForCausalLM
from ..sharding import neuron_state_dict
from .modeling import NeuronZayaModel, ZayaInferenceConfig


@dataclass
class DeviceState:
    """Host handle of the state that lives in the NxDI model (KV cache and CCA state)."""

    max_batch: int
    max_seq: int


class NeuronZayaForCausalLM(NeuronBaseForCausalLM):
    """ZAYA1 through NxDI. ``compile(dir)`` traces it ahead of time (scripts/compile.py adds the manifest and
    atomic writes), ``from_compiled(dir)`` loads compiled artifacts, ``to_cpu()`` runs NxDI's CPU mode;
    ``generate`` is zaya1.generation.generate over ``new_state`` / ``prefill`` / ``decode``."""

    _model_cls = NeuronZayaModel
    manifest: ArtifactManifest | None = None  # set by load() / to_cpu()
    _sampling: SamplingParams | None = None  # for on-device sampling: configure_sampling()
    device = torch.device("cpu")  # where step inputs and outputs live (the host)

    @classmethod
    def get_config_cls(cls):
        return ZayaInferenceConfig

    @staticmethod
    def load_hf_model(model_path, **kwargs):
        """The CPU reference (used by NxDI's accuracy utilities)."""
        return ZayaForCausalLM.from_pretrained(model_path, **kwargs)

    @property
    def checkpoint_path(self) -> str:
        return self.config._name_or_path

    def checkpoint_loader_fn(self, mmap: bool = False):
        """Either checkpoint layout -> canonical weights (zaya1.checkpoint; fp8 experts quantized from a dense
        checkpoint when the config holds them in fp8) -> Neuron state dict (zaya1.sharding, the plan the CPU
        simulation proves) + the lm_head and NxDI's rank tensor."""
        zaya, nc = self.config.zaya_config, self.neuron_config
        canonical = ZayaForCausalLM.from_pretrained(self.checkpoint_path, dtype=resolve_dtype(nc.torch_dtype),
                                                    expert_dtype=zaya.expert_quantization).state_dict()
        lm_head = canonical.pop("lm_head.weight", None)
        # a tied head is a copy: NxD's save_file refuses tensors that share memory (as NxDI's llama clones it)
        lm_head = canonical["model.embed_tokens.weight"].clone() if lm_head is None else lm_head
        # consume: each canonical tensor is dropped once its Neuron form exists (about one model in memory)
        state = neuron_state_dict(canonical, zaya, nc.tp_degree, consume=True)
        state["lm_head.weight"] = lm_head
        state["rank_util.rank"] = torch.arange(nc.tp_degree, dtype=torch.int32)
        return state

    # ------------------------------------------------------------------ artifacts
    @classmethod
    def from_compiled(cls, compiled_path: str, model_path: str | None = None) -> "NeuronZayaForCausalLM":
        """Load artifacts from ``compiled_path``; ``model_path`` (the checkpoint) overrides the one recorded at
        compile time and is needed only when the weights were not pre-sharded into the artifacts."""
        if not (Path(compiled_path) / "neuron_config.json").is_file():
            raise ArtifactError(f"{compiled_path} has no neuron_config.json: not a compiled ZAYA1 model. Compile "
                                f"it with `zaya1 compile --compiled-model-path {compiled_path} ...`.")
        config = ZayaInferenceConfig.load(str(compiled_path))
        if model_path is not None:
            config._name_or_path = str(model_path)
        model = cls(config._name_or_path, config)
        model.load(compiled_path)
        return model

    def expected_manifest(self, fingerprint: str | None = None) -> ArtifactManifest:
        """The manifest artifacts compiled with this config from its checkpoint carry."""
        nc = self.neuron_config
        fields = dict(tp_degree=nc.tp_degree, batch_size=nc.batch_size, seq_len=nc.seq_len,
                      max_context_length=nc.max_context_length, buckets=nc.context_encoding_buckets,
                      dtype=nc.torch_dtype, on_device_sampling=nc.on_device_sampling_config is not None,
                      token_generation_buckets=nc.token_generation_buckets,
                      expert_dtype=graph_expert_dtype(self.config.zaya_config, self.checkpoint_path))
        if fingerprint is not None:
            return ArtifactManifest(checkpoint_fingerprint=fingerprint, **fields)
        return ArtifactManifest.for_checkpoint(self.checkpoint_path, **fields)

    def load(self, compiled_model_path, *args, **kwargs):
        """Load compiled artifacts. With zaya1's manifest (``zaya1 compile``) they must match this config,
        checkpoint and SDK; directories compiled by NxDI's own ``compile()`` (vllm-neuron) load with a
        warning that those checks were skipped."""
        path = Path(compiled_model_path)
        pre_sharded = self.neuron_config.save_sharded_checkpoint
        if (path / MANIFEST_NAME).is_file():
            manifest = load_manifest(path)
            checkpoint_here = Path(self.checkpoint_path, "config.json").is_file()
            if not checkpoint_here and not pre_sharded:
                raise ArtifactError(f"{path} holds no pre-sharded weights and the checkpoint {self.checkpoint_path} "
                                    f"is not there: pass model_path= (zaya1 generate --model) to the checkpoint.")
            expected = self.expected_manifest(None if checkpoint_here else manifest.checkpoint_fingerprint)
            check_manifest(manifest, expected, artifacts_dir=path)
            self.manifest = manifest
        else:
            warnings.warn(f"{path} has no {MANIFEST_NAME} (compiled by NxDI's own compile(), e.g. by vllm-neuron): "
                          f"the zaya1 checks of checkpoint, settings and SDK versions were skipped.", stacklevel=2)
            self.manifest = self.expected_manifest(fingerprint="unchecked")
        return super().load(os.path.join(str(compiled_model_path), ""), *args, **kwargs)

    def to_cpu(self):
        """NxDI's CPU mode (models/application_base.py): the same graphs run eagerly on CPU."""
        super().to_cpu()
        self.manifest = self.expected_manifest()

    # ------------------------------------------------------------------ step API (zaya1.generation)
    @property
    def samples_on_device(self) -> bool:
        return self.neuron_config.on_device_sampling_config is not None

    def new_state(self, max_batch: int, max_seq: int) -> DeviceState:
        nc = self.neuron_config
        if max_batch > nc.batch_size:
            raise InputError(f"a batch of {max_batch} sequences exceeds the compiled batch_size={nc.batch_size}; "
                             f"split it or recompile with zaya1 compile --batch-size {max_batch}.")
        self.reset()
        return DeviceState(max_batch, nc.seq_len)

    def prefill(self, input_ids, lengths, seq_ids, state=None) -> torch.Tensor:
        """Context encoding of right-padded prompts: logits [B, V] of each last real token (or tokens [B]
        sampled on device). A 1-token bucket is widened to 2: NxDI routes 1-token inputs to token generation."""
        if input_ids.shape[1] == 1:
            input_ids = torch.cat([input_ids, torch.full_like(input_ids, self.config.pad_token_id)], dim=1)
        positions = torch.arange(input_ids.shape[1]).expand(input_ids.shape[0], -1)
        mask = (positions < lengths[:, None].cpu()).to(torch.int32)
        return self._step(input_ids, mask, positions, seq_ids)

    def decode(self, input_ids, positions, seq_ids, state=None, kv_len=None) -> torch.Tensor:
        """One token per sequence at its own position (NxDI's adapter would use one position for all rows)."""
        width = kv_len or int(positions.max()) + 1
        mask = (torch.arange(width)[None] <= positions[:, None].cpu()).to(torch.int32)
        return self._step(input_ids, mask, positions[:, None], seq_ids)

    def _step(self, input_ids, mask, positions, seq_ids) -> torch.Tensor:
        """One NxDI forward with rows sorted by seq_ids (NxDI's cache update writes input row i to cache row i,
        so vllm-neuron sorts too); results come back in the caller's row order."""
        seq_ids = seq_ids.cpu()
        order = torch.argsort(seq_ids)
        if input_ids.shape[1] > 1 and not self.neuron_config.is_continuous_batching and not torch.equal(
                seq_ids[order], torch.arange(len(seq_ids))):
            raise InputError(f"seq_ids={seq_ids.tolist()}: without continuous batching a prefill fills cache rows "
                             f"0..{len(seq_ids) - 1}; pass a permutation of them, or compile with "
                             f"--continuous-batching to prefill chosen rows.")
        out = self(input_ids=input_ids.cpu()[order], attention_mask=mask[order], position_ids=positions.cpu()[order],
                   seq_ids=seq_ids[order], sampling_params=self._sampling_params(input_ids.shape[0]))
        restore = torch.argsort(order)
        if self.samples_on_device:
            return out.tokens.reshape(input_ids.shape[0], -1)[restore, -1].to(torch.long)
        return out.logits[restore, -1, :self.config.vocab_size].to(torch.float32)

    def _sampling_params(self, batch: int) -> torch.Tensor | None:
        if not self.samples_on_device:
            return None
        params = self._sampling or SamplingParams()
        if not params.do_sample:
            return prepare_sampling_params(batch, top_k=[1], top_p=[1.0], temperature=[1.0])
        return prepare_sampling_params(batch, top_k=[self._top_k(params)], top_p=[params.top_p],
                                       temperature=[params.temperature])

    def _top_k(self, params: SamplingParams) -> int:
        vocab = self.config.vocab_size
        return min(params.top_k or vocab, vocab)  # 0: no top-k filter, the whole vocabulary

    def configure_sampling(self, params: SamplingParams) -> None:
        """What on-device sampling applies in the following steps (zaya1.generation calls it). NxDI's sampler
        draws from the ``global_topk`` (default 256) most likely tokens at most, so a larger top_k (or none,
        on a larger vocabulary) is refused rather than silently cut."""
        ods = self.neuron_config.on_device_sampling_config
        if params.do_sample and not ods.do_sample:
            raise InputError("do_sample=True, but this model was compiled with greedy on-device sampling; "
                             "recompile with zaya1 compile --on-device-sampling sample, or without on-device "
                             "sampling.")
        if params.do_sample and self._top_k(params) > ods.global_topk:
            raise InputError(f"top_k={params.top_k or 'unset (whole vocabulary)'}: on-device sampling draws from the "
                             f"{ods.global_topk} most likely tokens at most (NxDI's global_topk); pass top_k <= "
                             f"{ods.global_topk}, or compile without --on-device-sampling to sample on the host.")
        self._sampling = params

    # ------------------------------------------------------------------ generation
    def check_request(self, batch: int, prompt_lengths: list[int], max_new_tokens: int) -> None:
        """The prompts against the compiled shapes (zaya1.generation calls it before anything runs)."""
        if self.manifest is None:
            raise ArtifactError("the model is neither loaded nor in CPU mode: call from_compiled(...) / load(dir) "
                                "or to_cpu() first.")
        check_request(self.manifest, batch, prompt_lengths, max_new_tokens)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """zaya1.generation.generate on this backend."""
        return generate(self, input_ids, attention_mask=attention_mask, max_seq_len=self.neuron_config.seq_len,
                        **kwargs)
