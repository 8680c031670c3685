"""Connect to Ray: an embedded local instance by default, or a running cluster by address.

With an address (``auto``, ``HOST:PORT``, or ``RAY_ADDRESS`` in the environment) the driver joins
that cluster and ships idcmap's own packages to the workers through ``runtime_env`` (py_modules),
so the workers need only the dependencies installed (``ray_cluster.yaml`` does that).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import ray

PACKAGES = ("slide_tiling", "model", "jobs", "cluster")
_ROOT = Path(__file__).resolve().parents[1]


def runtime_env() -> dict:
    """The runtime_env that carries idcmap's code to workers of a remote cluster."""
    return {"py_modules": [str(_ROOT / p) for p in PACKAGES],
            "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}}


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Start (and stop) an embedded Ray, or join a cluster; yields the CPUs Ray may use."""
    address = address or os.environ.get("RAY_ADDRESS")
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, runtime_env=runtime_env(), logging_level=logging.WARNING,
                     log_to_driver=False)
        else:
            # workers of an embedded Ray inherit the driver's environment (a runtime_env would
            # start them through Ray's runtime-env agent: about a second later)
            for key, value in runtime_env()["env_vars"].items():
                os.environ.setdefault(key, value)
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        started = True
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()
