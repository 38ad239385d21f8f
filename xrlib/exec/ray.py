"""The Ray executor: run the same picklable tasks on a Ray cluster (optional: ``pip install xrlib[ray]``).

Imported only when asked for (``get_executor("ray", address=...)``, ``--executor ray``). What it does
on top of the :class:`~xrlib.exec.base.Executor` contract (tasks in, ``(task, result)`` pairs out in
plan order, the driver alone writes manifests):

Resources
    A task asks Ray for ``num_cpus = task.threads`` and ``num_gpus = task.num_gpus`` (default 0;
    a training task whose device is CUDA asks for one GPU), see :func:`~xrlib.exec.base.task_resources`.
    Inside the worker :func:`~xrlib.exec.base.run_task` sets torch's thread count to ``task.threads``
    (Ray starts workers with one thread, which would change floating-point results); Ray sets
    ``OMP_NUM_THREADS`` to the task's CPUs. A task asking for more CPUs or GPUs than any node of the
    cluster has is refused before anything runs (Ray would wait for it forever).
Large read-only inputs
    Attributes named in ``task.shared`` (e.g. the source CT of the cohort tasks, the test images of
    an attack) are put into Ray's object store **once** per distinct object and handed to every
    task by reference (each running task works on a private copy: ITK crashes on the object
    store's read-only arrays); everything else a task reads (cohort subjects, dataset shards, checkpoints)
    comes from the run folder, which must be on storage that every node sees at the same path.
Retries
    ``max_retries`` (default :data:`MAX_RETRIES` = 3): a task whose worker process or node dies is
    re-run up to three times; an exception raised by the task itself is not retried (the code is
    deterministic: it would raise again). The other tasks go on; once all have ended, the failures
    are raised together as one :class:`TaskFailures` naming each failed task.
Portability
    With ``XRLIB_PORTABLE=1`` in the driver, every task gets the instruction-set pin's variables in its
    Ray runtime environment (:func:`xrlib.core.machine.pinned_env`), so its worker starts pinned.
Progress
    One tqdm bar over the tasks (completion order), with the failed tasks named in its postfix.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Sequence
from typing import Any

from xrlib.core.errors import UsageError
from xrlib.core.machine import pinned_env
from xrlib.core.runs import default_threads
from xrlib.exec.base import Executor, Task, run_task, task_resources

#: Ray re-runs a task whose worker (or node) died up to this many times.
MAX_RETRIES = 3
#: Environment variable with the default cluster address (``xrlib book --address`` sets it for the kernels).
ADDRESS_ENV = "XRLIB_RAY_ADDRESS"
#: Seconds to wait for the cluster's port to answer before giving up on an address.
CONNECT_TIMEOUT_S = 5.0


class TaskFailures(RuntimeError):
    """Some tasks failed (after Ray's retries); ``failures`` maps task key → one-line reason."""

    def __init__(self, failures: dict[str, str], total: int):
        self.failures = dict(failures)
        names = "; ".join(f"{k}: {v}" for k, v in failures.items())
        super().__init__(f"{len(failures)} of {total} tasks failed: {names}")

    def __reduce__(self):
        return (type(self), (self.failures, 0))


def check_address(address: str | None, flag: str = "--address") -> None:
    """Refuse an address that is malformed or whose port does not answer, with one line naming ``flag``.

    ``None``, ``"auto"`` and ``"local"`` are Ray's own (a local Ray is started or found) and pass.
    ``HOST:PORT`` (a cluster's GCS) and ``ray://HOST:PORT`` (Ray client) are probed with one TCP
    connection (:data:`CONNECT_TIMEOUT_S`), so a typo fails in seconds rather than after Ray's
    minutes of retries.
    """
    if address in (None, "", "auto", "local"):
        return
    text = str(address)
    rest = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(flag, f"{text!r} is not a Ray address (HOST:PORT, ray://HOST:PORT, auto or local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(flag, f"no Ray cluster answers at {text!r} ({exc.strerror or type(exc).__name__})") from None


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray", "Ray is not installed; install the optional extra: pip install 'xrlib[ray]'") from None
    return ray


def _run_remote(task: Task, names: tuple[str, ...], *values) -> Any:
    """The Ray task: put the shared inputs (resolved from the object store) back and run the task.

    Arrays that come out of Ray's object store are read-only views of shared memory; ITK's wrappers
    crash on those (a segfault in ``itk.matrix_from_array``), so the task runs on a private,
    writable deep copy (one copy per running task; the object store keeps one per node)."""
    for name, value in zip(names, values):
        object.__setattr__(task, name, value)
    from xrlib.core.memory import reuse_heap_for_this_process

    reuse_heap_for_this_process()  # a Ray worker runs its tasks one after another: reuse their freed blocks
    return run_task(copy.deepcopy(task))


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    msg = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {msg[:300]}"


class RayExecutor(Executor):
    """Runs the tasks on a Ray cluster (see the module docstring).

    Args:
        address: the cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``); ``None``: the
            :data:`ADDRESS_ENV` variable, else Ray's own ``RAY_ADDRESS``, else a Ray already
            initialised in this process, else a new local Ray.
        max_retries: re-runs of a task whose worker died (default :data:`MAX_RETRIES`).
        threads: the thread count of tasks whose count the executor chooses (cohort subjects, dataset
            shards; training tasks carry theirs in their configuration). Default: this machine's
            :func:`~xrlib.core.runs.default_threads`, i.e. what the in-process executor uses, so the
            two give the same floating-point results.
        init_kwargs: more keyword arguments for ``ray.init`` when this executor starts Ray.
        scheduling_strategy: Ray's placement of the tasks; ``"SPREAD"`` (default) spreads them over
            the nodes (the tasks are few and long, so filling one node first gains nothing).
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = MAX_RETRIES, threads: int | None = None,
                 init_kwargs: dict | None = None, scheduling_strategy: str = "SPREAD"):
        if max_retries < 0:
            raise ValueError(f"max_retries must be ≥ 0, got {max_retries}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {threads}")
        self.address = address if address is not None else (os.environ.get(ADDRESS_ENV) or None)
        self.max_retries = int(max_retries)
        self.threads = threads
        self.scheduling_strategy = scheduling_strategy
        self._ray = _ray()
        self._connect(dict(init_kwargs or {}))
        self._remote = self._ray.remote(_run_remote)

    def _connect(self, init_kwargs: dict) -> None:
        ray = self._ray
        if ray.is_initialized() and self.address is None:
            return
        check_address(self.address)
        if ray.is_initialized():
            return  # already connected (to the cluster this process chose first)
        try:
            ray.init(address=self.address, log_to_driver=False, **init_kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, a node that did not start, ...
            raise UsageError("--address", f"cannot connect to Ray at {self.address or 'a new local instance'!r}: "
                                          f"{_one_line(exc)}") from None

    def default_task_threads(self) -> int:
        return int(self.threads) if self.threads is not None else default_threads()

    def _largest_node(self) -> tuple[float, float]:
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        return (max((r.get("CPU", 0.0) for r in nodes), default=0.0), max((r.get("GPU", 0.0) for r in nodes), default=0.0))

    def map(self, tasks: Sequence[Task], progress: bool = True, desc: str = "tasks"):
        tasks = list(tasks)
        if not tasks:
            return
        ray = self._ray
        cpus, gpus = self._largest_node()
        for t in tasks:
            need = task_resources(t)
            if need["num_cpus"] > cpus or need["num_gpus"] > gpus:
                raise UsageError("--executor ray", f"task {t.key} needs {need['num_cpus']} CPUs and {need['num_gpus']} "
                                                   f"GPUs; the largest node of the cluster has {cpus:g} and {gpus:g}")
        puts: dict[int, tuple[Any, Any]] = {}  # id(value) -> (ref, value): each shared object goes up once
        refs = []
        for t in tasks:
            names = tuple(getattr(t, "shared", ()))
            values = [getattr(t, n) for n in names]
            for v in values:
                if id(v) not in puts:
                    puts[id(v)] = (ray.put(v), v)
            stripped = copy.copy(t)
            for n in names:
                object.__setattr__(stripped, n, None)
            need = task_resources(t)
            pin = pinned_env()
            extra = {"runtime_env": {"env_vars": pin}} if pin else {}
            refs.append(self._remote.options(**extra, num_cpus=need["num_cpus"], num_gpus=need["num_gpus"],
                                             max_retries=self.max_retries, retry_exceptions=False,
                                             scheduling_strategy=self.scheduling_strategy,
                                             name=f"xrlib {t.key}")
                        .remote(stripped, names, *[puts[id(v)][0] for v in values]))
        index = {r: i for i, r in enumerate(refs)}
        pending, done, failed, nxt = list(refs), {}, {}, 0
        try:
            with self._bar(tasks, progress, desc) as bar:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for r in ready:
                        i = index[r]
                        try:
                            done[i] = ray.get(r)
                        except Exception as exc:  # RayTaskError (the task raised), WorkerCrashedError after retries
                            failed[i] = _one_line(exc)
                            bar.set_postfix_str("failed: " + ", ".join(tasks[j].key for j in sorted(failed)))
                        bar.update(1)
                    while nxt < len(tasks) and (nxt in done or nxt in failed):
                        if nxt in done:
                            yield tasks[nxt], done.pop(nxt)
                        nxt += 1
        finally:
            for r in pending:  # the consumer stopped early (error, interrupt): do not leave work running
                ray.cancel(r)
        if failed:
            raise TaskFailures({tasks[i].key: failed[i] for i in sorted(failed)}, len(tasks))
