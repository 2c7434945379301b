"""What schemas cannot check: the manifests agree with config.toml, with each other, and with the
restricted Pod Security profile. Each test runs once per overlay unless it names one."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

from task_supervisor.config import default_node_name
from tests.deploy.manifests import (
    CONFIG_PATH,
    DEPLOY,
    SECRET_NAME,
    Manifest,
    all_of,
    config_toml,
    load_rendered_config,
    memory_bytes,
    mount_for,
    one,
    pod_templates,
    render,
    resolve_port,
    selects,
    supervisor_container,
    volume,
)

# After graceful_timeout the supervisor kills what is left, records those rows as lost (database
# work bounded by 2 s timeouts, retried) and exits: the kubelet must not SIGKILL it before that.
GRACE_MARGIN_SECONDS = 15
# The supervisor process and the scheduler child, on top of the pools' children.
SUPERVISOR_MEMORY_BYTES = 192 * 2**20
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
ALL_INTERFACES = ("0.0.0.0", "::", "[::]")
POD_NAME_SUFFIX = "5d4f8b7c9d-x2k4p"  # what a Deployment appends: pod-template-hash and 5 random characters


def deployment_pod(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "Deployment")["spec"]["template"]


def job_pod(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "Job")["spec"]["template"]


# -- the supervisor's command and config ----------------------------------------------------------


def test_the_supervisor_is_the_containers_entrypoint(manifests):
    container = supervisor_container(manifests)
    assert container["command"] == ["task-supervisor", "run", "-c", CONFIG_PATH]
    assert "args" not in container


def test_config_toml_is_a_hash_suffixed_configmap_mounted_read_only(manifests):
    (configmap,) = all_of(manifests, "ConfigMap")
    assert re.fullmatch(r"task-supervisor-config-[a-z0-9]{10}", configmap["metadata"]["name"])
    pod = deployment_pod(manifests)["spec"]
    mount = mount_for(supervisor_container(manifests), CONFIG_PATH.rpartition("/")[0])
    assert mount.get("readOnly") is True
    assert volume(pod, mount["name"])["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_toml(manifests) == (DEPLOY / "base" / "config.toml").read_text()


def test_a_config_change_rolls_the_pods(tmp_path: Path, rendered):
    """A new ConfigMap name changes the pod template, so the Deployment rolls out new pods."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    config = copy / "base" / "config.toml"
    config.write_text(config.read_text().replace('graceful_timeout = "60s"', 'graceful_timeout = "50s"'))
    before, after = rendered["prod"], render(copy / "overlays" / "prod")
    assert one(before, "ConfigMap")["metadata"]["name"] != one(after, "ConfigMap")["metadata"]["name"]
    assert deployment_pod(before) != deployment_pod(after)


def test_every_replica_gets_its_own_node_name():
    """A node set in the shared ConfigMap would make all replicas one node: each must default to
    its hostname, the pod's name."""
    raw = tomllib.loads((DEPLOY / "base" / "config.toml").read_text())
    assert "node" not in raw.get("supervisor", {})


def test_pod_names_survive_as_node_names(manifests):
    """The default node name is the hostname, shortened if long: the shortening must not cut off the
    part of a pod's name that differs between replicas (ReplicaSet hash and random suffix)."""
    pod_name = f"{one(manifests, 'Deployment')['metadata']['name']}-{POD_NAME_SUFFIX}"
    assert default_node_name(pod_name) == pod_name


# -- grace period, probes, memory -----------------------------------------------------------------


def test_the_grace_period_outlasts_the_drain(manifests):
    config = load_rendered_config(manifests)
    grace = deployment_pod(manifests)["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config.supervisor.graceful_timeout + GRACE_MARGIN_SECONDS, (
        f"terminationGracePeriodSeconds {grace} must be at least graceful_timeout "
        f"({config.supervisor.graceful_timeout:g}s) + {GRACE_MARGIN_SECONDS}s."
    )


def test_probes_reach_the_configured_listener(manifests):
    host, _, port = load_rendered_config(manifests).supervisor.http.rpartition(":")
    assert host in ALL_INTERFACES, f"http must listen on all interfaces for the kubelet, not {host!r}"
    container = supervisor_container(manifests)
    expected_paths = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected_paths.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert resolve_port(container, check["port"]) == int(port), probe
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]


def test_the_memory_limit_covers_every_pool_at_its_maximum(manifests):
    config = load_rendered_config(manifests)
    unbounded = [name for name, pool in config.pools.items() if pool.max_memory is None]
    assert not unbounded, f"pools without max_memory cannot be sized: {unbounded}"
    children = sum(pool.max_processes * (pool.max_memory or 0) for pool in config.pools.values())
    resources = supervisor_container(manifests)["resources"]
    limit = memory_bytes(resources["limits"]["memory"])
    assert limit >= children + SUPERVISOR_MEMORY_BYTES, (
        f"memory limit {resources['limits']['memory']} is below the pools' {children / 2**20:g}MiB "
        f"+ {SUPERVISOR_MEMORY_BYTES / 2**20:g}MiB for the supervisor and scheduler."
    )
    assert memory_bytes(resources["requests"]["memory"]) <= limit
    assert resources["requests"]["cpu"]


# -- the database Secret ---------------------------------------------------------------------------


def test_the_database_url_comes_from_the_uncommitted_secret(manifests):
    for owner, template in pod_templates(manifests):
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET_NAME, "url"), owner
            assert ref.get("optional") is not True, owner
            literal = [e["name"] for e in env.values() if "://" in str(e.get("value", ""))]
            assert not literal, f"{owner}: URLs belong in the Secret, not in {literal}"


def test_the_migration_job_runs_the_deployments_image(manifests):
    (job,) = job_pod(manifests)["spec"]["containers"]
    assert job["image"] == supervisor_container(manifests)["image"]
    assert job["command"][-2:] == ["migrate", "--no-input"]
    assert job_pod(manifests)["spec"]["restartPolicy"] in ("Never", "OnFailure")


# -- labels, selectors, namespace ------------------------------------------------------------------


def test_every_object_carries_the_recommended_labels(manifests):
    for manifest in manifests:
        labels = manifest["metadata"].get("labels", {})
        missing = [key for key in COMMON_LABELS if key not in labels]
        assert not missing, f"{manifest['kind']}/{manifest['metadata']['name']} lacks {missing}"
    for owner, template in pod_templates(manifests):
        labels = template["metadata"]["labels"]
        assert all(key in labels for key in (*COMMON_LABELS, "app.kubernetes.io/component")), owner


def test_selectors_match_the_pods_they_mean(manifests):
    deployment = one(manifests, "Deployment")
    workers = deployment_pod(manifests)["metadata"]["labels"]
    migration = job_pod(manifests)["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], workers)
    pdb = one(manifests, "PodDisruptionBudget")["spec"]["selector"]
    assert selects(pdb, workers) and not selects(pdb, migration)
    policy = one(manifests, "NetworkPolicy")["spec"]["podSelector"]
    assert selects(policy, workers) and selects(policy, migration)
    for spread in deployment_pod(manifests)["spec"].get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"], workers)


def test_everything_lands_in_one_namespace(manifests):
    namespaces = {m["metadata"].get("namespace") for m in manifests}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


# -- security --------------------------------------------------------------------------------------


def test_pods_meet_the_restricted_security_profile(manifests):
    for owner, template in pod_templates(manifests):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, owner
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), owner
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, owner
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0, owner
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        assert not any("hostPath" in v for v in pod.get("volumes", [])), owner
        for container in pod["containers"] + pod.get("initContainers", []):
            assert_restricted_container(f"{owner} {container['name']}", container)


def assert_restricted_container(where: str, container: Manifest) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False, where
    assert context["readOnlyRootFilesystem"] is True, where
    assert context.get("privileged") is not True, where
    assert context["capabilities"] == {"drop": ["ALL"]}, where
    assert context.get("runAsUser", 1) != 0, where


def test_a_read_only_root_has_a_writable_tmp(manifests):
    for owner, template in pod_templates(manifests):
        (container,) = template["spec"]["containers"]
        tmp = volume(template["spec"], mount_for(container, "/tmp")["name"])
        assert "emptyDir" in tmp and tmp["emptyDir"].get("sizeLimit"), owner


# -- network -----------------------------------------------------------------------------------------


def test_the_network_policy_allows_only_dns_postgresql_and_the_http_port(manifests):
    spec = one(manifests, "NetworkPolicy")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    egress = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}
    assert all(rule.get("ports") for rule in spec["egress"]), "an egress rule without ports allows any port"
    http_port = supervisor_container(manifests)["ports"][0]["containerPort"]
    ingress = {(p["port"], p["protocol"]) for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress == {(http_port, "TCP")}
