"""``zaya1`` as a user runs it, on the upstream-saved chat checkpoint (conftest ``chat``): streaming equals
the final text, --chat, --temperature 0, generation_config defaults, the timing summary, --prompt-file,
--no-special-tokens, --version, the demo, ``zaya1 compile``, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zaya1
from zaya1.neuron import compile_cli
from zaya1.simulated_tp import SimulatedTP
from zaya1.tools import cli
from zaya1.tools.cli import main

pytestmark = pytest.mark.usefixtures("inference")
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "zaya1-original-tiny"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys, chat, *argv):
    return run(capsys, "generate", "--model", chat.path, "--dtype", "float32", *argv)


def upstream_text(chat, ids: list[int], **kwargs) -> str:
    out = chat.hf.generate(torch.tensor([ids]), do_sample=False, **kwargs)
    return chat.tok.decode(out[0, len(ids):], skip_special_tokens=True)


@pytest.mark.parametrize("prompt", ["the cat sat on the mat", "Hello world"])
def test_streamed_text_equals_the_final_text(capsys, chat, prompt):
    code, streamed, _ = generate(capsys, chat, "--prompt", prompt, "--max-new-tokens", 20)
    assert code == 0
    code, final, _ = generate(capsys, chat, "--prompt", prompt, "--max-new-tokens", 20, "--no-stream")
    assert code == 0 and streamed == final
    assert final.rstrip("\n") == upstream_text(chat, chat.tok(prompt).input_ids, max_new_tokens=20)
    assert " " in final.strip()  # word spaces survived


def test_chat(capsys, chat):
    ids = chat.tok.apply_chat_template([{"role": "user", "content": "Hello world"}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"]
    code, out, _ = generate(capsys, chat, "--chat", "--prompt", "Hello world", "--max-new-tokens", 12, "--no-stream")
    assert code == 0 and out.rstrip("\n") == upstream_text(chat, list(ids), max_new_tokens=12)


def test_chat_without_transformers(capsys, chat, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    code, out, err = generate(capsys, chat, "--chat", "--prompt", "Hello world")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and "needs transformers, which is not installed: pip install" in err


def test_temperature_zero_is_greedy_and_generation_config_defaults_apply(capsys, chat):
    prompt = "the cat sat on the mat"
    code, out, _ = generate(capsys, chat, "--prompt", prompt, "--do-sample", "--temperature", 0, "--no-stream")
    assert code == 0
    # no --max-new-tokens: generation_config.json's EOS stops the row as upstream does (its max is 32 here)
    assert out.rstrip("\n") == upstream_text(chat, chat.tok(prompt).input_ids, max_new_tokens=32)


def test_prompt_file_and_no_special_tokens(capsys, chat, tmp_path):
    prompt = "the cat sat on the mat"
    (tmp_path / "p.txt").write_text(prompt)
    code, from_file, err = generate(capsys, chat, "--prompt-file", tmp_path / "p.txt", "--max-new-tokens", 6)
    assert code == 0 and "ended prompt 0 with EOS token 4" in err and "--no-special-tokens" in err
    assert from_file == generate(capsys, chat, "--prompt", prompt, "--max-new-tokens", 6)[1]
    code, bare, err = generate(capsys, chat, "--prompt", prompt, "--max-new-tokens", 6, "--no-special-tokens",
                               "--no-stream")
    assert code == 0 and "EOS" not in err
    assert bare.rstrip("\n") == upstream_text(chat, chat.tok(prompt, add_special_tokens=False).input_ids,
                                              max_new_tokens=6)


def test_summary_like_llama_cpp(capsys, chat):
    code, _, err = generate(capsys, chat, "--prompt", "Hello world", "--max-new-tokens", 5, "--min-new-tokens", 5)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("zaya1: ") and " = " in line]
    assert [line.split("=")[0].split()[1] for line in lines] == ["load", "prompt", "decode", "total"]
    assert "/     4 tokens" in lines[1] and "TTFT" in lines[1]  # <bos> Hello world <end_of_turn>
    assert "4 steps x batch 1" in lines[2] and "tok/s" in lines[2] and "5 new tokens" in lines[3]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"zaya1 {zaya1.__version__} (torch ")


def test_version_command_prints_nothing_else():
    """``zaya1 --version`` as installed: no warning on stderr (torch warns "Failed to initialize NumPy" on every
    command of an install without numpy, which is why setup.py requires it)."""
    exe = Path(sys.executable).with_name("zaya1")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "" and out.stdout.startswith(f"zaya1 {zaya1.__version__} (torch ")
    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert '"numpy>=' in setup.split("install_requires=")[1].split("]")[0]


def test_demo_echoes_the_prompt_and_samples_printable_characters(capsys):
    code, out, err = run(capsys, "generate", "--max-new-tokens", 16, "--seed", 0)
    assert code == 0 and "DEMO" in err and "random characters" in err
    prompt, generated, ids = out.splitlines()
    assert prompt == "prompt:    The capital of France is"
    text, ids = generated.removeprefix("generated: "), [int(i) for i in ids.removeprefix("token ids: ").split()]
    assert 0 < len(ids) <= 16 and text == "".join(chr(31 + i) for i in ids if i)  # id i>0 = ASCII 31 + i
    assert text.isprintable() and len(set(text)) > 4  # sampled: not one character repeated


def demo_args(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli._generate_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_demo_honours_dtype_and_tp_degree(capsys):
    model, *_ = cli.load_for_generation(demo_args("--dtype", "bfloat16", "--tp-degree", 2))
    assert isinstance(model, SimulatedTP) and model.tp == 2 and model.dtype == torch.bfloat16
    one = run(capsys, "generate", "--dtype", "float32", "--seed", 3, "--max-new-tokens", 8)
    two = run(capsys, "generate", "--dtype", "float32", "--seed", 3, "--max-new-tokens", 8, "--tp-degree", 2)
    assert one[0] == two[0] == 0 and one[1] == two[1]  # the same sampled tokens from the two simulated ranks


@pytest.mark.parametrize("argv, fragments", [
    (["generate", "--prompt-ids", "a,b"], ["argument --prompt-ids", "'a,b' is not a comma-separated list"]),
    (["generate", "--prompt", ""], ["zaya1: error: prompt 0 is empty"]),
    (["generate", "--device", "cuda:7"], ["zaya1: error: device='cuda:7'"]),
    (["generate", "--device", "gpu"], ["zaya1: error: device='gpu' is not a torch device"]),
    (["generate", "--backend", "neuron"], ["zaya1: error: --backend neuron needs --compiled DIR"]),
    (["generate", "--dtype", "int8"], ["zaya1: error: dtype='int8' is not supported"]),  # the demo
    (["generate", "--tp-degree", 3], ["zaya1: error: tp_degree=3 does not divide the 4 query heads"]),
    (["compile", "--model-path", GOLDEN, "--compiled-model-path", "/tmp/x", "--buckets", "a", "--tp-degree", 1,
      "--seq-len", 256, "--max-context-length", 128, "--dry-run"],
     ["zaya1 compile: error: --buckets 'a' must be comma-separated positive integers"]),
])
def test_one_line_errors(capsys, argv, fragments):
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    for fragment in fragments:
        assert fragment in err


def test_cuda_on_cpu_only_torch(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, "generate", "--device", "cuda")
    assert code == 2 and "sees no CUDA GPU" in err and "device='cpu'" in err


def test_bench_without_transformers(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    code, _, err = run(capsys, "bench", "--model", GOLDEN / "hf-layout")
    assert code == 2 and "transformers, which is not installed" in err and "--no-hf" in err


@pytest.mark.parametrize("command", [["zaya1", "compile"], [sys.executable, "scripts/compile.py"]])
def test_compile_command_and_script(command):
    root = Path(__file__).resolve().parents[2]
    exe = Path(sys.executable).with_name("zaya1")
    if command[0] == "zaya1":
        command = [str(exe), "compile"]
    out = subprocess.run([*command, "--model-path", str(GOLDEN), "--compiled-model-path", "/tmp/zaya1-none",
                          "--tp-degree", "1", "--seq-len", "256", "--max-context-length", "128", "--dry-run"], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dry run: settings valid" in out.stdout and "ZAYA1 original layout" in out.stdout


def test_compile_refuses_mxfp4_experts_first(capsys, tmp_path):
    """An mxfp4-experts checkpoint (config.json is enough for --dry-run) is refused in one line that names
    the format and the NxDI backend, before any plan is printed."""
    config = json.loads((GOLDEN / "hf-layout" / "config.json").read_text()) | {"moe_intermediate_size": 32}
    mxfp4 = zaya1.ZayaConfig.from_dict(config).replace(expert_quantization="mxfp4").to_hf_dict()  # 32-column groups
    (tmp_path / "config.json").write_text(json.dumps(config | {"quantization_config": mxfp4["quantization_config"]}))
    code, out, err = run(capsys, "compile", "--model-path", tmp_path, "--compiled-model-path", tmp_path / "out",
                         "--tp-degree", 1, "--seq-len", 256, "--max-context-length", 128, "--dry-run")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "mxfp4 experts" in err and "not supported by the NxDI backend" in err and len(err.splitlines()) == 1


def test_compile_dry_run_with_fp8_experts(capsys):
    """--expert-dtype fp8 plans fp8 experts (1 byte per expert weight + fp32 row scales, from the golden
    config's own shapes) and records them in the manifest a compile would write."""
    argv = ["compile", "--model-path", GOLDEN / "hf-layout", "--compiled-model-path", "/tmp/x", "--tp-degree", 1,
            "--seq-len", 256, "--max-context-length", 128, "--dry-run"]
    plans = {}
    for flag in ([], ["--expert-dtype", "fp8"]):
        code, out, err = run(capsys, *argv, *flag)
        assert code == 0, err
        plans[bool(flag)] = out
    assert "experts fp8" in plans[True] and "experts fp8" not in plans[False]
    assert "experts model" in plans[False]
    config = zaya1.ZayaConfig.from_pretrained(GOLDEN / "hf-layout")
    expert_weights = config.num_hidden_layers * config.num_experts * 3 * config.hidden_size * config.moe_intermediate_size
    scales = config.num_hidden_layers * config.num_experts * (2 * config.moe_intermediate_size + config.hidden_size)

    def weight_mib(out: str) -> float:
        return float(re.search(r"per rank bytes: weights ([\d.,]+) MiB", out).group(1).replace(",", ""))
    saved = (2 * expert_weights - (expert_weights + 4 * scales)) / 2 ** 20  # bf16 (--dtype's default) -> fp8
    assert abs(weight_mib(plans[False]) - weight_mib(plans[True]) - saved) <= 0.01


@pytest.mark.parametrize("command", [["zaya1", "compile"], ["zaya1", "generate"], ["scripts/check_accuracy.py"]])
def test_help_examples_keep_their_line_breaks(command):
    """A long example is continued with a backslash on the next line, as it is written in the source."""
    root = Path(__file__).resolve().parents[2]
    if command[0] == "zaya1":
        command = [str(Path(sys.executable).with_name("zaya1")), *command[1:]]
    else:
        command = [sys.executable, *command]
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    continued = [i for i, line in enumerate(lines) if line.endswith(" \\")]
    assert continued, out.stdout
    for i in continued:
        assert lines[i].lstrip().startswith(("zaya1 ", "python ", "--")) and lines[i + 1].lstrip().startswith("--")
        assert len(lines[i + 1]) - len(lines[i + 1].lstrip()) > len(lines[i]) - len(lines[i].lstrip())


def test_check_accuracy_without_a_tokenizer():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "scripts/check_accuracy.py", "--model-path", str(GOLDEN),
                          "--compiled-model-path", "/tmp/zaya1-none"], capture_output=True, text=True, cwd=root,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("check_accuracy.py: error: no tokenizer in ") and out.stderr.count("\n") == 1


def _tiny_checkpoint_with_positions(tmp_path: Path, positions: int) -> Path:
    """The golden tiny checkpoint with room for longer sequences (config.json edited, weights linked)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    config = json.loads((GOLDEN / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"max_position_embeddings": positions}))
    (ckpt / "model.safetensors").symlink_to(GOLDEN / "model.safetensors")
    return ckpt


def test_compile_example_and_defaults_stay_within_the_known_good_buckets():
    example = compile_cli.__doc__.split("\n\n")[1].replace("\\\n", " ")
    argv = shlex.split(example)
    assert argv[:2] == ["zaya1", "compile"]
    args = compile_cli.parse_args(argv[2:])
    assert max(compile_cli._ints(args.buckets)) <= 512 and args.max_context_length <= 512
    defaults = compile_cli.parse_args(["--model-path", "m", "--compiled-model-path", "c"])
    assert defaults.max_context_length <= 512 and defaults.buckets is None  # one bucket of 512


def test_compile_warns_outside_the_known_good_buckets(capsys, tmp_path):
    ckpt = _tiny_checkpoint_with_positions(tmp_path, 4096)
    base = ["compile", "--model-path", ckpt, "--compiled-model-path", tmp_path / "out", "--tp-degree", 1,
            "--seq-len", 2048, "--dry-run"]
    code, out, err = run(capsys, *base)
    assert code == 0 and "context-encoding buckets [512]" in out and err == ""
    code, out, err = run(capsys, *base, "--max-context-length", 1024, "--buckets", "256,1024")
    assert code == 0 and "dry run: settings valid" in out and "context-encoding buckets [256, 1024]" in out
    assert err.startswith("zaya1 compile: warning: context-encoding bucket(s) [1024] exceed 512")
    assert "NCC_ITEN404" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_readme_test_commands_are_what_ci_runs():
    """The README's test commands carry the same pytest arguments as .ci/run (both stages, -ra included)."""
    root = Path(__file__).resolve().parents[2]
    readme, ci = (root / "README.md").read_text(), (root / ".ci" / "run").read_text()

    def pytest_args(text: str, target: str) -> set[str]:
        return {line.split("-m pytest", 1)[1].strip().strip('"') for line in text.splitlines()
                if f"-m pytest {target}" in line and "not slow" not in line}

    for target in ("test ", "test/nxdi_cpu "):
        assert pytest_args(readme, target) == pytest_args(ci, target) != set()
    assert all("-ra" in args for args in pytest_args(ci, "test"))
