"""The first trn2 session in one command (scripts/trn2_first_run.sh): the environment's facts, a compile of every
configuration the integration suite uses (its time and the NCC_ codes of the compiler's log), the suite itself,
its performance JSON, and ONE report file (Markdown) to attach to a bug report.

    scripts/trn2_first_run.sh [--checkpoint /ckpt/ZAYA1-8B] [--out DIR] [--compiled-dir DIR] [--tp 4]
                              [--config NAME ...] [--list] [--no-suite]

Compiled artifacts are kept in --compiled-dir (default DIR/compiled), one directory per configuration under the
suite's own key (checkpoint fingerprint, settings, zaya1 / SDK versions), so a rerun and the suite reuse them
and only what is missing or changed compiles. The golden models compile in minutes; each real-checkpoint
configuration is a full 40-layer compile that takes hours on a trn2.3xlarge (the five of them: most of a
day), so each can be run alone: ``--config real-ctx512`` compiles that one and runs only its tests
(``--list`` names them). Without --checkpoint only the golden models run (the real-weight tests skip).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trn2_helpers import (ROOT, artifacts_key, compile_command, neuron_devices, sdk_problem,  # noqa: E402
                          suite_configs)

from zaya1 import __version__  # noqa: E402
from zaya1.errors import run_reporting_errors  # noqa: E402
from zaya1.neuron.artifacts import is_complete, neuron_sdk_versions  # noqa: E402

SUITE = "test/integration/test_neuron.py"
NCC_CODE = re.compile(r"\bNCC_[A-Z]+[0-9]+\b")
LOG_TAIL = 40  # lines of a failed compile's log quoted in the report


def config_tests(name: str) -> list[str]:
    """The suite's tests that use configuration ``name`` (pytest node ids)."""
    kind, _, rest = name.partition("-")
    if kind == "golden":
        model, _, dtype = rest.partition("-")
        tests = (["test_golden_teacher_forced_bfloat16"] if dtype == "bfloat16" else
                 ["test_golden_teacher_forced_float32", "test_golden_generate_tokens", "test_batch_independence",
                  "test_one_token_prompt", "test_every_bucket", "test_load_refuses_other_settings"])
        return [f"{SUITE}::{t}[{model}]" for t in tests]
    if kind == "cb":
        return [f"{SUITE}::test_continuous_batching[{rest}]"]
    if rest == "ctx512":
        return [f"{SUITE}::test_context_bucket_512"]
    batch = rest.removeprefix("b")
    tests = ["test_capital_of_france", "test_logits_within_nxdi_tolerance",
             "test_real_bfloat16_and_batch_independence"] if batch == "4" else []
    return [f"{SUITE}::{t}" for t in tests] + [f"{SUITE}::test_performance[{batch}]"]


def selected_tests(names: list[str]) -> list[str]:
    """The node ids of ``names``' tests; the comparison with the published figures needs batches 1 and 4."""
    tests = [t for name in names for t in config_tests(name)]
    if {"real-b1", "real-b4"} <= set(names):
        tests.append(f"{SUITE}::test_performance_against_published")
    return tests


def ncc_codes(text: str) -> list[str]:
    """The neuronx-cc error / warning codes (NCC_ITEN404, NCC_EVRF007, ...) in a log, sorted, once each."""
    return sorted(set(NCC_CODE.findall(text)))


def command_output(argv: list[str], timeout: int = 60) -> str:
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({argv[0]}: {type(exc).__name__})"
    return (run.stdout + run.stderr).strip()


def read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "(unreadable)"


def environment_facts() -> dict[str, str]:
    mem = re.search(r"MemTotal:\s+(\d+) kB", read("/proc/meminfo"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "instance type": read("/sys/devices/virtual/dmi/id/product_name"),
        "neuron devices": ", ".join(neuron_devices()) or "none",
        "neuron-ls": command_output(["neuron-ls"]),
        "neuronx-cc": command_output(["neuronx-cc", "--version"]),
        "Neuron packages": ", ".join(f"{k} {v}" for k, v in sorted(neuron_sdk_versions().items())) or "none",
        "SDK problem": sdk_problem() or "none",
        "python": sys.version.split()[0], "platform": platform.platform(),
        "CPUs / memory": f"{os.cpu_count()} / {int(mem.group(1)) // 2**20 if mem else '?'} GiB",
        "zaya1": f"{__version__} at {command_output(['git', '-C', str(ROOT), 'describe', '--always', '--dirty'])}",
        "environment": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                if k.startswith(("NEURON_", "ZAYA1_", "BASE_COMPILE"))) or "none",
    }


def compile_config(name: str, checkpoint: Path, settings: dict, tp: int, out: Path, logs: Path) -> dict:
    """Compile one configuration into ``out`` through `zaya1 compile` (as the suite does) unless finished
    artifacts are there; its output and the compiler's work-dir logs go to ``logs``, scanned for NCC_ codes."""
    record = {"config": name, "artifacts": str(out), "log": str(logs / f"compile-{name}.log")}
    if is_complete(out):
        return {**record, "status": "reused", "seconds": 0.0, "ncc_codes": []}
    work = logs / f"compile-{name}-work"
    start = time.monotonic()
    with open(record["log"], "w") as log:
        rc = subprocess.run(compile_command(checkpoint, out, tp, settings), stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, BASE_COMPILE_WORK_DIR=str(work))).returncode
    seconds = time.monotonic() - start
    texts = [read(record["log"])] + [read(str(p)) for p in work.rglob("*") if p.suffix in (".txt", ".log")]
    return {**record, "status": "compiled" if rc == 0 else f"failed (exit {rc})", "seconds": seconds,
            "ncc_codes": ncc_codes("\n".join(texts))}


def junit_summary(xml_text: str) -> dict:
    """pytest's JUnit XML -> counts by outcome and the first line of every failure / error / skip reason."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    problems = []
    for case in ElementTree.fromstring(xml_text).iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        found = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[found[0].tag] if found else "passed"
        counts[outcome] += 1
        if found:
            message = (found[0].get("message") or found[0].text or "").strip().splitlines()
            problems.append({"test": test, "outcome": outcome, "message": message[0] if message else ""})
    return {"counts": counts, "problems": problems}


def run_suite(tests: list[str], out: Path, env: dict) -> dict:
    """The integration suite (``tests``: node ids, or all), its output streamed here and to suite.log."""
    xml = out / "suite.xml"
    argv = [sys.executable, "-m", "pytest", *(tests or ["test/integration"]), "-rA", "-p", "no:cacheprovider",
            f"--junitxml={xml}"]
    with open(out / "suite.log", "w") as log, subprocess.Popen(argv, cwd=ROOT, env=env, text=True,
                                                               stdout=subprocess.PIPE,
                                                               stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    summary = junit_summary(xml.read_text()) if xml.is_file() else {"counts": {}, "problems": []}
    return {**summary, "exit": proc.returncode, "log": str(out / "suite.log")}


def table(header: list[str], rows: list[list]) -> list[str]:
    cells = [header, ["---"] * len(header)] + [[str(c).replace("|", "\\|").replace("\n", " ") for c in r]
                                                for r in rows]
    return ["| " + " | ".join(r) + " |" for r in cells]


def render(facts: dict, compiles: list[dict], suite: dict | None, perf: dict | None) -> str:
    """The report: one Markdown file with everything a bug report needs."""
    lines = ["# zaya1 first trn2 run", "", "## Environment", ""]
    lines += table(["fact", "value"], [[k, v] for k, v in facts.items()])
    lines += ["", "## Compiles", ""]
    lines += table(["config", "status", "seconds", "NCC codes", "log"],
                   [[c["config"], c["status"], f"{c['seconds']:.0f}", ", ".join(c["ncc_codes"]) or "-", c["log"]]
                    for c in compiles])
    for c in compiles:
        if c["status"].startswith("failed"):
            tail = read(c["log"]).splitlines()[-LOG_TAIL:]
            lines += ["", f"### {c['config']}: last {len(tail)} lines of its log", "", "```", *tail, "```"]
    lines += ["", "## Suite", ""]
    if suite is None:
        lines.append("not run (--no-suite)")
    else:
        lines.append(f"pytest exit {suite['exit']}: " + ", ".join(f"{n} {k}" for k, n in suite["counts"].items()))
        lines += [""] + table(["test", "outcome", "message"], [[p["test"], p["outcome"], p["message"]]
                                                               for p in suite["problems"]])
    lines += ["", "## Performance", ""]
    if not perf:
        lines.append("no performance records (no real checkpoint, or the performance tests did not run)")
    else:
        lines += table(["metric", "batch", "value", "unit", "context bucket", "token buckets", "tp", "lnc"],
                       [[r["metric"], r["batch"], f"{r['value']:.1f}", r["unit"], r["context_bucket"],
                         r["token_buckets"], r["tp"], r["lnc"]] for r in perf["records"]])
        if perf["versus_published"]:
            lines += ["", "Against PR #127's published trn2.3xlarge figures (asserted) and zaya1's targets (reported):",
                      ""]
            lines += table(["figure", "ours", "published", "published TP", "verdict", "target", "target met"],
                           [[r["figure"], f"{r['ours']:.1f}", r["published"], r["published_tp"],
                             "WORSE" if r["worse"] else "ok", r["target"], "yes" if r["meets_target"] else "no"]
                            for r in perf["versus_published"]])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=os.environ.get("ZAYA1_CHECKPOINT"),
                   help="a real ZAYA1 checkpoint with its tokenizer (default: ZAYA1_CHECKPOINT)")
    p.add_argument("--out", type=Path, default=Path("trn2-first-run"), help="report, logs, perf JSON")
    p.add_argument("--compiled-dir", type=Path, help="compiled artifacts, reused between runs (default OUT/compiled)")
    p.add_argument("--tp", type=int, default=int(os.environ.get("ZAYA1_TP", "4")))
    p.add_argument("--config", action="append", help="only this configuration (repeat; see --list)")
    p.add_argument("--list", action="store_true", help="name the configurations and their tests, then exit")
    p.add_argument("--no-suite", action="store_true", help="compile only")
    args = p.parse_args(argv)
    return run_reporting_errors("trn2_first_run.sh", first_run, p, args)


def first_run(p: argparse.ArgumentParser, args) -> int:
    configs = suite_configs(args.tp, args.checkpoint)
    unknown = sorted(set(args.config or []) - set(configs))
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; these exist at tp {args.tp}: {sorted(configs)}")
    names = args.config or list(configs)
    compiled_dir = (args.compiled_dir or args.out / "compiled").resolve()
    # the suite's keys, computed first: a checkpoint that cannot be fingerprinted is refused before any work
    targets = {name: compiled_dir / artifacts_key(configs[name][0], args.tp, configs[name][1]) for name in names}
    if args.list:
        for name in names:
            done = "compiled" if is_complete(targets[name]) else "to compile"
            print(f"{name}: {configs[name][0]} {configs[name][1]} ({done}); tests: {', '.join(config_tests(name))}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    facts = environment_facts()
    compiles = []
    for name in names:
        print(f"compiling {name} ...", flush=True)
        compiles.append(compile_config(name, *configs[name], args.tp, targets[name], out))
        c = compiles[-1]
        print(f"  {c['status']} in {c['seconds']:.0f} s, NCC codes: {', '.join(c['ncc_codes']) or 'none'}")
    suite = None
    for stale in ("perf.json", "suite.xml"):  # a previous run's
        (out / stale).unlink(missing_ok=True)
    if not args.no_suite:
        env = dict(os.environ, ZAYA1_TP=str(args.tp), ZAYA1_COMPILED_DIR=str(compiled_dir),
                   ZAYA1_PERF_JSON=str(out / "perf.json"))
        if args.checkpoint:
            env["ZAYA1_CHECKPOINT"] = str(args.checkpoint.resolve())
        suite = run_suite(selected_tests(names) if args.config else [], out, env)
    perf_path = out / "perf.json"
    perf = json.loads(perf_path.read_text()) if perf_path.is_file() else None
    report = out / "first-run-report.md"
    report.write_text(render(facts, compiles, suite, perf))
    print(f"report: {report}")
    failed = any(c["status"].startswith("failed") for c in compiles) or (suite is not None and suite["exit"] != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
