"""The implementations under test, one ``Runner`` each: zaya1 (eager or compiled decode), upstream
transformers, the Neuron backend. ``generate_timed`` times one generate call token by token."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import InputError
from .measure import PeakRSS, sync_for


class StepClock:
    """Streamer for both generate()s: a timestamp per new token. transformers first puts the prompt."""

    def __init__(self, skip_first: bool, sync):
        self.skip_first, self.sync, self.times = skip_first, sync, []

    def __call__(self, tokens) -> None:
        self.put(tokens)

    def put(self, tokens) -> None:
        if self.skip_first:
            self.skip_first = False
            return
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@dataclass
class Run:
    ttft: float  # seconds from the call to the first token
    decode: float | None  # seconds per decode step (None with a single new token)
    peak_rss: int  # bytes above the level before the call
    peak_device: int | None = None
    tokens: torch.Tensor | None = None


class Runner:
    """One implementation on one device: ``generate_timed(prompts [B, S], new_tokens) -> Run``."""

    name = "?"
    model = None
    puts_prompt = False  # its generate() streams the prompt before the first new token (transformers' does)

    def __init__(self, device: str):
        self.device, self.sync = device, sync_for(device)

    def _generate(self, ids: torch.Tensor, new_tokens: int, clock: StepClock) -> torch.Tensor:
        raise NotImplementedError

    def generate_timed(self, ids: torch.Tensor, new_tokens: int) -> Run:
        ids = ids.to(self.device)
        clock = StepClock(skip_first=self.puts_prompt, sync=self.sync)
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        self.sync()
        with PeakRSS() as rss:
            start = time.perf_counter()
            out = self._generate(ids, new_tokens, clock)
        times = clock.times
        decode = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
        device_peak = torch.cuda.max_memory_allocated() - base if cuda else None
        return Run(times[0] - start, decode, rss.peak, device_peak, out[:, ids.shape[1]:].cpu())

    def state_bytes(self) -> tuple[int | None, int | None]:
        """(bytes per cached token, bytes per sequence) of the decode state."""
        raise NotImplementedError


class ZayaRunner(Runner):
    """zaya1's own generate(); ``compiled`` selects the torch.compile'd decode step of the same model."""

    def __init__(self, model, device: str, compiled: bool = False):
        super().__init__(device)
        self.model, self.compiled = model, compiled
        self.name = "zaya1+compile" if compiled else "zaya1"

    def _generate(self, ids, new_tokens, clock):
        self.model.compile_decode(self.compiled)
        return self.model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], streamer=clock)

    def state_bytes(self):
        state = self.model.new_state(1, 64)
        return state.nbytes_per_token(), state.nbytes_per_sequence()


def upstream_transformers():
    """transformers with upstream ZayaForCausalLM (>= 5.23), the benchmark's comparison, else InputError."""
    try:
        import transformers
    except ImportError:
        transformers = None
    if not hasattr(transformers, "ZayaForCausalLM"):
        found = (f"with transformers {transformers.__version__}, which has no ZayaForCausalLM" if transformers
                 else "with transformers, which is not installed")
        raise InputError(f"zaya1 bench compares {found}: pip install 'transformers>=5.23,<5.40' (or pip install "
                         f"-e '.[hf]'), or pass --no-hf to time zaya1 alone.")
    return transformers


class HFRunner(Runner):
    name, puts_prompt = "hf", True

    def __init__(self, path: Path, dtype: torch.dtype, device: str, attn: str, experts: str | None):
        super().__init__(device)
        transformers = upstream_transformers()
        self.version = transformers.__version__
        kwargs = {"dtype": dtype, "attn_implementation": attn}
        if experts:
            kwargs["experts_implementation"] = experts
        self.model = transformers.ZayaForCausalLM.from_pretrained(str(path), **kwargs).to(device).eval()
        self.model.generation_config.eos_token_id = None  # never stop early: every run decodes the same count
        self.attn = self.model.config._attn_implementation
        self.experts = getattr(self.model.config, "_experts_implementation", None) or "eager"

    def _generate(self, ids, new_tokens, clock):
        with torch.inference_mode():
            return self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                       do_sample=False, streamer=clock, pad_token_id=0)

    def state_bytes(self):
        ids = torch.randint(3, self.model.config.vocab_size, (1, 8), device=self.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                                      return_dict_in_generate=True, pad_token_id=0)
        cache, tokens = out.past_key_values, ids.shape[1] + 1
        kv = seq = 0
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                kv += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
            for name in ("conv_states", "recurrent_states"):
                seq += sum(t.numel() * t.element_size() for t in getattr(layer, name, {}).values()
                           if isinstance(t, torch.Tensor))
        return kv // tokens, seq


class NeuronRunner(Runner):
    name = "zaya1"

    def __init__(self, compiled: str, model_path: Path | None):
        super().__init__("cpu")
        from ...neuron import NeuronZayaForCausalLM

        self.model = NeuronZayaForCausalLM.from_compiled(compiled, model_path=model_path)

    def _generate(self, ids, new_tokens, clock):
        return self.model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], streamer=clock)

    def state_bytes(self):
        return None, None


def neuron_available() -> str | None:
    """None when the Neuron backend can run, else why it is skipped (zaya1.neuron imports without the SDK)."""
    try:
        from ... import neuron
    except ImportError:
        return "zaya1.neuron is not part of this installation"
    if not neuron.sdk_available():
        return f"Neuron SDK not installed (missing {', '.join(neuron.missing_sdk_packages())})"
    return None


def routing_summary(model, prompt_len: int, vocab: int, seed: int) -> list[str]:
    """Per layer: how many experts a random prompt's tokens choose, the busiest expert's share, skips."""
    counts = []

    def hook(router, inputs, output):
        counts.append(torch.bincount(output[0].flatten().cpu(), minlength=router.num_experts + 1))

    hooks = [layer.mlp.router.register_forward_hook(hook) for layer in model.model.layers]
    ids = torch.randint(3, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(model.device)
    try:
        with torch.inference_mode():
            model.prefill(ids, torch.tensor([prompt_len], device=model.device), torch.zeros(1, dtype=torch.long,
                          device=model.device), model.new_state(1, prompt_len))
    finally:
        for h in hooks:
            h.remove()
    return [f"layer {i}: {int((c[:-1] > 0).sum())}/{len(c) - 1} experts, busiest {c[:-1].max() / c.sum():.0%}, "
            f"skip {int(c[-1])}" for i, c in enumerate(counts)]
