"""deploy/Dockerfile, read structurally (no docker build: the daemon and the network may be absent):
a non-root numeric user that matches the pods, and the entrypoint the Deployment runs."""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from tests.deploy.manifests import CONFIG_PATH, DEPLOY, one, supervisor_container
from tests.support import ROOT

DOCKERFILE = DEPLOY / "Dockerfile"


class Instruction(NamedTuple):
    keyword: str
    argument: str


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    found = []
    for line in logical.splitlines():
        if line.strip():
            keyword, _, argument = line.strip().partition(" ")
            found.append(Instruction(keyword.upper(), argument.strip()))
    return found


def final_stage() -> list[Instruction]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, step in enumerate(steps) if step.keyword == "FROM")
    return steps[last_from:]


def last(stage: list[Instruction], keyword: str) -> str:
    (*_, found) = [step.argument for step in stage if step.keyword == keyword]
    return found


def test_the_image_runs_as_a_numeric_non_root_user_matching_the_pods(rendered):
    user = last(final_stage(), "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER must be numeric (runAsNonRoot cannot check a name): {user}"
    uid, _, gid = user.partition(":")
    assert int(uid) != 0
    for name, manifests in rendered.items():
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsUser"] == int(uid), name
        assert pod.get("runAsGroup", int(gid or uid)) == int(gid or uid), name


def test_the_entrypoint_is_the_deployments_command_in_exec_form(rendered):
    entrypoint = last(final_stage(), "ENTRYPOINT")
    assert entrypoint.startswith("["), "shell form would make /bin/sh PID 1, and it does not forward SIGTERM"
    assert json.loads(entrypoint) == supervisor_container(rendered["prod"])["command"]
    assert not [step for step in final_stage() if step.keyword == "CMD"]


def test_the_image_listens_where_the_pods_expect(rendered):
    (port,) = supervisor_container(rendered["prod"])["ports"]
    assert last(final_stage(), "EXPOSE") == str(port["containerPort"])
    copies = [step.argument.split() for step in final_stage() if step.keyword == "COPY"]
    assert ["deploy/base/config.toml", CONFIG_PATH] in copies, "the image carries a default config.toml"


def test_every_copy_source_exists_in_the_build_context():
    """The build context is the repository root: docker build -f deploy/Dockerfile ."""
    for step in instructions(DOCKERFILE.read_text()):
        if step.keyword in ("COPY", "ADD") and "--from=" not in step.argument:
            *sources, _destination = step.argument.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{step.keyword} {source}: not in the repository"
