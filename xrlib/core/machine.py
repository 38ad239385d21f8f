"""What a result was computed on: the machine fingerprint, and the opt-in instruction-set pin.

Fingerprint
    :func:`machine_fingerprint` describes the CPU (model, the ISA flags that the numeric libraries
    dispatch on), torch's CPU kernel capability, the oneDNN / MKL / BLAS builds of torch and numpy,
    numpy's SIMD baseline and the dispatch targets it uses, the thread counts (torch intra- and
    inter-op, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``XRLIB_THREADS``, ITK's default) and the
    python / torch / numpy versions. Its ``id`` (12 hex digits, :func:`fingerprint_id`) hashes the
    parts that can change floating-point results — ISA flags, kernel capability, library builds and
    versions, thread counts, the pins — and not the CPU's marketing name or core count, so two
    machines with the same id are expected to give the same bits. Every stage records it
    (:class:`xrlib.core.stage.Stage`) and the book's appendix shows it.

Portability switch (``XRLIB_PORTABLE=1``)
    Sets, before torch or numpy are loaded, the environment variables that cap their instruction
    sets at AVX2 (the x86-64-v3 level): ``ATEN_CPU_CAPABILITY=avx2`` (torch's own kernels),
    ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's convolutions) and, for numpy 2, ``NPY_DISABLE_CPU_FEATURES``
    with its AVX-512 dispatch targets (``X86_V4 AVX512_ICL AVX512_SPR``) on a CPU that has AVX-512.
    A variable already set by the user is kept. :func:`apply_portability` runs when ``xrlib`` is
    imported, so the ``xrlib`` command, the book's kernels (started by it, they inherit the
    environment), spawned task processes and Ray tasks (given the variables explicitly) all run
    pinned. Not pinned: MKL's BLAS (``MKL_CBWR``/``MKL_ENABLE_INSTRUCTIONS`` are not set), OpenBLAS
    and the numba-compiled loops (compiled for the host CPU).

    What it buys was measured by ``benchmarks/bench_portability.py`` (its docstring and
    ``benchmarks/results/portability.json``): with the pin, a training under torch's default
    capability and one capped at AVX2 on one machine run the same kernels; the thread count still
    changes the bits (a model's cache key records it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import sys

#: The environment variable that turns the instruction-set pin on (``1``; anything else is off).
PORTABLE_ENV = "XRLIB_PORTABLE"
#: numpy 2's dispatch targets above AVX2 (x86-64-v3), disabled by the pin on an AVX-512 CPU.
NUMPY_AVX512_TARGETS = "X86_V4 AVX512_ICL AVX512_SPR"
#: The ISA flags of ``/proc/cpuinfo`` that the numeric libraries dispatch on.
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")
#: Environment variables that change what the numeric libraries run (recorded as set, or absent).
ENV_KEYS = ("XRLIB_PORTABLE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES",
            "NPY_ENABLE_CPU_FEATURES", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS", "XRLIB_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


def portable_requested(environ=None) -> bool:
    """Whether ``XRLIB_PORTABLE`` is ``1`` in ``environ`` (default ``os.environ``)."""
    return (os.environ if environ is None else environ).get(PORTABLE_ENV, "").strip() == "1"


def portable_env(environ=None) -> dict[str, str]:
    """The variables the pin sets (see the module docstring), less those already set in ``environ``;
    ``{}`` when ``XRLIB_PORTABLE`` is not ``1``. Imports neither torch nor numpy."""
    env = os.environ if environ is None else environ
    if not portable_requested(env):
        return {}
    want = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    if _numpy_major() >= 2 and (not _cpu_flags() or "avx512f" in _cpu_flags()):
        want["NPY_DISABLE_CPU_FEATURES"] = NUMPY_AVX512_TARGETS
    return {k: v for k, v in want.items() if k not in env}


def pinned_env(environ=None) -> dict[str, str]:
    """The variables of the pin as set in ``environ`` (default ``os.environ``) when ``XRLIB_PORTABLE`` is
    ``1``, ``XRLIB_PORTABLE`` included (``{}`` otherwise): what a process started elsewhere (a Ray worker)
    must be given to run pinned."""
    env = os.environ if environ is None else environ
    if not portable_requested(env):
        return {}
    keys = (PORTABLE_ENV, "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES")
    return {k: env[k] for k in keys if k in env} | portable_env(env)


def apply_portability(environ=None) -> dict[str, str]:
    """Set :func:`portable_env` in ``environ`` (default ``os.environ``) and return what was set.

    Called when ``xrlib`` is imported. numpy reads its variable when it is imported (a
    ``RuntimeWarning`` says so when it was imported first); torch and oneDNN read theirs at their
    first CPU operation.
    """
    env = os.environ if environ is None else environ
    new = portable_env(env)
    env.update(new)
    if new and environ is None and "numpy" in sys.modules:
        import warnings

        warnings.warn(f"{PORTABLE_ENV}=1: numpy was imported before xrlib, so its SIMD dispatch is not pinned in this "
                      "process (torch and oneDNN read theirs at their first CPU operation); import xrlib first, or "
                      "set the variables in the shell", RuntimeWarning, stacklevel=2)
    return new


def _numpy_major() -> int:
    import importlib.metadata as md

    try:
        return int(md.version("numpy").split(".")[0])
    except (md.PackageNotFoundError, ValueError):
        return 0


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def _cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def _static_part() -> dict:
    """Everything that is fixed for the life of a process (computed once)."""
    import numpy as np
    import torch

    flags = _cpu_flags()
    d: dict = {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_builds": _torch_builds(torch),
        "numpy_blas": _numpy_blas(),
    }
    d.update(_numpy_simd())
    return d


def _torch_builds(torch) -> dict[str, str]:
    """torch's oneDNN and MKL versions and BLAS/LAPACK choices (from ``torch.__config__.show()``)."""
    text = torch.__config__.show()
    out = {}
    for key, pattern in (("onednn", r"MKL-DNN v([\w.]+)"), ("mkl", r"Math Kernel Library Version ([\w.]+)"),
                         ("blas", r"BLAS_INFO=(\w+)"), ("lapack", r"LAPACK_INFO=(\w+)"),
                         ("openmp", r"OpenMP (\d+)")):
        m = re.search(pattern, text)
        out[key] = m.group(1) if m else "none"
    out["mkldnn_enabled"] = str(bool(torch.backends.mkldnn.is_available()))
    return out


def _numpy_blas() -> str:
    """numpy's BLAS: name, version and (OpenBLAS) build configuration."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return " ".join(str(blas.get(k, "")) for k in ("name", "version", "openblas configuration")).strip()
    except Exception:  # an older numpy without the dicts mode
        return "unknown"


def _numpy_simd() -> dict:
    """numpy's SIMD baseline, its dispatch targets and those this CPU enables (after the variables)."""
    try:
        from numpy._core import _multiarray_umath as um
    except ImportError:  # numpy 1
        from numpy.core import _multiarray_umath as um
    features = getattr(um, "__cpu_features__", {})
    dispatch = list(getattr(um, "__cpu_dispatch__", []))
    return {"numpy_simd_baseline": list(getattr(um, "__cpu_baseline__", [])),
            "numpy_simd_dispatch": [t for t in dispatch if features.get(t)]}


def _threads() -> dict:
    """The thread counts of this process now (they change when a task sets torch's)."""
    import torch

    out = {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}
    if "SimpleITK" in sys.modules or _importable("SimpleITK"):
        import SimpleITK as sitk

        out["itk"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    return out


@functools.lru_cache(maxsize=None)
def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _threadpools() -> list[dict]:
    """threadpoolctl's view of the loaded BLAS / OpenMP libraries (empty when it is not installed)."""
    if not _importable("threadpoolctl"):
        return []
    import threadpoolctl

    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpoolctl.threadpool_info()]


#: The fingerprint keys that enter :func:`fingerprint_id` (what can change floating-point results).
ID_KEYS = ("machine", "isa_flags", "python", "torch", "numpy", "torch_cpu_capability", "torch_builds", "numpy_blas",
           "numpy_simd_baseline", "numpy_simd_dispatch", "threads", "env", "portable")


def fingerprint_id(fp: dict) -> str:
    """12 hex digits of SHA-256 over the :data:`ID_KEYS` of a fingerprint."""
    text = json.dumps({k: fp.get(k) for k in ID_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def machine_fingerprint() -> dict:
    """The machine fingerprint of this process (module docstring): a JSON-able mapping with its ``id``.

    The fixed part is computed once per process; thread counts and the environment are read on each
    call (a few milliseconds)."""
    fp = dict(_static_part())
    fp["threads"] = _threads()
    fp["env"] = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    fp["portable"] = portable_requested()
    fp["threadpools"] = _threadpools()
    fp["id"] = fingerprint_id(fp)
    return fp


def fingerprint_rows(fp: dict) -> list[list[str]]:
    """``[item, value]`` rows of a fingerprint for a table (the appendix)."""
    tb = fp.get("torch_builds", {})
    th = fp.get("threads", {})
    env = fp.get("env", {})
    return [
        ["fingerprint id", f"`{fp.get('id', '-')}`"],
        ["CPU", f"{fp.get('cpu_model', '-')} ({fp.get('cores', '-')} cores, {fp.get('machine', '-')})"],
        ["ISA flags", " ".join(fp.get("isa_flags", [])) or "-"],
        ["torch CPU capability", str(fp.get("torch_cpu_capability", "-"))],
        ["torch builds", f"oneDNN {tb.get('onednn', '-')}, MKL {tb.get('mkl', '-')}, BLAS {tb.get('blas', '-')}"],
        ["numpy BLAS", str(fp.get("numpy_blas", "-"))],
        ["numpy SIMD", f"baseline {' '.join(fp.get('numpy_simd_baseline', [])) or '-'}; "
                       f"dispatch {' '.join(fp.get('numpy_simd_dispatch', [])) or '-'}"],
        ["threads", ", ".join(f"{k} {v}" for k, v in th.items()) or "-"],
        ["environment", ", ".join(f"{k}={v}" for k, v in env.items()) or "none set"],
        ["portability switch", "on" if fp.get("portable") else "off"],
        ["versions", f"python {fp.get('python', '-')}, torch {fp.get('torch', '-')}, numpy {fp.get('numpy', '-')}"],
    ]
