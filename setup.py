"""The packages setuptools installs (the rest of the metadata: pyproject.toml).

``sensor`` and its subpackages are found (a new protocol package ships without a
line here); the repository's ``rules/`` -- the source of truth for the shipped
rules and their examples -- is installed as the package ``sensor_rules``, so
system, venv, ``--user`` and pipx installs all find it with ``importlib.resources``
(``sensor.detect.rules.default_rules_dir``). pyproject.toml's ``[tool.setuptools]``
cannot map a folder to a package of another name while finding the others.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["sensor", "sensor.*"]), "sensor_rules"],
    package_dir={"sensor_rules": "rules"},
)
