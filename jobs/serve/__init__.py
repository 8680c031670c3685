"""The web viewer of scoring jobs (``idcmap serve``): see :mod:`idcmap.jobs.serve.app`."""
