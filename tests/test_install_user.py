"""Installed rules are found everywhere: ``pip install --user`` and a (non-editable) venv install.

The shipped rules and the example filters are package data (``sensor_rules``, mapped from the
repository's ``rules/`` by setup.py); ``default_rules_dir`` finds them with
``importlib.resources`` in any install, and never takes a ``rules/`` folder that merely
sits beside the package (in site-packages it can be another package's).

Offline: the system interpreter (scripts/deps.sh installs python3-pip, which brings
setuptools and wheel) builds with ``--no-build-isolation --no-index --no-deps``, from a
copy of the sources (an in-tree build would leave build/ and *.egg-info in the checkout).
The installed command finds its runtime dependencies (pyyaml, pcapy-ng, google-re2,
psutil) in a folder of links to this venv's, which holds no ``sensor`` package, so the
``sensor`` that runs is the one just installed (checked by the rule's path).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PY = Path("/usr/bin/python3")
SHIPPED = "t1071_002_file_transfer_protocols.yml"
EXAMPLES = (
    "mf_allow_partner_cidr.yml",
    "mf_allow_partner_hostname.yml",
    "mf_allow_mft_tenant_sni.yml",
    "mf_allow_scheduled_backup.yml",
    "mf_allow_vpn_cgnat.yml",
)
RULE_IDS = {"6f0c1f7e-3a52-4f6e-9c1e-2b7d0a8e5c11", "0b7f5a8e-9d4c-4c1b-8f6a-1e2d3c4b5a69"}


def _system_python() -> Path:
    code = "import setuptools, wheel, pip"
    ok = (
        SYSTEM_PY.exists()
        and subprocess.run([SYSTEM_PY, "-c", code], capture_output=True, env=_clean_env()).returncode == 0
    )
    assert ok, f"{SYSTEM_PY} with pip, setuptools and wheel is needed (apt-get install python3-pip; scripts/deps.sh)"
    return SYSTEM_PY


def _sources(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("sensor", "rules"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    return src


def _deps(tmp: Path) -> Path:
    """Links to the runtime dependencies' top-level packages and modules (and the libraries their wheels bundle)."""
    d = tmp / "deps"
    d.mkdir()
    for mod in ("yaml", "pcapy", "re2", "psutil"):
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin, f"{mod} is not installed in this venv"
        path = Path(spec.origin)
        if spec.submodule_search_locations:
            path = path.parent
        (d / path.name).symlink_to(path)
        for libs in path.parent.glob("*.libs"):  # auditwheel's bundled libraries (pcapy_ng.libs)
            if not (d / libs.name).exists():
                (d / libs.name).symlink_to(libs)
        if mod == "yaml" and (path.parent / "_yaml").exists():
            (d / "_yaml").symlink_to(path.parent / "_yaml")
    assert not (d / "sensor").exists()
    return d


def _pip(py: Path, *args: str, env: dict[str, str], cwd: Path) -> None:
    cp = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr


def _clean_env(**extra: str) -> dict[str, str]:
    # the venv's own settings (PYTHONPATH, SETUPTOOLS_USE_DISTUTILS, ...) stay out of the system interpreter
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "SETUPTOOLS_"))}
    env.update(extra)
    return env


def _rules_list(exe: Path, env: dict[str, str], cwd: Path, *args: str) -> list[dict]:
    cp = subprocess.run(
        [str(exe), "rules", "list", "--format", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr
    return json.loads(cp.stdout)


def _check_installed(exe: Path, site: Path, env: dict[str, str], cwd: Path) -> None:
    rows = _rules_list(exe, env, cwd)
    assert {r["id"] for r in rows} == RULE_IDS
    # the installed copy's own file, not the checkout's
    assert {Path(r["source"]) for r in rows} == {site / "sensor_rules" / SHIPPED}
    examples = site / "sensor_rules" / "examples"
    for name in EXAMPLES:  # each example filter, applied to the installed rules
        rows = _rules_list(exe, env, cwd, "--filters", str(examples / name))
        assert {r["id"] for r in rows} == RULE_IDS
        (f,) = [f for r in rows for f in r["filters"]]
        assert f["source"] == str(examples / name), f"{name}: the filter was not loaded"
    for name in ("README.md", "config/partner_hostnames.yaml", "config/vpn_cgnat.yaml"):
        assert (examples / name).is_file(), f"examples/{name} not installed"


def test_pip_install_user_finds_the_shipped_rules(tmp_path):
    py = _system_python()
    src, deps = _sources(tmp_path), _deps(tmp_path)
    home = tmp_path / "home"
    base = home / ".local"
    env = _clean_env(HOME=str(home), PYTHONUSERBASE=str(base), PIP_BREAK_SYSTEM_PACKAGES="1")
    _pip(py, "--user", str(src), env=env, cwd=tmp_path)
    ver = subprocess.run(
        [str(py), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    site = base / "lib" / f"python{ver}" / "site-packages"
    assert (site / "sensor_rules" / SHIPPED).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_env = _clean_env(HOME=str(home), PYTHONUSERBASE=str(base), PYTHONPATH=str(deps))
    exe = base / "bin" / "xfer-sensor"
    _check_installed(exe, site, run_env, elsewhere)
    # another package's rules/ beside the installed package is never taken
    decoy = site / "rules"
    decoy.mkdir()
    (decoy / "other.yml").write_text("title: not ours\nid: x\ndetection: {}\n")
    _check_installed(exe, site, run_env, elsewhere)
    # nor a checkout-like folder: no pyproject.toml beside the installed sensor/
    assert not (site / "pyproject.toml").exists()


def test_venv_install_finds_the_shipped_rules(tmp_path):
    py = _system_python()
    src, deps = _sources(tmp_path), _deps(tmp_path)
    venv = tmp_path / "venv"
    # the system's setuptools, wheel and pip (offline); a non-editable install into the venv
    subprocess.run(
        [str(py), "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, env=_clean_env()
    )
    vpy = venv / "bin" / "python"
    env = _clean_env(HOME=str(tmp_path / "home"))
    _pip(vpy, str(src), env=env, cwd=tmp_path)
    site = Path(
        subprocess.run(
            [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=_clean_env(),
        ).stdout.strip()
    )
    assert site.is_relative_to(venv)
    assert not (site / "sensor_rules" / "__init__.py").is_symlink()  # a copy, not a link to the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _check_installed(venv / "bin" / "xfer-sensor", site, _clean_env(PYTHONPATH=str(deps)), elsewhere)


@pytest.mark.parametrize("layout", ["site-packages", "checkout"])
def test_default_rules_dir_never_takes_a_folder_beside_the_package(tmp_path, layout):
    """In-process, with a copy of the package: a ``rules/`` beside it counts only in a source
    checkout (pyproject.toml and rules/__init__.py beside sensor/)."""
    root = tmp_path / layout
    shutil.copytree(REPO / "sensor", root / "sensor", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "rules").mkdir()
    (root / "rules" / SHIPPED).write_text("# another package's file of the same name\n")
    if layout == "checkout":
        (root / "pyproject.toml").write_text("")
        (root / "rules" / "__init__.py").write_text("")
    code = "from sensor.detect.rules import default_rules_dir; print(default_rules_dir())"
    cp = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_clean_env(), "PYTHONPATH": str(root)},
        timeout=60,
        check=True,
    )
    got = Path(cp.stdout.strip())
    if layout == "checkout":
        assert got == root / "rules"
    else:
        assert got != root / "rules"
