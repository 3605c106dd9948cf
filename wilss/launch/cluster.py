"""Where Ray runs: attach to a cluster, or start a local one in this process.

- ``RAY_ADDRESS`` set (``ray job submit`` sets it for its entrypoint; or ``export RAY_ADDRESS=...``
  before starting Python): attach to that cluster. Its nodes should declare the ``TRAIN_DRIVER``
  custom resource on the nodes that may host trial drivers (``ray start --resources='{"TRAIN_DRIVER":
  100}'``); without it trial drivers fall back to a sliver of CPU.
  The address is checked first (a TCP connect, ``WILSS_RAY_CONNECT_TIMEOUT`` seconds, default 5):
  an unreachable cluster is a one-line ``WilssError``, not a ``ray.init`` that retries for minutes.
- Otherwise: a local Ray bound to 127.0.0.1, servers and dashboard (``wilss.launch`` also sets Ray's
  switch for it on import) with the dashboard on (Train V2 needs the State API to
  clean up after stopped trials, RAY.md P2), ``TRAIN_DRIVER`` declared, and shut down on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from wilss.errors import WilssError

DRIVER_RESOURCE = "TRAIN_DRIVER"
# A local Ray's servers and dashboard listen here only (to serve other machines, start a cluster
# with `ray start --head` and set RAY_ADDRESS).
LOCAL_HOST = "127.0.0.1"

# Set before Ray starts any process (V2 propagates the driver's env to controller and workers):
# a faster Train health check shortens every TorchTrainer.fit by seconds on small machines (RAY.md
# §4.2); trials resolve every path themselves, so they need not run in Tune's trial folder (P23).
# The legacy console output with verbose=0 leaves the progress lines to ``wilss.launch.progress``. Tune
# saves its experiment state every 5 s (not "auto", >= 10 s), so a restored sweep restarts fewer
# trials that had in fact finished (those skip all their steps anyway: the rows are done markers).
_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_CHDIR_TO_TRIAL_DIR": "0",
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120", "RAY_AIR_NEW_OUTPUT": "0",
            "TUNE_GLOBAL_CHECKPOINT_S": "5"}
# Passed to the processes of an attached cluster too (the local ones inherit them).
_FORWARD = ("WILSS_CACHE_DIR",)


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
                log_to_driver: bool = True) -> Iterator[None]:
    """Ray for the block: reuse one already initialised, else attach or start locally (and stop it)."""
    import ray

    if ray.is_initialized():
        yield
        return
    for k, v in _RAY_ENV.items():
        os.environ.setdefault(k, v)
    env = {k: os.environ[k] for k in (*_RAY_ENV, *_FORWARD) if k in os.environ}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=log_to_driver,
                     logging_level=logging.WARNING)
        except (ConnectionError, ValueError) as e:  # "auto" with no cluster running, a malformed address
            raise WilssError(f"cannot attach to the Ray cluster at RAY_ADDRESS={address} "
                             f"({str(e).splitlines()[0]}): {_FIX}") from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, resources={DRIVER_RESOURCE: 1000},
                 include_dashboard=True, dashboard_host=LOCAL_HOST, _node_ip_address=LOCAL_HOST,
                 log_to_driver=log_to_driver, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


_FIX = "start it (`ray start --head`), fix the address, or unset RAY_ADDRESS to run on a local Ray"
# Ports a cluster address means when it names none: GCS, Ray Client, dashboard (job submission).
_DEFAULT_PORTS = {"": 6379, "ray": 10001, "http": 8265, "https": 443}


def check_reachable(address: str, timeout: float | None = None) -> None:
    """WilssError unless a TCP connection to the cluster ``address`` opens within ``timeout`` seconds
    (``ray.init`` itself keeps retrying an unreachable address for minutes). ``auto`` and ``local``
    are left to Ray."""
    if address in ("auto", "local"):
        return
    timeout = float(os.environ.get("WILSS_RAY_CONNECT_TIMEOUT", "5")) if timeout is None else timeout
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number
        host = port = None
    if not host or not port:
        raise WilssError(f"RAY_ADDRESS={address} is not a cluster address (host:port, ray://host:port or "
                         f"http://host:port): {_FIX}")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else e.strerror or type(e).__name__
        raise WilssError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({host}:{port}: {reason}): "
                         f"{_FIX}") from None


def cluster_totals() -> dict[str, float]:
    """CPU, GPU and TRAIN_DRIVER totals of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    return {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0)),
            DRIVER_RESOURCE: float(res.get(DRIVER_RESOURCE, 0))}


def free_node_cpus(gpus: float = 0.0) -> float:
    """CPUs one task can hold now: the CPUs of the largest node with ``gpus`` GPUs (a request no node
    can meet would wait forever), at most what the cluster has free."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    largest = max((r.get("CPU", 0.0) for r in nodes if r.get("GPU", 0.0) >= gpus), default=0.0)
    return min(float(largest), float(ray.available_resources().get("CPU", 0.0)))


def node_columns() -> dict[str, str]:
    """Where this process runs, as result-row columns."""
    import ray

    ctx = ray.get_runtime_context()
    return {"ray.node_id": ctx.get_node_id(), "ray.node_ip": ray.util.get_node_ip_address()}


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))
