"""A CPU emulation of the native plugin's runner driving ``ZayaNativeForCausalLM``, as its sources were read
(docs/vllm-neuron.md lists each element with its file and commit): run it before renting a trn2.

What it reproduces: one page pool per layer shared by the attention and CCA-state groups (vLLM's hybrid
allocator hands out global block ids to both; block 0 is the null block), laid out page-major with the two
private pages appended (zero page, sink); the pool starts filled with NaN, so a read of memory the model did
not write shows; block tables per group (int32, -1 past the end), ``slot_mapping`` padded
with the sentinel of the plugin generation (0 on vLLM 0.24, -1 on 0.21); prefill of one request per step,
segmented into ``prefill_bucket``-token steps when longer (padded: token 0, the last position repeated);
decode batches of one token per row, padded to a batch bucket, with rows that finished or never started
(holes that keep a previous occupant's stale block ids); prefill and decode steps alternate while both are
pending, so sequences start and finish between other sequences' steps; decode context buckets (the block
table is cut to the smallest bucket holding every row); on-device sampling from ``sampling_params``;
tensor parallelism as simulated ranks (zaya1.simulated_tp's thread collectives); and, with
``prefix_cache``, vLLM's prefix caching by chained block hashes, the CCA state kept per block.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from ..config import ZayaConfig
from ..errors import ConfigError, InputError
from ..simulated_tp import run_on_ranks, thread_comms
from .model import ZayaNativeForCausalLM, attention_name, state_name
from .spec import kv_page_bytes, min_block_size


@dataclass
class Request:
    rid: int
    prompt: list[int]
    max_new_tokens: int
    sampling: tuple[float, float, float]  # top_k, top_p, temperature (0 = greedy)
    forced: list[int] | None = None  # teacher forcing: these are fed back instead of the chosen tokens
    output: list[int] = field(default_factory=list)  # the tokens fed back
    chosen: list[int] = field(default_factory=list)  # the tokens the model chose
    logits: list[torch.Tensor] = field(default_factory=list)
    computed: int = 0  # tokens whose K/V and state are in the pages
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    blocks: dict[str, list[int]] = field(default_factory=lambda: {"attn": [], "state": []})
    row: int | None = None
    registered: int = 0  # full blocks entered into the prefix cache

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def prefilling(self) -> bool:
        return self.computed < len(self.prompt)

    def emit(self, token: int, logits: torch.Tensor) -> None:
        self.chosen.append(token)
        self.logits.append(logits)
        forced = self.forced is not None and len(self.output) < len(self.forced)
        self.output.append(self.forced[len(self.output)] if forced else token)


@dataclass
class Result:
    """One request's outcome: the generated token ids and the fp32 logits [n, V] each one was chosen from."""

    tokens: list[int]
    logits: torch.Tensor
    cached_tokens: int


class BlockPool:
    """vLLM's block allocator for a hybrid model: one id space for every group, reference counts, and the
    prefix cache (chained hash of a full block's tokens -> its attention and state blocks)."""

    def __init__(self, num_blocks: int):
        self.free = deque(range(1, num_blocks))  # 0 is the null block
        self.refs: dict[int, int] = {}
        self.cache: dict[int, tuple[int, int | None]] = {}  # the state block where one ends with this block
        self.hash_of: dict[int, int] = {}

    def allocate(self) -> int:
        if not self.free:
            raise ConfigError("the emulated page pool is full: raise num_blocks or lower max_num_seqs.")
        block = self.free.popleft()
        self.cache.pop(self.hash_of.pop(block, None), None)  # its cached contents are overwritten
        self.refs[block] = 1
        return block

    def share(self, block: int) -> None:
        if self.refs.get(block, 0) == 0:
            self.free.remove(block)
        self.refs[block] = self.refs.get(block, 0) + 1

    def release(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free.append(block)  # stays cached until reallocated (LRU order)

    def remember(self, key: int, attn: int, state: int | None) -> None:
        if key not in self.cache:
            self.cache[key] = (attn, state)
            for block in (attn, state):
                if block is not None:
                    self.hash_of[block] = key


def block_hashes(tokens: list[int], block_size: int, count: int) -> list[int]:
    """Chained hashes of the first ``count`` full blocks (a block's hash covers every token before it)."""
    hashes, prev = [], 0
    for j in range(count):
        prev = hash((prev, tuple(tokens[j * block_size:(j + 1) * block_size])))
        hashes.append(prev)
    return hashes


def smallest(buckets: list[int], need: int, what: str) -> int:
    fit = [b for b in buckets if b >= need]
    if not fit:
        raise InputError(f"{what} {need} exceeds the largest bucket {max(buckets)}; add a larger bucket.")
    return min(fit)


class Emulator:
    """The runner loop over rank models. ``models``: one ZayaNativeForCausalLM per rank (weights loaded)."""

    def __init__(self, models: list[ZayaNativeForCausalLM], block_size: int, num_blocks: int, prefill_bucket: int,
                 max_model_len: int, decode_buckets: list[int], context_buckets: list[int] | None = None,
                 prefix_cache: bool = False, segmented: bool = False, pad_slot: int = 0, compiled=None,
                 state_block: int | None = None):
        self.models, self.config = models, models[0].config
        self.block_size, self.prefill_bucket, self.max_model_len = block_size, prefill_bucket, max_model_len
        self.decode_buckets = sorted(decode_buckets)
        self.context_buckets = sorted(context_buckets or [max_model_len])
        self.prefix_cache, self.pad_slot = prefix_cache, pad_slot
        self.segmented = segmented or prefix_cache  # the plugin refuses prefix caching without segmented prefill
        # with prefix caching the state group keeps a page per state block (default: per KV block); else one
        # running page per sequence
        self.state_block = (state_block or block_size) if prefix_cache else max_model_len
        if prefix_cache and self.state_block % block_size:
            raise ConfigError(f"state_block={self.state_block} must be a multiple of block_size={block_size}.")
        for size in (max_model_len, *self.context_buckets):
            if size % block_size:
                raise ConfigError(f"max_model_len and context buckets must be multiples of block_size={block_size} "
                                  f"(got {size}), as the plugin's are.")
        self.pool = BlockPool(num_blocks)
        self.compiled = compiled is not None
        self.forwards = compiled or models
        spec = models[0].get_kv_spec()
        if block_size < min_block_size(spec):
            raise ConfigError(f"block_size={block_size} is too small: a page must hold a layer's CCA state "
                              f"(block_size >= {min_block_size(spec)} for this model and tp degree).")
        pages = num_blocks + 2
        for model in models:  # the runner's allocation and bind_kv_cache, per rank
            layer = model.get_kv_spec().layers[0]
            elems = kv_page_bytes(layer, block_size) // model.dtype.itemsize
            # one pool per layer index, shared by its attention and state groups: views of one tensor (a
            # common base, as torch.compile needs for in-place writes to aliased inputs), NaN where vLLM's
            # memory holds whatever was there, zeros in the zero page
            buffers = [torch.full((pages, elems), float("nan"), dtype=model.dtype) for _ in spec.layers]
            for buf in buffers:
                buf[-2].zero_()
            kv = {attention_name(i): [b.view(pages, 2, layer.num_kv_heads, block_size, layer.head_size)]
                  for i, b in enumerate(buffers)}
            states = {state_name(i): [b.view(pages, elems)] for i, b in enumerate(buffers)}
            model.bind_kv_cache(kv | states)
        self.rows: dict[int, Request] = {}
        self.stale: dict[int, tuple[list[int], list[int]]] = {}  # row -> block ids of its last occupant

    # ------------------------------------------------------------------ scheduling
    def warm_up(self) -> None:
        """One forward per graph the runner compiles: the prefill bucket and every decode batch x context
        bucket, all rows dead (padding slots: nothing is written but the sink)."""
        full = max(self.context_buckets) // self.block_size
        self.step(1, self.prefill_bucket, full, [], self.segmented)
        for rows in self.decode_buckets:
            for context in self.context_buckets:
                self.step(rows, 1, context // self.block_size, [], False)

    def run(self, requests: list[Request], max_num_seqs: int) -> None:
        """Serve ``requests``; a compiled model is warmed up first and then may not compile again, as the
        plugin's serving forwards run under ``torch.compiler.set_stance("fail_on_recompile")``."""
        if self.compiled:
            self.warm_up()
            with torch.compiler.set_stance("fail_on_recompile"):
                return self.serve(requests, max_num_seqs)
        return self.serve(requests, max_num_seqs)

    def serve(self, requests: list[Request], max_num_seqs: int) -> None:
        waiting, prefill_next = deque(requests), True
        while waiting or self.rows:
            prefilling = next((r for r in self.rows.values() if r.prefilling), None)
            if prefilling is None and waiting and len(self.rows) < max_num_seqs:
                prefilling = self.admit(waiting.popleft())
            decoding = any(not r.prefilling for r in self.rows.values())
            if prefilling is not None and (prefill_next or not decoding):
                self.prefill(prefilling)
            else:
                self.decode()
            prefill_next = not prefill_next
            self.finish()

    def admit(self, req: Request) -> Request:
        """A free row; with prefix caching, the longest cached chain of the prompt's full blocks that ends
        at a state boundary (whose state page is kept), leaving at least the prompt's last token to compute."""
        req.row = min(set(range(len(self.rows) + 1)) - set(self.rows))
        self.rows[req.row] = req
        if self.prefix_cache:
            chain = []
            for key in block_hashes(req.prompt, self.block_size, (len(req.prompt) - 1) // self.block_size):
                if key not in self.pool.cache:
                    break
                chain.append(self.pool.cache[key])
            while chain and chain[-1][1] is None:
                chain.pop()
            for attn, state in chain:
                for group, block in (("attn", attn), ("state", state)):
                    if block is not None:
                        self.pool.share(block)
                        req.blocks[group].append(block)
            req.registered = len(chain)
            req.computed = req.cached_tokens = len(chain) * self.block_size
        return req

    def reserve(self, req: Request, upto: int) -> None:
        """Blocks for positions below ``upto`` in both groups."""
        for group, size in (("attn", self.block_size), ("state", self.state_block)):
            while len(req.blocks[group]) * size < upto:
                req.blocks[group].append(self.pool.allocate())

    def finish(self) -> None:
        for row, req in list(self.rows.items()):
            if self.prefix_cache:  # full blocks enter the cache, with the state page where one ends there
                full = req.computed // self.block_size
                keys = block_hashes(req.tokens, self.block_size, full)
                for j in range(req.registered, full):
                    end = (j + 1) * self.block_size
                    state = req.blocks["state"][end // self.state_block - 1] if end % self.state_block == 0 else None
                    self.pool.remember(keys[j], req.blocks["attn"][j], state)
                req.registered = full
            if len(req.output) >= req.max_new_tokens:
                for block in req.blocks["attn"] + req.blocks["state"]:
                    self.pool.release(block)
                self.stale[row] = (req.blocks["attn"], req.blocks["state"])
                del self.rows[row]

    # ------------------------------------------------------------------ steps
    def tables(self, reqs: list[Request | None], rows: int, width: int):
        """Block tables of both groups [rows, W] int32; a hole keeps its last occupant's ids (stale)."""
        state_width = -(-self.max_model_len // self.state_block)
        attn = torch.full((rows, width), -1, dtype=torch.int32)
        state = torch.full((rows, state_width), -1, dtype=torch.int32)
        for r in range(rows):
            blocks = reqs[r].blocks if reqs[r] is not None else dict(zip(("attn", "state"), self.stale.get(r, ([], []))))
            attn[r, :min(width, len(blocks["attn"]))] = torch.tensor(blocks["attn"][:width], dtype=torch.int32)
            state[r, :len(blocks["state"])] = torch.tensor(blocks["state"], dtype=torch.int32)
        return attn, state

    def slot(self, req: Request, position: int) -> int:
        return req.blocks["attn"][position // self.block_size] * self.block_size + position % self.block_size

    def metadata(self, attn_table, state_table, slots, query_len: int, segment: int, cached: int) -> dict:
        attn = {"block_table_tensor": attn_table, "slot_mapping": slots, "max_query_len": query_len,
                "block_size": self.block_size, "max_blocks_per_seq": attn_table.shape[1],
                "decode_token_threshold": 1, "kv_segment_size": segment,
                "cached_seq_len": torch.tensor([[cached]], dtype=torch.int32)}
        state = attn | {"block_table_tensor": state_table, "block_size": self.state_block,
                        "max_blocks_per_seq": state_table.shape[1]}
        layers = range(self.config.num_hidden_layers)
        return {attention_name(i): attn for i in layers} | {state_name(i): state for i in layers}

    def step(self, rows: int, query: int, width: int, work: list[tuple[int, Request, int, int]], segmented: bool):
        """One forward of ``rows`` x ``query`` tokens with block tables ``width`` blocks wide. ``work``: (row,
        request, first position, token count) of each live row; everything else is padding (token 0, the
        slot sentinel, the row's last real position, or 0 for a dead row). Returns (tokens, logits) [rows]."""
        reqs = [None] * rows
        ids = torch.zeros(rows, query, dtype=torch.int32)
        positions = torch.zeros(rows, query, dtype=torch.long)
        slots = torch.full((rows, query), self.pad_slot, dtype=torch.long)
        params = torch.tensor([[-1.0, 1.0, 0.0]]).repeat(rows, 1)
        last = torch.zeros(rows, dtype=torch.long)
        for r, req, start, n in work:
            reqs[r] = req
            tokens = req.tokens[start:start + n]
            ids[r, :n] = torch.tensor(tokens, dtype=torch.int32)
            positions[r] = start + n - 1
            positions[r, :n] = torch.arange(start, start + n)
            slots[r, :n] = torch.tensor([self.slot(req, p) for p in range(start, start + n)])
            params[r] = torch.tensor(req.sampling)
            last[r] = r * query + n - 1
        attn_table, state_table = self.tables(reqs, rows, width)
        cached = work[0][2] if work and query > 1 else 0
        meta = self.metadata(attn_table, state_table, slots.flatten(), query,
                             self.prefill_bucket if segmented and query > 1 else 0, cached)
        return run_on_ranks(self.models, lambda model, rank: self.forwards[rank](
            input_ids=ids.flatten(), positions=positions.flatten(), attn_metadata=meta, sampling_positions=last,
            sampling_params=params))

    def prefill(self, req: Request) -> None:
        start = req.computed
        n = min(self.prefill_bucket, len(req.prompt) - start)
        self.reserve(req, start + n)
        width = max(self.context_buckets) // self.block_size
        tokens, logits = self.step(1, self.prefill_bucket, width, [(0, req, start, n)], self.segmented)
        req.computed += n
        if not req.prefilling:
            req.emit(int(tokens[0]), logits[0])

    def decode(self) -> None:
        live = {row: req for row, req in self.rows.items() if not req.prefilling}
        rows = smallest(self.decode_buckets, max(live) + 1, "decode batch row")
        for req in live.values():
            self.reserve(req, req.computed + 1)
        need = max(req.computed + 1 for req in live.values())
        width = smallest(self.context_buckets, need, "context length") // self.block_size
        tokens, logits = self.step(rows, 1, width, [(r, req, req.computed, 1) for r, req in live.items()], False)
        for r, req in live.items():
            req.computed += 1
            req.emit(int(tokens[r]), logits[r])


def load_ranks(model_dir: str | Path, tp_degree: int, dtype, **config_overrides) -> list[ZayaNativeForCausalLM]:
    """The runner's construction per rank: from_configs on the meta device, then load_weights."""
    raw = ZayaConfig.from_pretrained(model_dir, **config_overrides).to_dict()
    comms = thread_comms(tp_degree) if tp_degree > 1 else [None]
    models = []
    for comm in comms:
        with torch.device("meta"):
            model = ZayaNativeForCausalLM.from_configs(raw, SimpleNamespace(torch_dtype=dtype), comm=comm)
        model.load_weights(model_dir)
        models.append(model)
    return models
