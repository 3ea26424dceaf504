"""The application above the flows: the ``transfer-pipe`` command (``cli``) and the
long-running stack it serves (``serve``).

The one part of the package that imports Prefect and the flows; import-linter holds the
rest of the library below the flows (``pyproject.toml``).
"""
