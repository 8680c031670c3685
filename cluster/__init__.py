"""Connecting to Ray: an embedded local instance by default, or a running cluster by address."""
