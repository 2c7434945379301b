"""deploy/ as Kubernetes sees it: overlays rendered by ``kubectl kustomize``, and lookups in them."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from task_supervisor.config import Config, load_config
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS_DIR = DEPLOY / "overlays"
KUBERNETES_VERSION = "1.30"
CONFIG_PATH = "/etc/task-supervisor/config.toml"  # where the Deployment's command reads config.toml
SECRET_NAME = "task-supervisor-database"  # created out of band, never rendered
POD_OWNERS = ("Deployment", "Job")

Manifest = dict[str, Any]


def overlay_names() -> list[str]:
    """Every folder under deploy/overlays with a kustomization, so a new overlay is tested too."""
    return sorted(path.parent.name for path in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test (CI runs on this machine: a skip would hide it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; tests/deploy need it (it is installed on the project's machines).")
    return path


def render(kustomization_dir: Path) -> list[Manifest]:
    """The objects ``kubectl kustomize`` renders from a kustomization folder."""
    import yaml

    done = subprocess.run(
        [require_tool("kubectl"), "kustomize", str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {kustomization_dir} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def all_of(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    (found,) = all_of(manifests, kind)
    return found


def pod_templates(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(owner "Kind/name", pod template) of every object that runs pods."""
    for manifest in manifests:
        if manifest["kind"] in POD_OWNERS:
            yield f"{manifest['kind']}/{manifest['metadata']['name']}", manifest["spec"]["template"]


def supervisor_container(manifests: list[Manifest]) -> Manifest:
    (container,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def volume(pod_spec: Manifest, name: str) -> Manifest:
    (found,) = [v for v in pod_spec.get("volumes", []) if v["name"] == name]
    return found


def mount_for(container: Manifest, path: str) -> Manifest:
    (found,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    return found


def config_toml(manifests: list[Manifest]) -> str:
    """The config.toml the Deployment's command reads: the ConfigMap mounted where -c points."""
    deployment = one(manifests, "Deployment")
    container = supervisor_container(manifests)
    directory, _, filename = CONFIG_PATH.rpartition("/")
    source = volume(deployment["spec"]["template"]["spec"], mount_for(container, directory)["name"])
    name = source["configMap"]["name"]
    (configmap,) = [m for m in all_of(manifests, "ConfigMap") if m["metadata"]["name"] == name]
    return configmap["data"][filename]


def load_rendered_config(manifests: list[Manifest]) -> Config:
    """config.toml from the rendered ConfigMap, through the supervisor's own loader."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text(config_toml(manifests))
        return load_config(path)


def resolve_port(container: Manifest, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(quantity: str | int) -> int:
    """Bytes of a Kubernetes memory quantity such as "384Mi", "1Gi" or "500M"."""
    match = _QUANTITY.fullmatch(str(quantity))
    assert match, f"unsupported memory quantity {quantity!r}"
    number, suffix = match.groups()
    return int(float(number) * {**_BINARY, **_DECIMAL}.get(suffix or "", 1))


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (the only form deploy/ uses) selects these labels."""
    assert set(selector) == {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return selector["matchLabels"].items() <= labels.items()
