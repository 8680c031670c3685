"""Connect to Ray: an embedded local instance by default, or a running cluster by address.

With an address (``auto``, ``HOST:PORT``, or ``RAY_ADDRESS`` in the environment) the driver joins
that cluster and ships idcmap's own code to the workers through ``runtime_env`` (py_modules: one
folder named ``idcmap``, so workers import the same names as the driver), so the workers need only
the dependencies installed (``ray_cluster.yaml`` does that).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import ray

import idcmap

#: the sub-packages workers import (not ``idcmap.models``: workers are given a bundle's path)
PACKAGES = ("slide_tiling", "model", "jobs", "cluster")
ENV_VARS = {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}


def package_folder(staging: Path) -> Path:
    """A folder named ``idcmap`` with the code workers need: the installed package itself when it
    is one folder (a wheel), else a copy under ``staging`` of the source tree's folders (an
    editable install maps each sub-package to its own top-level folder)."""
    root = Path(idcmap.__file__).parent
    if all((root / p / "__init__.py").is_file() for p in PACKAGES):
        return root
    import importlib

    out = staging / "idcmap"
    out.mkdir(parents=True)
    for module in root.glob("*.py"):  # idcmap's own modules: errors, atomic, ...
        shutil.copy2(module, out / module.name)
    for p in PACKAGES:
        src = Path(str(importlib.import_module(f"idcmap.{p}").__file__)).parent
        shutil.copytree(src, out / p, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def runtime_env(staging: Path, env_vars: dict | None = None) -> dict:
    """The runtime_env that carries idcmap's code to workers of a remote cluster."""
    return {"py_modules": [str(package_folder(staging))], "env_vars": dict(ENV_VARS if env_vars is None else env_vars)}


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, env_vars: dict | None = None):
    """Start (and stop) an embedded Ray, or join a cluster; yields the CPUs Ray may use.
    ``env_vars``: the workers' environment (default: :data:`ENV_VARS`, scoring's)."""
    env_vars = ENV_VARS if env_vars is None else env_vars
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray's own messages and its workers' output only when the idcmap logger is verbose (-v)
    verbose = logging.getLogger("idcmap").isEnabledFor(logging.DEBUG)
    level = logging.INFO if verbose else logging.ERROR
    started = False
    if not ray.is_initialized():
        if address:
            with tempfile.TemporaryDirectory(prefix="idcmap-code-") as staging:  # uploaded by init
                ray.init(
                    address=address,
                    runtime_env=runtime_env(Path(staging), env_vars),
                    logging_level=level,
                    log_to_driver=verbose,
                )
        else:
            # workers of an embedded Ray inherit the driver's environment (a runtime_env would
            # start them through Ray's runtime-env agent: about a second later)
            for key, value in env_vars.items():
                os.environ.setdefault(key, value)
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=level, log_to_driver=verbose)
        started = True
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()


def ray_nodes() -> list[dict]:
    """The live nodes of the Ray session: name (address and id, as the scorer actors give it), CPUs
    and GPUs (where it has some)."""
    return [
        {"name": f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})", "cpus": n["Resources"].get("CPU", 0)}
        | ({"gpus": n["Resources"]["GPU"]} if n["Resources"].get("GPU") else {})
        for n in ray.nodes()
        if n["Alive"]
    ]
