"""automaster: Ray-distributed automatic music mastering."""

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it (tool.setuptools.dynamic)
