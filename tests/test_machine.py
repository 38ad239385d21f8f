"""The machine fingerprint, its record in every stage, the appendix's machine table and the portability switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from xrlib.core import machine as M
from xrlib.core.runs import REPO_ROOT


def test_fingerprint_holds_the_result_relevant_parts_and_a_stable_id():
    fp = M.machine_fingerprint()
    for key in ("cpu_model", "isa_flags", "torch_cpu_capability", "torch_builds", "numpy_blas", "numpy_simd_baseline",
                "threads", "python", "torch", "numpy", "portable", "id"):
        assert key in fp, key
    assert fp["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fp["threads"]["torch_intra_op"] == torch.get_num_threads()
    assert fp["torch"] == torch.__version__
    assert len(fp["id"]) == 12 and M.machine_fingerprint()["id"] == fp["id"]  # same process, same id
    json.dumps(fp)  # a stage record can hold it


def test_id_changes_with_threads_and_isa_but_not_with_the_cpu_name():
    fp = M.machine_fingerprint()
    renamed = {**fp, "cpu_model": "another name", "cores": 99}
    assert M.fingerprint_id(renamed) == fp["id"]
    assert M.fingerprint_id({**fp, "isa_flags": fp["isa_flags"][:-1] + ["other"]}) != fp["id"]
    assert M.fingerprint_id({**fp, "torch_cpu_capability": "DEFAULT"}) != fp["id"]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(old + 1)
        assert M.machine_fingerprint()["id"] != fp["id"]  # the thread count changes the bits, so the id
    finally:
        torch.set_num_threads(old)
    assert M.machine_fingerprint()["id"] == fp["id"]


def test_portable_env_is_opt_in_and_keeps_what_the_user_set():
    assert M.portable_env({}) == {} and M.portable_env({"XRLIB_PORTABLE": "0"}) == {}
    env = M.portable_env({"XRLIB_PORTABLE": "1"})
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    kept = {"XRLIB_PORTABLE": "1", "ATEN_CPU_CAPABILITY": "default"}
    assert "ATEN_CPU_CAPABILITY" not in M.portable_env(kept)
    target = dict(kept)
    assert M.apply_portability(target) == M.portable_env(kept) and target["ATEN_CPU_CAPABILITY"] == "default"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                             "NPY_DISABLE_CPU_FEATURES", "XRLIB_PORTABLE")}
    full.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_importing_xrlib_pins_torch_before_it_loads():
    code = ("import os, xrlib, torch; from xrlib.core.machine import machine_fingerprint as f; fp = f(); "
            "print(os.environ.get('ATEN_CPU_CAPABILITY'), torch.backends.cpu.get_cpu_capability(), fp['portable'], "
            "fp['env'].get('ONEDNN_MAX_CPU_ISA'))")
    out = _python(code, XRLIB_PORTABLE="1")
    assert out.returncode == 0, out.stderr
    pinned, capability, portable, onednn = out.stdout.split()
    assert pinned == "avx2" and capability in ("AVX2", "DEFAULT") and portable == "True" and onednn == "AVX2"
    off = _python(code)
    assert off.stdout.split()[0] == "None" and off.stdout.split()[2] == "False"
    late = _python("import numpy, xrlib", XRLIB_PORTABLE="1")  # too late for numpy: said so
    assert "XRLIB_PORTABLE=1: numpy was imported before xrlib" in late.stderr


def test_a_stage_records_its_machine_and_the_digests_of_what_it_wrote(tmp_path, capsys):
    from xrlib.core.stage import Stage

    stage = Stage("01_first", "smoke", reads=[], writes=["x"], run_root=tmp_path)
    (stage.run / "sub").mkdir()
    (stage.run / "sub" / "out.txt").write_text("artifact", encoding="utf-8")
    stage.summary()
    record = json.loads((stage.run / "01_first.timings.json").read_text(encoding="utf-8"))
    assert record["machine"]["id"] == M.machine_fingerprint()["id"]
    assert list(record["artifacts"]) == ["sub/out.txt"] and record["artifacts"]["sub/out.txt"]["bytes"] == 8
    assert f"machine  : {record['machine']['id']}" in capsys.readouterr().out
    # the same stage again, its artifact reused (cached): still recorded
    Stage("01_first", "smoke", reads=[], writes=["x"], run_root=tmp_path).summary()
    again = json.loads((stage.run / "01_first.timings.json").read_text(encoding="utf-8"))
    assert again["artifacts"] == record["artifacts"]


def test_appendix_machine_section():
    from xrlib.publish.pages import machine_markdown

    fp = M.machine_fingerprint()
    one = "\n".join(machine_markdown({fp["id"]: (fp, ["01_a", "02_b"])}))
    assert f"| fingerprint id | `{fp['id']}` |" in one and f"| torch CPU capability | {fp['torch_cpu_capability']} |" in one
    assert "Stages" not in one
    other = {**fp, "id": "0" * 12}
    two = "\n".join(machine_markdown({fp["id"]: (fp, ["01_a"]), other["id"]: (other, ["02_b"])}))
    assert "Stages 01_a:" in two and "Stages 02_b:" in two
    assert "No stage of this run recorded" in "\n".join(machine_markdown({}))


def test_portability_benchmark_reads_its_statements_off_the_rows():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_portability", REPO_ROOT / "benchmarks" / "bench_portability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [["this CPU", "off", 1, "AVX512", "aaa", 0.0, 1.0], ["this CPU", "on", 1, "AVX2", "bbb", 0.1, 1.0],
            ["AVX2 CPU", "off", 1, "AVX2", "bbb", 0.1, 1.0], ["SSE4.1 CPU", "off", 1, "DEFAULT", "ccc", 0.2, 1.0],
            ["this CPU", "off", 2, "AVX512", "ddd", 0.3, 1.0], ["this CPU", "on", 2, "AVX2", "bbb", 0.1, 1.0]]
    notes = bench.notes(rows)
    assert "1 thread(s): this CPU with the switch on and the AVX2 CPU give the same weights" in notes
    assert "1 thread(s): this CPU with the switch off and the AVX2 CPU give different weights" in notes
    assert "1 thread(s): this CPU with the switch on and the SSE4.1 CPU give different weights" in notes
    assert "switch off: 1 and 2 threads give different weights on this CPU" in notes
    assert "switch on: 1 and 2 threads give the same weights on this CPU" in notes
    assert len(bench.COLUMNS) == len(rows[0])
