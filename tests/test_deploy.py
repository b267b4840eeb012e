"""`deploy/`: the container image definition and the Kubernetes manifests of the three modes.

Every kustomization is rendered (`tests.support.kustomize`, no kustomize binary needed) and each
resource is validated offline against the Kubernetes schemas bundled with `kubernetes-validate`,
for the version the manifests target. Then the manifests are held to what the program does: the
ConfigMap's config passes `check-config` with the Secret supplied the way the Deployment supplies
it, probes and ports point at routes and ports the gateway serves, the drain fits the grace
period, and the Dockerfile runs the `chatkit-gateway serve` the package installs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import tomli_w

from gateway import allocator
from gateway.app import create_app
from gateway.cli import build_parser
from gateway.config import GatewayConfig, build_config
from gateway.server import UVICORN_FINAL_SECONDS
from tests.support.gateway import RunningGateway
from tests.support.kustomize import KustomizeError, render
from tests.support.procs import PROJECT_ROOT, free_port

DEPLOY = PROJECT_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # SPEC 10: the manifests target Kubernetes 1.33
KUSTOMIZATIONS = ["base", "overlays/sidecar", "overlays/gateway", "overlays/forward-auth"]
OVERLAYS = KUSTOMIZATIONS[1:]
# Custom resources kubernetes-validate has no schema for: checked structurally, and by the
# wiring tests below, instead.
CUSTOM_KINDS = {("gateway.networking.k8s.io/v1", "HTTPRoute"), ("traefik.io/v1alpha1", "Middleware")}
IDENTITY_HEADERS = ["X-User-Id", "X-User-Email", "X-Auth-Request-User", "X-Auth-Request-Email"]
GATEWAY_CONTAINER = "gateway"
IMAGE_UID = 10001
# gateway/runtime.py `drain`: streams still open when the grace is over get this long to end.
STREAM_END_SECONDS = 2


# -- rendering and lookups -----------------------------------------------------------------------


@cache
def rendered(kustomization: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(KUBERNETES / kustomization))


def resources(kustomization: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in rendered(kustomization) if r["kind"] == kind]


def one(kustomization: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources(kustomization, kind) if name is None or r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kustomization}: {kind} {name}: {[r['metadata']['name'] for r in found]}"
    return found[0]


def gateway_deployment(kustomization: str) -> dict[str, Any]:
    return one(kustomization, "Deployment", "chatkit-gateway")


def pod_spec(kustomization: str) -> dict[str, Any]:
    spec: dict[str, Any] = gateway_deployment(kustomization)["spec"]["template"]["spec"]
    return spec


def container(kustomization: str, name: str = GATEWAY_CONTAINER) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(kustomization)["containers"] if c["name"] == name]
    return found


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return values | dict(secret.get("stringData", {}))


def materialize_mounts(kustomization: str, root: Path) -> dict[str, str]:
    """The gateway container's ConfigMap and Secret volumes written under `root`, as mounted;
    returns each mountPath -> local directory."""
    volumes = {v["name"]: v for v in pod_spec(kustomization)["volumes"]}
    mounts: dict[str, str] = {}
    for mount in container(kustomization).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            files = one(kustomization, "ConfigMap", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            files = secret_values(one(kustomization, "Secret", volume["secret"]["secretName"]))
        else:
            continue
        local = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        for key, value in files.items():
            (local / key).write_text(value, encoding="utf-8")
        mounts[mount["mountPath"]] = str(local)
    return mounts


def container_environment(kustomization: str, mounts: dict[str, str]) -> dict[str, str]:
    """The gateway container's environment, secrets resolved, mounted paths mapped to `mounts`."""
    env: dict[str, str] = {}
    for entry in container(kustomization).get("env", []):
        if "value" in entry:
            value = entry["value"]
            for mount_path, local in mounts.items():
                if value.startswith(mount_path + "/"):
                    value = local + value[len(mount_path) :]
            env[entry["name"]] = value
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret_values(one(kustomization, "Secret", ref["name"]))[ref["key"]]
    return env


@cache
def effective_config(kustomization: str, tmp_root: str) -> dict[str, Any]:
    """`python -m gateway check-config` on the ConfigMap's config, run the way the Deployment runs
    the gateway; its JSON output (secrets redacted)."""
    root = Path(tmp_root) / kustomization.replace("/", "_")
    mounts = materialize_mounts(kustomization, root)
    env = container_environment(kustomization, mounts)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_GATEWAY")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", env["CHATKIT_GATEWAY_CONFIG"]],
        cwd=PROJECT_ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{kustomization}: check-config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("deploy-config")
    yield {k: effective_config(k, str(root)) for k in KUSTOMIZATIONS}


def named_port(spec_container: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec_container.get("ports", []) if p.get("name") == port]
    return int(number)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- the manifests are valid Kubernetes 1.33 -----------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_resource_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    for resource in rendered(kustomization):
        assert {"apiVersion", "kind", "metadata"} <= set(resource)
        assert resource["metadata"].get("name"), resource
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            assert isinstance(resource.get("spec"), dict) and resource["spec"], resource
            continue
        where = f"{kustomization}: {resource['kind']}/{resource['metadata']['name']}"
        try:
            version = kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message} (add it to CUSTOM_KINDS only if it is a CRD)")
        # The schemas of exactly the targeted minor version were used, not an older fallback.
        assert version == "1.33", where


def test_the_custom_kinds_skipped_by_schema_validation_are_all_used() -> None:
    used = {(r["apiVersion"], r["kind"]) for k in KUSTOMIZATIONS for r in rendered(k)}
    assert CUSTOM_KINDS <= used


def test_the_renderer_refuses_kustomization_fields_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nimages:\n  - name: x\n    newTag: '2'\n")
    with pytest.raises(KustomizeError, match="images"):
        render(tmp_path)


def test_each_overlay_rolls_its_pods_when_its_config_changes() -> None:
    names = set()
    for kustomization in KUSTOMIZATIONS:
        volume = next(v for v in pod_spec(kustomization)["volumes"] if "configMap" in v)
        config_map = one(kustomization, "ConfigMap")
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]
        assert config_map["metadata"]["name"].startswith("chatkit-gateway-config-")
        names.add((config_map["metadata"]["name"], config_map["data"]["config.toml"]))
    # Base, sidecar and gateway each have their own config; forward-auth reuses the gateway's.
    assert len(names) == 3


# -- the config in the ConfigMap is one the gateway accepts, as the Deployment runs it --------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_configmap_config_passes_check_config_with_the_deployments_environment(
    kustomization: str, configs: dict[str, dict[str, Any]]
) -> None:
    config = configs[kustomization]
    assert config["server"]["host"] == "0.0.0.0"
    # The identity secret arrived from the Secret through its _FILE variable.
    assert config["upstream"]["identity_secret"] == "<redacted>"
    env = {e["name"]: e.get("value") for e in container(kustomization)["env"]}
    config_path = Path(env["CHATKIT_GATEWAY_CONFIG"])
    mount = next(m for m in container(kustomization)["volumeMounts"] if m["name"] == "config")
    assert str(config_path.parent) == mount["mountPath"] and mount.get("readOnly") is True
    assert config_path.name in one(kustomization, "ConfigMap")["data"]


def test_the_gateway_overlay_shares_its_limits_through_redis(configs: dict[str, dict[str, Any]]) -> None:
    for kustomization in ("overlays/gateway", "overlays/forward-auth"):
        ratelimit = configs[kustomization]["ratelimit"]
        assert ratelimit["backend"] == "redis"
        assert ratelimit["redis_url"] == "<redacted>"
        ownership = configs[kustomization]["ownership"]
        assert ownership["store"] == "redis"
        assert ownership["redis_url"] == "<redacted>"


def test_the_secret_holds_clearly_marked_placeholders() -> None:
    for kustomization in KUSTOMIZATIONS:
        values = secret_values(one(kustomization, "Secret", "chatkit-gateway-secrets"))
        assert set(values) == {"identity-secret", "redis-url"}
        assert all("REPLACE-ME" in value for value in values.values())


# -- probes, ports and routes match what the gateway serves --------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_and_ports_match_the_routes_and_port_the_gateway_serves(
    kustomization: str, configs: dict[str, dict[str, Any]]
) -> None:
    config = configs[kustomization]
    app = create_app(app_config(config))
    routes = {route.path: route for route in app.router.routes}  # type: ignore[attr-defined]
    gateway = container(kustomization)
    port = config["server"]["port"]
    assert [p["containerPort"] for p in gateway["ports"]] == [port]

    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
    for probe, path in expected.items():
        get = gateway[probe]["httpGet"]
        assert get["path"] == path, probe
        assert path in routes and "GET" in (routes[path].methods or ()), path  # type: ignore[attr-defined]
        assert named_port(gateway, get["port"]) == port, probe

    # The Service exposes the gateway's port and nothing else.
    service = one(kustomization, "Service", "chatkit-gateway")
    labels = gateway_deployment(kustomization)["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], labels)
    assert [service_target(kustomization, "chatkit-gateway", p["port"]) for p in service["spec"]["ports"]] == [port]


def app_config(effective: dict[str, Any]) -> GatewayConfig:
    """The effective config (as check-config printed it) without its redacted secrets: enough to
    build the app offline and read its routes."""
    data = {section: dict(values) for section, values in effective.items()}
    data["upstream"].pop("identity_secret", None)
    data["ratelimit"] = {"backend": "memory"}
    data["ownership"] = {"store": "memory"}
    return build_config(data)


def service_target(kustomization: str, name: str, port: dict[str, Any] | int | str) -> int:
    """The container port reached through Service `name` at `port` (a number, a port name, or an
    Ingress `{name: ...}` / `{number: ...}`), following targetPort into the pods it selects."""
    service = one(kustomization, "Service", name)
    if isinstance(port, dict):
        port = port.get("number", port.get("name", ""))
    (entry,) = [e for e in service["spec"]["ports"] if port in (e["port"], e.get("name"))]
    pods = [
        d["spec"]["template"]["spec"]
        for d in resources(kustomization, "Deployment")
        if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(pods) == 1, f"{kustomization}: Service {name} selects {len(pods)} Deployments"
    target = entry.get("targetPort", entry["port"])
    if isinstance(target, int):
        return target
    (number,) = [
        p["containerPort"] for c in pods[0]["containers"] for p in c.get("ports", []) if p.get("name") == target
    ]
    return int(number)


@pytest.mark.parametrize("kustomization", ["overlays/gateway", "overlays/forward-auth"])
def test_the_ingress_routes_the_chatkit_paths_with_stream_friendly_annotations(
    kustomization: str, configs: dict[str, dict[str, Any]]
) -> None:
    server = configs[kustomization]["server"]
    ingress = one(kustomization, "Ingress", "chatkit-gateway")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-buffering"] == "off"
    assert notes[prefix + "proxy-request-buffering"] == "off"
    assert int(notes[prefix + "proxy-read-timeout"]) >= 3600
    assert int(notes[prefix + "proxy-send-timeout"]) >= 3600
    size = notes[prefix + "proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 >= server["max_upload_bytes"]

    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == "chatkit-gateway"
        assert service_target(kustomization, "chatkit-gateway", backend["port"]) == server["port"]
    prefixes = [p["path"] for p in paths if p["pathType"] == "Prefix"]
    for served in (server["chatkit_path"], server["uploads_path"] + "file"):
        assert any(served == p or served.startswith(p.rstrip("/") + "/") for p in prefixes), served
    assert {"path": "/chatkit-gateway.js", "pathType": "Exact"}.items() <= next(
        p for p in paths if p["path"] == "/chatkit-gateway.js"
    ).items()


def gateway_api_seconds(duration: str) -> float:
    """A Gateway API Duration (GEP-2257: `1h`, `30m`, `90s`, `500ms`, combined) in seconds."""
    assert re.fullmatch(r"([0-9]{1,5}(h|m|s|ms)){1,4}", duration), duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", duration))


@pytest.mark.parametrize("kustomization", ["overlays/gateway", "overlays/forward-auth"])
def test_the_httproute_reaches_the_gateway_service_with_long_timeouts(
    kustomization: str, configs: dict[str, dict[str, Any]]
) -> None:
    route = one(kustomization, "HTTPRoute")
    assert route["spec"]["parentRefs"] and all(ref.get("name") for ref in route["spec"]["parentRefs"])
    for rule in route["spec"]["rules"]:
        assert gateway_api_seconds(rule["timeouts"]["request"]) >= 3600
        assert gateway_api_seconds(rule["timeouts"]["backendRequest"]) >= 3600
        for ref in rule["backendRefs"]:
            assert ref["name"] == "chatkit-gateway"
            assert (
                service_target(kustomization, "chatkit-gateway", ref["port"])
                == configs[kustomization]["server"]["port"]
            )
    matched = [m["path"] for rule in route["spec"]["rules"] for m in rule["matches"]]
    assert {"type": "PathPrefix", "value": configs[kustomization]["server"]["chatkit_path"]} in matched


# -- drain, security context, resources ----------------------------------------------------------


def prestop_sleep_seconds(gateway: dict[str, Any]) -> float:
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"], command  # the image has python, no curl
    match = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert match, command
    return float(match.group(1))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_grace_period_covers_prestop_drain_and_shutdown(
    kustomization: str, configs: dict[str, dict[str, Any]]
) -> None:
    grace = configs[kustomization]["server"]["shutdown_grace_seconds"]
    sleep = prestop_sleep_seconds(container(kustomization))
    needed = sleep + grace + STREAM_END_SECONDS + UVICORN_FINAL_SECONDS
    assert pod_spec(kustomization)["terminationGracePeriodSeconds"] > needed
    assert sleep >= 1


def effective_security(pod: dict[str, Any], spec_container: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in pod.get("securityContext", {}).items() if k != "fsGroup"}
    return merged | spec_container.get("securityContext", {})


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_runs_locked_down_with_resources_and_a_writable_tmp_only(kustomization: str) -> None:
    for deployment in resources(kustomization, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for spec_container in pod["containers"]:
            where = f"{kustomization}: {deployment['metadata']['name']}/{spec_container['name']}"
            security = effective_security(pod, spec_container)
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser") == IMAGE_UID, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities") == {"drop": ["ALL"]}, where
            assert security.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(spec_container["resources"][kind]), where
            tmp = [m for m in spec_container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], where
            writable = [m for m in spec_container.get("volumeMounts", []) if not m.get("readOnly")]
            # The gateway also writes its ownership records (base/config.toml, [ownership]).
            allowed = {"/tmp", "/var/lib/chatkit-gateway"} if spec_container["name"] == "gateway" else {"/tmp"}
            assert all(m["mountPath"] in allowed for m in writable), where


def test_the_service_account_mounts_no_token() -> None:
    for kustomization in KUSTOMIZATIONS:
        account = one(kustomization, "ServiceAccount", "chatkit-gateway")
        assert account["automountServiceAccountToken"] is False
        assert pod_spec(kustomization)["serviceAccountName"] == "chatkit-gateway"


# -- the modes -------------------------------------------------------------------------------------


def test_the_sidecar_backend_listens_on_loopback_only(configs: dict[str, dict[str, Any]]) -> None:
    kustomization = "overlays/sidecar"
    others = [c for c in pod_spec(kustomization)["containers"] if c["name"] != GATEWAY_CONTAINER]
    assert len(others) == 1
    (backend,) = others
    argv = backend.get("command", []) + backend.get("args", [])
    host = argv[argv.index("--host") + 1]
    port = int(argv[argv.index("--port") + 1])
    assert host == "127.0.0.1"
    assert "0.0.0.0" not in argv and not backend.get("ports"), "the backend must not be reachable from outside"
    upstream = urlsplit(configs[kustomization]["upstream"]["url"])
    assert (upstream.hostname, upstream.port) == ("127.0.0.1", port)
    # Only the gateway's port is exposed.
    service = one(kustomization, "Service", "chatkit-gateway")
    assert len(service["spec"]["ports"]) == 1
    assert named_port(container(kustomization), service["spec"]["ports"][0]["targetPort"]) == 8080
    assert resources(kustomization, "NetworkPolicy") == [] and resources(kustomization, "Ingress") == []


@pytest.mark.parametrize("kustomization", ["overlays/gateway", "overlays/forward-auth"])
def test_the_gateway_overlay_scales_and_only_the_gateway_reaches_the_backend(
    kustomization: str, configs: dict[str, dict[str, Any]]
) -> None:
    deployment = gateway_deployment(kustomization)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    hpa = one(kustomization, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chatkit-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(kustomization, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    upstream = urlsplit(configs[kustomization]["upstream"]["url"])
    backend_service = one(kustomization, "Service", upstream.hostname)
    backend = one(kustomization, "Deployment", "chatkit-backend")
    backend_labels = backend["spec"]["template"]["metadata"]["labels"]
    assert selects(backend_service["spec"]["selector"], backend_labels)

    policy = one(kustomization, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], backend_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"} and selects(source["podSelector"]["matchLabels"], pod_labels)
    assert not selects(source["podSelector"]["matchLabels"], backend_labels)
    backend_port = service_target(kustomization, backend_service["metadata"]["name"], upstream.port or 80)
    assert [p["port"] for p in rule["ports"]] == [backend_port]


def test_forward_auth_is_wired_to_the_gateways_verify_endpoint(configs: dict[str, dict[str, Any]]) -> None:
    kustomization = "overlays/forward-auth"
    service = one(kustomization, "Service", "chatkit-gateway")
    namespace = service["metadata"]["namespace"]
    verify = f"http://chatkit-gateway.{namespace}.svc.cluster.local:{service['spec']['ports'][0]['port']}/auth/verify"
    routes = {route.path for route in create_app(app_config(configs[kustomization])).router.routes}  # type: ignore[attr-defined]
    assert "/auth/verify" in routes

    nginx = one(kustomization, "Ingress", "my-app-nginx")
    notes = nginx["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/auth-url"] == verify
    assert notes["nginx.ingress.kubernetes.io/auth-response-headers"].split(",") == IDENTITY_HEADERS

    middleware = one(kustomization, "Middleware")
    forward = middleware["spec"]["forwardAuth"]
    assert forward["address"] == verify
    assert forward["authResponseHeaders"] == IDENTITY_HEADERS
    assert forward.get("trustForwardHeader") is False
    traefik = one(kustomization, "Ingress", "my-app-traefik")
    reference = f"{middleware['metadata']['namespace']}-{middleware['metadata']['name']}@kubernetescrd"
    assert traefik["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"] == reference
    assert traefik["metadata"]["namespace"] == middleware["metadata"]["namespace"]

    # Cookie requests for the protected app carry its origin: the gateway must allow it.
    allowed = configs[kustomization]["security"]["allowed_origins"]
    for ingress in (nginx, traefik):
        for rule in ingress["spec"]["rules"]:
            assert f"https://{rule['host']}" in allowed


# -- the container image -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    result = []
    for line in lines:
        instruction, _, arguments = line.strip().partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    starts = [i for i, (name, _) in enumerate(instructions) if name == "FROM"]
    assert len(starts) >= 2, "multi-stage: a build stage and a runtime stage"
    return instructions[starts[-1] :]


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in stage:
        if name == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(arguments)))
    return env


def test_the_image_runs_chatkit_gateway_serve_as_the_package_installs_it() -> None:
    stage = final_stage()
    entrypoint = [json.loads(a) for n, a in stage if n == "ENTRYPOINT"]
    command = [json.loads(a) for n, a in stage if n == "CMD"]
    assert entrypoint == [["chatkit-gateway"]]
    assert command == [["serve"]]
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["chatkit-gateway"] == "gateway.cli:main"
    assert build_parser().parse_args(command[0]).command == "serve"
    # The Deployment keeps the entrypoint and passes the same command.
    for kustomization in KUSTOMIZATIONS:
        gateway = container(kustomization)
        assert "command" not in gateway and gateway["args"] == command[0]


def test_the_image_is_slim_non_root_read_only_friendly_and_configured_from_a_mounted_file() -> None:
    instructions = dockerfile_instructions()
    stage = final_stage()
    bases = {a for n, a in instructions if n == "ARG" and a.startswith("PYTHON_IMAGE=")}
    assert len(bases) == 1 and re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", bases.pop())
    installs = [a for n, a in instructions if n == "RUN" and "pip install" in a]
    assert any("--no-deps" in a and "-r requirements/runtime.lock" in a for a in installs)
    assert any("pip install --no-deps ." in a for a in installs)
    assert any(n == "RUN" and "compileall" in a for n, a in stage)

    users = [a for n, a in stage if n == "USER"]
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"]
    assert [a for n, a in stage if n == "EXPOSE"] == ["8080"]
    env = image_env(stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["CHATKIT_GATEWAY__SERVER__HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/chatkit-gateway/bin:")
    assert env["CHATKIT_GATEWAY_CONFIG"] == "/etc/chatkit-gateway/config.toml"
    for kustomization in KUSTOMIZATIONS:
        deployment_env = {e["name"]: e.get("value") for e in container(kustomization)["env"]}
        assert deployment_env["CHATKIT_GATEWAY_CONFIG"] == env["CHATKIT_GATEWAY_CONFIG"]
    (healthcheck,) = [a for n, a in stage if n == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["python", "/opt/chatkit-gateway/healthcheck.py"]')


def test_the_image_runs_the_gateway_on_jemalloc_with_the_gateways_settings() -> None:
    stage = final_stage()
    env = image_env(stage)
    library = env["LD_PRELOAD"]
    assert env == {**env, **allocator.jemalloc_environment(library)}
    # Installed and linked at that path before the environment preloads it.
    (install,) = [i for i, (n, a) in enumerate(stage) if n == "RUN" and "libjemalloc2" in a]
    assert "ln -s " in stage[install][1] and stage[install][1].rstrip().endswith(f"test -f {library}")
    preloads = [i for i, (n, a) in enumerate(stage) if n == "ENV" and "LD_PRELOAD=" in a]
    assert preloads and min(preloads) > install


def test_every_file_the_image_copies_exists_and_is_in_the_build_context() -> None:
    ignore = (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    admitted = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    assert "*" in ignore, "the context is an allowlist"
    for name, arguments in dockerfile_instructions():
        if name != "COPY" or arguments.startswith("--from"):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            path = source.rstrip("/")
            assert (PROJECT_ROOT / path).exists(), source
            assert any(path == a or path.startswith(a + "/") for a in admitted), f"{source} is not in .dockerignore"


def test_the_healthcheck_passes_against_a_serving_gateway_and_fails_without_one(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
        config = dict(gateway.config) | {"server": dict(gateway.config["server"]) | {"port": port}}
        path = tmp_path / f"config-{port}.toml"
        path.write_text(tomli_w.dumps(config), encoding="utf-8")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATKIT_GATEWAY")}
        return subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py")],
            env=clean | {"CHATKIT_GATEWAY_CONFIG": str(path)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    serving = healthcheck(gateway.config["server"]["port"])
    assert serving.returncode == 0, serving.stderr
    nothing = healthcheck(free_port())
    assert nothing.returncode == 1 and "healthcheck:" in nothing.stderr


# -- the documentation ships the snippets that are tested ------------------------------------------


@pytest.mark.parametrize("snippet", ["gateway.conf", "forward-auth.conf"])
def test_the_deployment_guide_contains_each_nginx_snippet_verbatim(snippet: str) -> None:
    guide = (PROJECT_ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    text = (DEPLOY / "nginx" / snippet).read_text(encoding="utf-8")
    assert f"```nginx\n{text}```\n" in guide
