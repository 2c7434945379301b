"""The built wheel installs task_supervisor (and task_supervisor.scheduler) in a clean venv,
and neither folder name leaks out as an import name of its own."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from tests.support import ROOT


def test_wheel_installs_and_imports_in_a_clean_venv(tmp_path: Path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("task_supervisor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "task_supervisor/migrations/0001_initial.py" in names
    assert "task_supervisor/scheduler/__init__.py" in names
    assert "task_supervisor/scheduler/timing.py" in names
    assert "task_supervisor/workflows/handover.py" in names
    assert "task_supervisor/templates/admin/task_supervisor/schedulerun/change_list.html" in names
    assert "task_supervisor/templates/admin/task_supervisor/dashboard/index.html" in names
    assert "task_supervisor/static/task_supervisor/dashboard.js" in names  # the dashboard needs no CDN
    assert not [n for n in names if n.startswith(("supervisor/", "scheduler/"))]

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=300)
    probe = (
        "import importlib.util, task_supervisor, task_supervisor.scheduler.timing, task_supervisor.cli;"
        "assert importlib.util.find_spec('supervisor') is None;"
        "assert importlib.util.find_spec('scheduler') is None;"
        "print(task_supervisor.__version__)"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == __import__("task_supervisor").__version__
    version = subprocess.run([str(env_dir / "bin" / "task-supervisor"), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("task-supervisor ")
