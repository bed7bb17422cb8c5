"""scripts/trn2_first_run.sh's driver (test/integration/first_run.py) without Trainium: the parsing of what a trn2
run leaves (compiler logs, pytest's JUnit XML), the configurations' tests against the suite pytest collects, and
the whole command here, where every compile fails for want of the SDK and the suite skips."""
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import first_run  # noqa: E402
import trn2_helpers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                ZAYA1_NEURON_HOST="0", **extra)


def test_ncc_codes_from_compiler_logs():
    log = ("2026-12-06 INFO: Compiling...\n"
           "ERROR 12345 [neuronx-cc]: [NCC_ITEN404] Internal tensorizer error: BirCodeGenLoop ...\n"
           "WARNING [NCC_EVRF007] ... again NCC_ITEN404, not NCC_ (no number) nor XNCC_ABC1\n")
    assert first_run.ncc_codes(log) == ["NCC_EVRF007", "NCC_ITEN404"]
    assert first_run.ncc_codes("Compiler status PASS") == []


def test_junit_summary_counts_and_first_lines():
    xml = """<testsuites><testsuite name="pytest">
      <testcase classname="test.integration.test_neuron" name="test_a[gqa]" time="1.0"/>
      <testcase classname="test.integration.test_neuron" name="test_b"><failure message="assert 0.2 &lt;= 0.1&#10;more">tb</failure></testcase>
      <testcase classname="test.integration.test_neuron" name="test_c"><error message="compile exited with 70">tb</error></testcase>
      <testcase classname="test.integration.test_neuron" name="test_d"><skipped message="no checkpoint"/></testcase>
    </testsuite></testsuites>"""
    summary = first_run.junit_summary(xml)
    assert summary["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert summary["problems"] == [
        {"test": "test.integration.test_neuron::test_b", "outcome": "failed", "message": "assert 0.2 <= 0.1"},
        {"test": "test.integration.test_neuron::test_c", "outcome": "error", "message": "compile exited with 70"},
        {"test": "test.integration.test_neuron::test_d", "outcome": "skipped", "message": "no checkpoint"}]


def test_every_suite_test_belongs_to_a_configuration(tmp_path):
    """The node ids each configuration runs (--config NAME) are exactly the tests pytest collects, all of them."""
    run = subprocess.run([sys.executable, "-m", "pytest", "test/integration", "--collect-only", "-q", "-p",
                          "no:cacheprovider"], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    collected = {line for line in run.stdout.splitlines() if "::" in line}
    assert len(collected) > 20, run.stdout[-2000:]
    names = [*trn2_helpers.suite_configs(1, tmp_path), *trn2_helpers.suite_configs(4, tmp_path)]
    mapped = set(first_run.selected_tests(names))
    assert mapped == collected, (sorted(collected - mapped), sorted(mapped - collected))
    assert first_run.selected_tests(["real-b1"]) == ["test/integration/test_neuron.py::test_performance[1]"]


def test_first_run_here_reports_failed_compiles_reused_artifacts_and_the_suite(tmp_path):
    """The command on this machine (no Neuron SDK): a configuration whose artifacts are complete is reused, the
    other's compile fails (exit 2, logged, its log's tail in the report), the suite skips its tests, one
    report file holds the environment, the compiles and the suite; exit status 1."""
    compiled = tmp_path / "compiled"
    path, settings = trn2_helpers.suite_configs(1, None)["golden-tiny-bfloat16"]
    done = compiled / trn2_helpers.artifacts_key(path, 1, settings)
    done.mkdir(parents=True)
    (done / "zaya1-artifacts.json").write_text("{}")
    run = subprocess.run([sys.executable, str(ROOT / "test" / "integration" / "first_run.py"), "--tp", "1",
                          "--config", "golden-tiny-float32", "--config", "golden-tiny-bfloat16", "--out",
                          str(tmp_path / "out"), "--compiled-dir", str(compiled)],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "out" / "first-run-report.md").read_text()
    assert "| golden-tiny-float32 | failed (exit 2) |" in report and "| golden-tiny-bfloat16 | reused | 0 |" in report
    assert "### golden-tiny-float32: last" in report and "needs torch_neuronx" in report
    assert "| SDK problem | Neuron SDK not installed" in report
    assert "pytest exit 0: 0 passed, 0 failed, 0 error, 7 skipped" in report
    assert (tmp_path / "out" / "compile-golden-tiny-float32.log").is_file()


def test_report_puts_the_published_figures_and_targets_beside_ours():
    records = [{"metric": "decode", "batch": b, "value": v, "unit": "tok/s", "context_bucket": [256],
                "token_buckets": [256], "tp": 4, "lnc": "2"} for b, v in ((1, 40.0), (4, 100.0))]
    records.append({**records[0], "metric": "ttft", "value": 50.0, "unit": "ms"})
    rows = trn2_helpers.versus_published(records, "zaya1-8b")
    report = first_run.render({"instance type": "trn2.3xlarge"}, [], None,
                              {"records": records, "versus_published": rows})
    assert "| decode | 4 | 100.0 | tok/s | [256] | [256] | 4 | 2 |" in report
    assert "| decode_b1 | 40.0 | 31.7 | 2 | ok | 200.0 | no |" in report
    assert "| decode_b4 | 100.0 | 112.6 | 2 | WORSE | 600.0 | no |" in report
    assert "| ttft_ms | 50.0 | 58.8 | 2 | ok | 30.0 | no |" in report
    assert "not run (--no-suite)" in report and "| instance type | trn2.3xlarge |" in report
