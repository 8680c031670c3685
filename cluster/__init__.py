"""Connecting to Ray: an embedded local instance by default, or a running cluster by address."""

from .connect import PACKAGES, package_folder, ray_nodes, ray_session, runtime_env

__all__ = ["PACKAGES", "package_folder", "ray_nodes", "ray_session", "runtime_env"]
