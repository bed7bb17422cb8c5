"""NeuronZayaModel's CTE and TKG graphs lowered by torch-xla on CPU (lower_graphs.py, one process per model):
no host (aten::) fallbacks, one graph for every prompt length / position of a bucket (no data-dependent
shapes), one graph per token-generation bucket, no scatter for the CCA state in token generation, in bf16 no
bf16 reduction over head_dim (the q/k L2 norm), and, at tp 1, outputs equal eager NxDI CPU mode within 1e-5; at
real width, the MoE's blocks follow the bucket (128 rows at 128 tokens, 256 at the 512-token bucket).
The op inventory of every graph is saved under out/nxdi-cpu/ (ZAYA1_TEST_ARTIFACTS)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_xla", reason="torch-xla is not installed: run the NxDI CPU stage in the environment "
                                        "of scripts/nxdi_cpu_env.sh")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARTIFACTS = Path(os.environ.get("ZAYA1_TEST_ARTIFACTS", ROOT / "out" / "nxdi-cpu"))
GOLDEN = ROOT / "test" / "data" / "golden"
MODELS = {
    "tiny-tp1": (["--model", str(GOLDEN / "zaya1-original-tiny"), "--tp", "1", "--execute"]),
    "gqa-tp1": (["--model", str(GOLDEN / "zaya1-original-gqa" / "hf-layout"), "--tp", "1", "--execute"]),
    # ZAYA1's real widths, one layer, at one rank's shapes of tp 4 (lowered, not executed)
    "real-width-tp4-b1": (["--model", "real-width", "--tp", "4", "--batch", "1", "--bucket", "128",
                           "--tkg-buckets", "256,512"]),
    "real-width-tp4-b4": (["--model", "real-width", "--tp", "4", "--batch", "4", "--bucket", "128",
                           "--tkg-buckets", "256"]),
    # the 512-token context bucket of the trn2 suite (CTX512_SETTINGS): the MoE's block-256 path at real width
    "real-width-tp4-ctx512": (["--model", "real-width", "--tp", "4", "--batch", "1", "--bucket", "512",
                               "--tkg-buckets", "1024"]),
    "real-width-tp4-b1-bf16": (["--model", "real-width", "--tp", "4", "--batch", "1", "--bucket", "128",
                                "--tkg-buckets", "256", "--dtype", "bfloat16"]),
    # zaya1 compile --expert-dtype fp8: executed at tp 1, and at real width the graphs NxDI traces
    "gqa-tp1-fp8": (["--model", str(GOLDEN / "zaya1-original-gqa" / "hf-layout"), "--tp", "1", "--execute",
                     "--expert-dtype", "fp8"]),
    "real-width-tp4-b1-bf16-fp8": (["--model", "real-width", "--tp", "4", "--batch", "1", "--bucket", "128",
                                    "--tkg-buckets", "256", "--dtype", "bfloat16", "--expert-dtype", "fp8"]),
}
# real-width fp8 experts of one tp-4 rank: gate_up codes [16 experts, 2 x 2048 / 4, 2048]; token generation
# gathers the one expert a row selects, still in fp8
FP8_GATE_UP, FP8_GATHERED = "f8e4m3fn[16,1024,2048]", "f8e4m3fn[1,1024,2048]"
# blockwise MoE rows of a context bucket: [blocks, block, hidden], 16 experts + (tokens - 16) // block blocks
MOE_BLOCKS = {"real-width-tp4-b1": "f32[16,128,2048]", "real-width-tp4-ctx512": "f32[17,256,2048]"}
HEAD_DIM = 128  # ZAYA1's (ZayaConfig's default)


def half_precision_reductions(hlo: str) -> list[int]:
    """The sizes of the axes that bf16 ``reduce`` instructions of ``hlo`` reduce over (accumulated in bf16)."""
    sizes = []
    pattern = r"= bf16\[[^\]]*\][^ ]* reduce\(bf16\[([\d,]*)\][^ ]* [^)]*\), dimensions=\{([\d,]*)\}"
    for shape, dims in re.findall(pattern, hlo):
        operand = [int(n) for n in shape.split(",")]
        sizes += [operand[int(d)] for d in dims.split(",")]
    return sizes


@pytest.mark.parametrize("name", list(MODELS))
def test_lowering(name, tmp_path):
    out = tmp_path / "graphs.json"
    env = dict(os.environ, PJRT_DEVICE="CPU",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("NXD_CPU_MODE", None)  # NxDI's to_cpu() sets it in this process; lower_graphs.py chooses its own mode
    run = subprocess.run([sys.executable, "-W", "ignore", str(HERE / "lower_graphs.py"), *MODELS[name], "--out",
                          str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    graphs = result["graphs"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"hlo-ops-{name}.json").write_text(json.dumps(
        {g: {"hlo_instructions": r["hlo_instructions"], "ops": r["ops"]} for g, r in graphs.items()}, indent=1))
    for g, r in graphs.items():
        (ARTIFACTS / f"{name}-{g}.hlo.txt").write_text(r["hlo"])
        print(f"{name} {g}: {r['hlo_instructions']} HLO instructions, vs eager {r.get('max_abs_diff_vs_eager')}")

    assert not result["shims_reached"], result["shims_reached"]
    for g, r in graphs.items():
        assert not r["aten_fallbacks"], (g, r["aten_fallbacks"])  # every op lowered, none runs on the host
        assert r.get("max_abs_diff_vs_eager", 0.0) <= 1e-5, (g, r["max_abs_diff_vs_eager"])
    # the same graph whatever the prompt lengths / positions inside a bucket
    assert graphs["cte"]["hlo"] == graphs["cte_other_lengths"]["hlo"]
    tkg = sorted(g for g in graphs if g.startswith("tkg_") and not g.endswith("other_positions"))
    for g in tkg:
        assert graphs[g]["hlo"] == graphs[f"{g}_other_positions"]["hlo"], g
    assert len({graphs[g]["hlo"] for g in tkg}) == len(tkg)  # one graph per token-generation bucket
    assert "dot" in graphs["cte"]["ops"] and "dot" in graphs[tkg[0]]["ops"]
    if name in MOE_BLOCKS:  # the block size the bucket selects (moe.block_size_for)
        assert MOE_BLOCKS[name] in graphs["cte"]["hlo"], name
    for g in tkg:  # the CCA state is written by selects: the only scatters are NxDI's K and V writes
        assert graphs[g]["ops"].get("scatter", 0) == 2 * result["layers"], (g, graphs[g]["ops"].get("scatter"))
    if name.startswith("real-width") and name.endswith("fp8"):  # one byte per expert weight, nothing widened
        for g in tkg:  # before the gather (no dense copy of every expert)
            hlo = graphs[g]["hlo"]
            assert FP8_GATE_UP in hlo and FP8_GATHERED in hlo, g
            assert "bf16[16,1024,2048]" not in hlo and "f32[16,1024,2048]" not in hlo, g
    if "bf16" in name:  # the q/k L2 norm sums its squares in fp32, not in a bf16 reduce over head_dim
        for g, r in graphs.items():
            assert HEAD_DIM not in half_precision_reductions(r["hlo"]), (g, half_precision_reductions(r["hlo"]))
