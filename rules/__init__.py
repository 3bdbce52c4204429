"""The shipped detection rules (``*.yml``) and the false-positive control examples (``examples/``).

Not code: this file makes ``rules/`` the package ``sensor_rules`` when installed (pyproject.toml,
setup.py), so every install finds the rules with ``importlib.resources``
(``sensor.detect.rules.default_rules_dir``).
"""
