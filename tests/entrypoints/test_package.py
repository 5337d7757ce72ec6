"""A non-editable install works: the wheel carries the schemas as package data and the codec reads them from
the installed copy (not from a checkout next to it)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.entrypoints.conftest import REPO_ROOT


def test_a_wheel_install_ships_the_schemas_and_the_codec_loads_them(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(REPO_ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("campaigns-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("schemas/") and n.endswith(".avsc")}
    assert {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "schemas").rglob("*.avsc")} == shipped
    # The dashboard's pages, scripts and style ship with the API server (api/static, package data).
    assert {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "api" / "static").iterdir()} <= set(names)
    assert "api/campaign-payload.schema.json" in names  # the create payload's schema in /openapi.json

    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    probe = ("import campaigns.codec as c, schemas; "
             "print(c.__file__); print(c.default_schema_dir()); print(len(c.get_codec().record_names))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    module, schema_dir, records = run.stdout.split()
    assert module.startswith(str(target)) and schema_dir.startswith(str(target)), run.stdout
    assert int(records) == len(list((REPO_ROOT / "schemas").glob("*.avsc")))
