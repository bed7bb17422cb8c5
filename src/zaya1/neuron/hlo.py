"""Byte and FLOP accounting of an (unoptimised) HLO module, the text torch-xla lowers a graph to.

Only the ENTRY computation is read (the nested ones are reducers and comparators). For every instruction we
keep (name, opcode, output shapes, operands, attributes) and derive:

* weights / KV read: a parameter is read whole, unless every consumer reached through layout-only ops
  (reshape, transpose, convert, copy, bitcast) is a gather / dynamic-slice / slice; then it is the elements
  those selections output (a selection repeated per block counts every time: each copy is an HBM read);
* materialised bytes: gather / concatenate / dynamic-slice outputs larger than ``MATERIALISED_MIN`` (1 MiB).
  A selection of a weight (expert or not) or KV parameter whose only consumers are dots is flagged ``selective``: NxD's own
  token-generation MoE (``ExpertMLPsV2.forward_selective_loading`` ->
  ``moe_parallel_layers.py`` ``self.weight[expert_indices]`` then einsum) is exactly this pattern, the
  selected weights streamed from HBM as a matmul operand;
* FLOPs: 2 x output elements x contracted elements for every dot (the graphs contain no convolution), and
  the part of them whose operand is (a view or selection of) an expert weight;
* collectives (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute) with their output bytes
  (tensor outputs; torch-xla's scalar token is left out);
* the op inventory (opcode -> count);
* host fallbacks: custom calls, host transfers (send / recv / infeed / outfeed) and dynamic shapes (bounded
  ``<=`` dimensions, get/set-dimension-size): a graph Neuron runs whole on the device has none.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
LAYOUT_ONLY = {"reshape", "transpose", "convert", "copy", "bitcast", "bitcast-convert"}
SELECTIONS = {"gather", "dynamic-slice", "slice"}
MATERIALISING = {"gather", "concatenate", "dynamic-slice"}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"}
MATERIALISED_MIN = 1 << 20
HOST_OPS = {"custom-call", "send", "send-done", "recv", "recv-done", "infeed", "outfeed"}
DYNAMIC_OPS = {"get-dimension-size", "set-dimension-size"}

_SHAPE = re.compile(r"(pred|f8e\d+m\d+(?:fn)?|[a-z]+\d+)\[([^\]]*)\]")
_NAME = re.compile(r"%([\w.\-]+)")


@dataclass
class Instr:
    name: str
    opcode: str
    shapes: list  # [(dtype, dims)], one per tuple element
    operands: list[str]
    attrs: str
    dynamic: bool = False  # an output dimension is bounded-dynamic (``<=N``)

    @property
    def elements(self) -> int:
        return sum(math.prod(dims) for _, dims in self.shapes)

    @property
    def nbytes(self) -> int:
        return sum(math.prod(dims) * DTYPE_BYTES[dt] for dt, dims in self.shapes)

    @property
    def parameter_number(self) -> int:
        return int(re.match(r"\s*(\d+)", self.attrs).group(1))


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in HLO line: {text[:120]}")


def _parse_line(line: str) -> Instr | None:
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line[1:].split(" = ", 1)
    if rest.startswith("("):
        end = _closing(rest, 0)
        shape_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        shape_text, rest = rest.split(" ", 1)
    opcode, rest = rest.split("(", 1)
    end = _closing("(" + rest, 0) - 1
    operand_text, attrs = rest[:end], rest[end + 1:].lstrip(", ")
    shapes = [(dt, [int(d) for d in dims.replace("<=", "").split(",") if d]) for dt, dims in _SHAPE.findall(shape_text)]
    if opcode == "parameter":
        attrs = operand_text
    return Instr(name, opcode, shapes, _NAME.findall(operand_text), attrs, "<=" in shape_text)


def parse_entry(hlo_text: str) -> list[Instr]:
    """The ENTRY computation's instructions, in order."""
    instrs, inside = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
        elif inside and line.startswith("}"):
            break
        elif inside:
            instr = _parse_line(line)
            if instr is not None:
                instrs.append(instr)
    if not instrs:
        raise ValueError("no ENTRY computation found in the HLO text")
    return instrs


def dot_flops(instr: Instr, by_name: dict[str, Instr]) -> int:
    lhs = by_name[instr.operands[0]].shapes[0][1]
    match = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
    contracted = math.prod(lhs[int(c)] for c in match.group(1).split(",") if c) if match else 1
    return 2 * instr.elements * contracted


@dataclass
class Materialised:
    name: str
    opcode: str
    shape: str
    nbytes: int
    source: str  # the parameter role it copies from (weight / kv / ...), or "activation"
    selective: bool  # a weight / KV selection consumed only by dots (NxD's selective-loading pattern)


@dataclass
class HloCost:
    read_bytes: dict[str, int] = field(default_factory=dict)  # parameter role -> bytes read
    flops: int = 0
    expert_flops: int = 0  # dots with an operand selected from (or viewing) a parameter of role "experts"
    materialised: list[Materialised] = field(default_factory=list)
    collectives: dict[str, list[int]] = field(default_factory=dict)  # opcode -> [count, bytes]
    ops: Counter = field(default_factory=Counter)
    host_fallbacks: Counter = field(default_factory=Counter)  # opcode (or "dynamic-shape") -> count

    def materialised_bytes(self, selective: bool | None = None) -> int:
        return sum(m.nbytes for m in self.materialised if selective is None or m.selective == selective)


def analyse(hlo_text: str, roles: dict[int, tuple[str, int]]) -> HloCost:
    """roles: parameter number -> (role, bytes per element of the original tensor)."""
    instrs = parse_entry(hlo_text)
    by_name = {i.name: i for i in instrs}
    users: dict[str, list[Instr]] = {}
    for instr in instrs:
        for op in instr.operands:
            users.setdefault(op, []).append(instr)

    def consumers(name: str) -> list[tuple[Instr, str]]:
        """(user, the operand it reads) of ``name``, seen through layout-only ops."""
        out = []
        for user in users.get(name, []):
            out.extend(consumers(user.name) if user.opcode in LAYOUT_ONLY else [(user, name)])
        return out

    origin: dict[str, str] = {}  # instruction -> role of the parameter it is a view or selection of
    cost = HloCost()
    for instr in instrs:
        cost.ops[instr.opcode] += 1
        if instr.opcode in HOST_OPS | DYNAMIC_OPS:
            cost.host_fallbacks[instr.opcode] += 1
        if instr.dynamic:
            cost.host_fallbacks["dynamic-shape"] += 1
        if instr.opcode == "parameter":
            role, itemsize = roles.get(instr.parameter_number, ("scalar", DTYPE_BYTES[instr.shapes[0][0]]))
            origin[instr.name] = role
            ends = consumers(instr.name)
            whole = math.prod(instr.shapes[0][1]) * itemsize
            if ends and all(u.opcode in SELECTIONS and u.operands[0] == via for u, via in ends):
                read = sum(u.elements * itemsize for u, _ in ends)
            else:
                read = whole
            cost.read_bytes[role] = cost.read_bytes.get(role, 0) + read
        elif instr.opcode in LAYOUT_ONLY | SELECTIONS and instr.operands and instr.operands[0] in origin:
            origin[instr.name] = origin[instr.operands[0]]
        elif instr.opcode == "dot":
            flops = dot_flops(instr, by_name)
            cost.flops += flops
            if any(origin.get(op) == "experts" for op in instr.operands):
                cost.expert_flops += flops
        elif instr.opcode in COLLECTIVES:
            entry = cost.collectives.setdefault(instr.opcode, [0, 0])
            data = sum(math.prod(dims) * DTYPE_BYTES[dt] for dt, dims in instr.shapes if dims)  # no token
            entry[0], entry[1] = entry[0] + 1, entry[1] + data
        if instr.opcode in MATERIALISING and instr.nbytes > MATERIALISED_MIN:
            sources = {origin.get(op, "activation") for op in
                       (instr.operands if instr.opcode == "concatenate" else instr.operands[:1])}
            source = "+".join(sorted(sources))
            selective = (instr.opcode != "concatenate" and source in ("weight", "experts", "kv")
                         and all(u.opcode == "dot" for u, _ in consumers(instr.name)))
            shape = ",".join(f"{dt}[{','.join(map(str, dims))}]" for dt, dims in instr.shapes)
            cost.materialised.append(Materialised(instr.name, instr.opcode, shape, instr.nbytes, source, selective))
    return cost
