"""Paged memory of the native plugin, as a ZAYA1 layer reads and writes it.

The runner gives the model one page-major pool per layer (``kv_cache_page_major``): ``pages - 2`` pages vLLM
allocates (block ids; 0 is vLLM's null block), then two private pages: the **zero page** (``pages - 2``), never
written, which dead rows and invalid block ids read, and the **sink** (``pages - 1``), which padded tokens and
dead rows write. An attention layer sees a page as ``[2, kv_heads, block_size, head_dim]`` (K then V); a CCA
state layer sees the same bytes as one row ``[conv C * (K-1) | value Cv | padding]`` in the model dtype.
Sources (read 2026-12): vllm-project/vllm-neuron vllm_neuron/model/qwen3_5/model.py@cb27dd0 (``_write_kv``,
``forward_decode``: flat rank-3 gathers, select instead of multiply), qwen3_5/deltanet.py@b3a5a71 (state rows,
read page / write page split, one full-width ``index_copy_``), RunanywhereAI/NotVllm-neuron
vllm_neuron/model/kv_cache.py@01048a0 (the two private pages).

Padding sentinels differ between plugin generations (vLLM 0.21 pads ``slot_mapping`` with -1, 0.24 with the
null block 0) and padded rows keep stale block ids, so everything here tests ``slot > 0`` and
``0 < block < zero page``.

Shapes: R rows (requests), W block-table width, P pages, nkv KV heads of this rank, bs block size, d head_dim.
"""

from __future__ import annotations

import torch


def zero_page(pages: torch.Tensor) -> int:
    return pages.shape[0] - 2


def sink_page(pages: torch.Tensor) -> int:
    return pages.shape[0] - 1


def checked_blocks(block_table: torch.Tensor, zero: int) -> torch.Tensor:
    """Block ids [R, W] (int32, -1 / 0 / stale padding) -> int64 page ids, the zero page where invalid."""
    table = block_table.to(torch.long)
    return torch.where((table > 0) & (table < zero), table, torch.full_like(table, zero))


def read_kv(pages: torch.Tensor, block_table: torch.Tensor, valid_len: torch.Tensor):
    """The cached keys / values of each row: pages [P, 2, nkv, bs, d], block_table [R, W], valid_len [R]
    (keys at positions below it are valid) -> (k, v [R, nkv, W * bs, d], k_pos, k_valid [R, W * bs]), the
    ``past`` of zaya1.cca.CCAttention. Invalid positions are zeroed by a select: stale page bytes (another
    layer group's, even NaN) never reach the softmax (0 * NaN is NaN)."""
    num_pages, _, nkv, block, dim = pages.shape
    rows, width = block_table.shape
    blocks = checked_blocks(block_table, zero_page(pages))
    k_rows = blocks[:, None, :] * (2 * nkv) + torch.arange(nkv, device=pages.device)[None, :, None]  # [R, nkv, W]
    flat = pages.view(num_pages * 2 * nkv, block, dim)  # rank 3: no rank-5 gather or transpose
    k_pos = torch.arange(width * block, device=pages.device).expand(rows, -1)
    k_valid = k_pos < valid_len[:, None]
    keep = k_valid[:, None, :, None]

    def gather(index: torch.Tensor) -> torch.Tensor:
        out = flat[index.reshape(-1)].view(rows, nkv, width * block, dim)
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))

    return gather(k_rows), gather(k_rows + nkv), k_pos, k_valid


def write_kv(pages: torch.Tensor, slot_mapping: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """Store the chunk's new K/V in place: slot_mapping [T] (block * bs + offset; <= 0 = padding -> sink),
    key / value [T, nkv, d] in token order."""
    num_pages, _, nkv, block, dim = pages.shape
    slots = slot_mapping.to(torch.long)
    blocks = torch.where(slots > 0, slots // block, torch.full_like(slots, sink_page(pages)))
    k_rows = (blocks[:, None] * (2 * nkv) + torch.arange(nkv, device=pages.device)).reshape(-1)  # [T * nkv]
    offsets = (slots % block).repeat_interleave(nkv)
    flat = pages.view(num_pages * 2 * nkv, block, dim)
    flat.index_put_((k_rows, offsets), key.reshape(-1, dim).to(pages.dtype))
    flat.index_put_((k_rows + nkv, offsets), value.reshape(-1, dim).to(pages.dtype))


class StateLayout:
    """Where a layer's CCA state lives in a page row: conv [C, K-1] then value [Cv], in the model dtype."""

    def __init__(self, channels: int, state_len: int, value_channels: int):
        self.channels, self.state_len, self.value_channels = channels, state_len, value_channels
        self.conv_elems = channels * state_len
        self.elems = self.conv_elems + value_channels

    def read(self, rows: torch.Tensor, page: torch.Tensor):
        """rows [P, E] (a layer's state view), page [N] -> conv [N, C, K-1], value [N, Cv]."""
        picked = rows.index_select(0, page)
        return (picked[:, :self.conv_elems].view(-1, self.channels, self.state_len),
                picked[:, self.conv_elems:self.elems])

    def write(self, rows: torch.Tensor, page: torch.Tensor, conv: torch.Tensor, value: torch.Tensor) -> None:
        """One full-width row per page [N] (a strided partial write is what Neuron device tensors reject)."""
        pad = rows.new_zeros(page.shape[0], rows.shape[1] - self.elems)
        rows.index_copy_(0, page, torch.cat([conv.reshape(page.shape[0], -1).to(rows.dtype),
                                             value.to(rows.dtype), pad], dim=1))


def state_pages(state_table: torch.Tensor, state_block: int, start: torch.Tensor, real: torch.Tensor,
                count: int, live: torch.Tensor, num_pages: int):
    """Which state page each row resumes from and which pages its new states go to.

    A sequence's state group holds one page per ``state_block`` tokens: the page of block b holds the state
    after the last token computed so far in b, which once b is full is the state at b's boundary, kept
    for prefix caching (with ``state_block`` = max_model_len: one running page per sequence, as with prefix
    caching off). state_table [R, Ws]; start [R] (tokens computed before this step); real [R] (new tokens);
    ``count`` blocks from the first one touched (``block_cuts``); live [R].
    Returns read pages [R] (the zero page for a fresh sequence) and write pages [R, count] (the sink for a
    block the step does not reach)."""
    zero, sink = num_pages - 2, num_pages - 1
    table = checked_blocks(state_table, zero)  # an invalid id reads the zero page and writes the sink
    width = table.shape[1]
    index = ((start - 1).clamp_min(0) // state_block).clamp_max(width - 1)
    fresh = torch.full_like(start, zero)
    read = torch.where(live & (start > 0), table.gather(1, index[:, None])[:, 0], fresh)
    blocks = (start // state_block)[:, None] + torch.arange(count, device=start.device)  # [R, count]
    pages = table.gather(1, blocks.clamp_max(width - 1))
    touched = live[:, None] & (blocks * state_block < (start + real)[:, None]) & (blocks < width) & (pages != zero)
    return read, torch.where(touched, pages, torch.full_like(blocks, sink))


def block_cuts(start: torch.Tensor, real: torch.Tensor, state_block: int, count: int) -> torch.Tensor:
    """For rows starting at ``start`` [R] with ``real`` [R] new tokens: how many of them lie before the end of
    each of the ``count`` blocks from the first one touched (clamped to [0, real]) -> [R, count]."""
    ends = (start // state_block + 1)[:, None] + torch.arange(count, device=start.device)  # block b ends at (b+1)*sb
    return (ends * state_block - start[:, None]).clamp(min=0).minimum(real[:, None])
