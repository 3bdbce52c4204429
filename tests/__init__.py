"""xfer-sensor's tests: a package, so a test imports its helpers as
``tests.support.*`` and ``tests.lab.*`` (the repository root is on the path:
pyproject.toml [tool.pytest.ini_options] pythonpath)."""
