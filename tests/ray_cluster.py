"""A Ray cluster on this machine for the tests and the overhead benchmark (``ray.cluster_utils.Cluster``).

Each node gets fixed ports for its dashboard agent. Why: Ray 2.60's raylet waits at most 15 s
(hard-coded) for the agent to write its port files and aborts otherwise (ray-project/ray#65983);
on a loaded 2-core machine the agent's imports alone take longer. With the ports given, the raylet
need not wait for the metrics ports; the listen port is not passed to the raylet by Ray's Python
launcher (the raylet has the flag), so :func:`_pass_listen_port` adds it to the raylet's command.
"""

from __future__ import annotations

import functools
import re
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> dict[str, int]:
    return {"metrics_agent_port": _free_port(), "metrics_export_port": _free_port(),
            "dashboard_agent_listen_port": _free_port(), "runtime_env_agent_port": _free_port()}


def _pass_listen_port() -> None:
    import ray._private.services as services

    start = services.start_ray_process
    if getattr(start, "_xrlib_patched", False):
        return

    @functools.wraps(start)
    def patched(command, process_type, *args, **kwargs):
        if command and command[0] == getattr(services, "RAYLET_EXECUTABLE", None):
            m = re.search(r"--listen-port=(\d+)", " ".join(command))
            if m and m.group(1) != "0" and not any(c.startswith("--dashboard_agent_listen_port") for c in command):
                command = [*command, f"--dashboard_agent_listen_port={m.group(1)}"]
        return start(command, process_type, *args, **kwargs)

    patched._xrlib_patched = True
    services.start_ray_process = patched


def start_cluster(nodes: int = 2, cpus_per_node: int = 1):
    """A local multi-node Ray cluster (head + ``nodes - 1`` workers), not yet connected to."""
    from ray.cluster_utils import Cluster

    _pass_listen_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False,
                                                            **node_ports()})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node, **node_ports())
    return cluster
