"""The production packaging, checked offline: the Containerfile and the Kubernetes manifests.

The manifests are rendered with kustomize (`kustomize build`, else `kubectl kustomize`); without
either, the base is read from the files its kustomization lists, and the overlay is checked by
its patches alone. Every object is validated against the Kubernetes schemas in strict mode
(kubernetes-validate ships them), then the hardening a payments service needs is asserted.
Custom resources (the overlay's PrometheusRule) have no schema there: tests/deploy/test_alerts.py
checks their shape and runs promtool on the rules.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "production"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
CONTAINERFILE = ROOT / "Containerfile"
CONTAINERIGNORE = ROOT / ".containerignore"

# The oldest Kubernetes the manifests support, and a recent one.
KUBERNETES_VERSIONS = ("1.30", "1.34")
IMAGE_UID = 10001
SECRET_NAME = "wallet-secrets"
CONFIG_MAP_NAME = "wallet-config"
SECRETS_IN_ENVIRONMENT = {"DATABASE_URL", "WALLET_JWT_SECRET"}
PLACEHOLDER = "CHANGE_ME"
API_PORT = 8000
DEFAULT_GRACEFUL_SECONDS = 20  # `wallet serve --graceful-seconds` when not given
ALLOWED_EGRESS = {("TCP", 5432), ("UDP", 53), ("TCP", 53)}
COMMON_LABELS = {"app.kubernetes.io/name": "wallet", "app.kubernetes.io/part-of": "payments"}
COMPONENT = "app.kubernetes.io/component"
# Objects of CRDs, whose schemas kubernetes-validate does not ship (tests/deploy/test_alerts.py).
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "PrometheusRule")}
# The workloads of every rendering, and those only the production overlay adds.
BASE_COMPONENTS = {"api", "worker", "migration", "migration-post"}
OVERLAY_COMPONENTS = {"verify"}
VERIFY_TIMEOUT_SECONDS = 900  # `wallet verify --timeout` when not given


# Rendering ------------------------------------------------------------------------------------


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _load_yaml(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _resources_from_files(directory: Path) -> list[dict[str, Any]]:
    """The base without kustomize: the files its kustomization lists, as they are."""
    kustomization = _kustomization(directory)
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, (
        "the base uses kustomize features that reading its files cannot reproduce"
    )
    objects = []
    for entry in kustomization["resources"]:
        objects += _load_yaml(directory / entry)
    return objects


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    command = _kustomize()
    if command is None:
        if directory != BASE:
            pytest.skip("no kustomize or kubectl: the overlay is checked by its patches only")
        return tuple(_resources_from_files(directory))
    output = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=True).stdout
    return tuple(document for document in yaml.safe_load_all(output) if document)


@pytest.fixture(params=[BASE, OVERLAY], ids=["base", "production"])
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """A deep copy of every object, so no test can change what another one sees."""
    return copy.deepcopy(list(_render(request.param)))


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [item for item in objects if item["kind"] == kind and item["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] in {"Deployment", "Job", "CronJob"}]


def _pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or a Job, or of the Jobs a CronJob creates."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return _pod_template(workload)["spec"]


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return _pod_template(workload)["metadata"]["labels"]


def _autoscaled(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(kind, name) of every object a HorizontalPodAutoscaler scales."""
    return {
        (item["spec"]["scaleTargetRef"]["kind"], item["spec"]["scaleTargetRef"]["name"])
        for item in objects
        if item["kind"] == "HorizontalPodAutoscaler"
    }


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(workload)
    return spec["containers"] + spec.get("initContainers", [])


def _component(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    found = [item for item in _workloads(objects) if _pod_labels(item).get(COMPONENT) == component]
    assert len(found) == 1, f"expected one workload of component {component}, found {len(found)}"
    return found[0]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _container_port(workload: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    for container in _containers(workload):
        for declared in container.get("ports", []):
            if declared.get("name") == port:
                return declared["containerPort"]
    raise AssertionError(f"no container port named {port!r}")


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _cpu(quantity: str) -> float:
    quantity = str(quantity)
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> float:
    units = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(quantity))
    assert match, quantity
    return float(match[1]) * units[match[2]]


# Schema validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes_in_strict_mode(manifests, version):
    errors = []
    for item in [*manifests, *_load_yaml(SECRET_EXAMPLE)]:
        if (item["apiVersion"], item["kind"]) in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(error.message)
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_a_misspelled_field():
    deployment = copy.deepcopy(_one(list(_render(BASE)), "Deployment", "wallet-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_only_the_listed_custom_resources_skip_strict_validation(manifests):
    """The skip above is for kinds kubernetes-validate has no schema of, named exactly: a
    built-in kind under a misspelled apiVersion is still an error."""
    for item in manifests:
        if (item["apiVersion"], item["kind"]) in CUSTOM_RESOURCES:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(item, KUBERNETES_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(_one(list(_render(BASE)), "Deployment", "wallet-api"))
    deployment["apiVersion"] = "app/v1"
    assert (deployment["apiVersion"], deployment["kind"]) not in CUSTOM_RESOURCES
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# Every pod: API, worker, migration jobs, the nightly check ----------------------------------------


def test_the_workloads_run_one_image(manifests):
    workloads = _workloads(manifests)
    components = [_pod_labels(item).get(COMPONENT) for item in workloads]
    assert len(components) == len(set(components)), components
    assert BASE_COMPONENTS <= set(components) <= BASE_COMPONENTS | OVERLAY_COMPONENTS, components
    images = {container["image"] for item in workloads for container in _containers(item)}
    assert len(images) == 1, images
    assert all(not image.endswith(":latest") and ":" in image for image in images), images


def test_pods_run_as_the_images_non_root_user(manifests):
    for workload in _workloads(manifests):
        pod = _pod_spec(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert (pod["runAsUser"], pod["runAsGroup"]) == (IMAGE_UID, IMAGE_UID), workload["metadata"]["name"]
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", workload["metadata"]["name"]
        for container in _containers(workload):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, container["name"]
            assert (context["runAsUser"], context["runAsGroup"]) == (IMAGE_UID, IMAGE_UID), container["name"]
            assert context["seccompProfile"]["type"] == "RuntimeDefault", container["name"]


def test_containers_cannot_escalate_or_write_their_root_filesystem(manifests):
    for workload in _workloads(manifests):
        for container in _containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context.get("privileged", False) is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert not context["capabilities"].get("add"), container["name"]


def test_only_tmp_is_writable_and_it_is_a_bounded_empty_dir(manifests):
    for workload in _workloads(manifests):
        volumes = {volume["name"]: volume for volume in _pod_spec(workload).get("volumes", [])}
        for container in _containers(workload):
            mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
            assert set(mounts) == {"/tmp"}, (container["name"], set(mounts))
            volume = volumes[mounts["/tmp"]["name"]]
            assert "sizeLimit" in volume["emptyDir"], volume


def test_pods_get_no_service_account_token(manifests):
    for workload in _workloads(manifests):
        pod = _pod_spec(workload)
        assert pod["automountServiceAccountToken"] is False, workload["metadata"]["name"]
        account = _one(manifests, "ServiceAccount", pod["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False


def test_every_container_has_cpu_and_memory_requests_within_limits(manifests):
    for workload in _workloads(manifests):
        for container in _containers(workload):
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert _cpu(requests["cpu"]) <= _cpu(limits["cpu"]), container["name"]
            assert _bytes(requests["memory"]) <= _bytes(limits["memory"]), container["name"]


def test_workload_selectors_match_their_own_pods_only(manifests):
    workloads = [item for item in _workloads(manifests) if item["kind"] == "Deployment"]
    for workload in workloads:
        for other in _workloads(manifests):
            selected = _selects(workload["spec"]["selector"], _pod_labels(other))
            assert selected == (other is workload), (workload["metadata"]["name"], other["metadata"]["name"])


def test_every_object_carries_the_common_labels(manifests):
    for item in manifests:
        labels = item["metadata"].get("labels", {})
        assert COMMON_LABELS.items() <= labels.items(), (item["kind"], item["metadata"]["name"])
    for workload in _workloads(manifests):
        assert COMMON_LABELS.items() <= _pod_labels(workload).items(), workload["metadata"]["name"]
        assert workload["metadata"]["labels"][COMPONENT] == _pod_labels(workload)[COMPONENT]


# The API ---------------------------------------------------------------------------------------


def test_api_runs_at_least_two_replicas(manifests):
    api = _component(manifests, "api")
    autoscaler = _one(manifests, "HorizontalPodAutoscaler", api["metadata"]["name"])
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_no_autoscaled_deployment_sets_replicas(manifests):
    """The HPA owns the count: a `replicas` in the manifest would reset it on every apply."""
    autoscaled = _autoscaled(manifests)
    assert ("Deployment", _component(manifests, "api")["metadata"]["name"]) in autoscaled
    for item in manifests:
        if item["kind"] == "Deployment":
            name = item["metadata"]["name"]
            assert ("replicas" in item["spec"]) == (("Deployment", name) not in autoscaled), name


def test_no_overlay_patch_sets_replicas_of_an_autoscaled_deployment():
    """Checked on the patch files too, where no kustomize renders the overlay."""
    autoscaled = _autoscaled(_resources_from_files(BASE))
    for entry in _kustomization(OVERLAY)["patches"]:
        for patch in _load_yaml(OVERLAY / entry["path"]):
            if (patch["kind"], patch["metadata"]["name"]) in autoscaled:
                assert "replicas" not in patch.get("spec", {}), entry["path"]


def test_api_serves_on_all_interfaces_port_8000(manifests):
    api = _component(manifests, "api")
    (container,) = _pod_spec(api)["containers"]
    args = container["args"]
    assert args[0] == "serve"
    assert _option(args, "--host") == "0.0.0.0"
    assert int(_option(args, "--port")) == API_PORT
    assert [port["containerPort"] for port in container["ports"]] == [API_PORT]


def test_api_probes_readyz_at_start_and_for_traffic_and_healthz_for_liveness(manifests):
    api = _component(manifests, "api")
    (container,) = _pod_spec(api)["containers"]
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert _container_port(api, check["port"]) == API_PORT, probe


def test_api_spreads_over_zones_and_nodes(manifests):
    api = _component(manifests, "api")
    constraints = _pod_spec(api)["topologySpreadConstraints"]
    keys = {constraint["topologyKey"] for constraint in constraints}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
    for constraint in constraints:
        assert constraint["maxSkew"] == 1
        assert _selects(constraint["labelSelector"], _pod_labels(api))
        assert not _selects(constraint["labelSelector"], _pod_labels(_component(manifests, "worker")))


def test_api_drains_in_flight_requests_before_it_is_killed(manifests):
    api = _component(manifests, "api")
    (container,) = _pod_spec(api)["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop_seconds = int(command[1])
    graceful_seconds = int(_option(container["args"], "--graceful-seconds") or DEFAULT_GRACEFUL_SECONDS)
    assert pre_stop_seconds >= 1
    assert _pod_spec(api)["terminationGracePeriodSeconds"] > pre_stop_seconds + graceful_seconds


def test_api_reads_the_config_map_and_the_secret_by_name(manifests):
    api = _component(manifests, "api")
    (container,) = _pod_spec(api)["containers"]
    config_names = [source["configMapRef"]["name"] for source in container["envFrom"]]
    assert config_names == [CONFIG_MAP_NAME]
    _one(manifests, "ConfigMap", CONFIG_MAP_NAME)
    secret_refs = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]
        for variable in container["env"]
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert set(secret_refs) == SECRETS_IN_ENVIRONMENT
    assert {ref["name"] for ref in secret_refs.values()} == {SECRET_NAME}
    assert secret_refs["DATABASE_URL"]["key"] == "DATABASE_URL"
    assert not secret_refs["DATABASE_URL"].get("optional", False)


def test_service_sends_port_80_to_the_api_port_8000(manifests):
    api = _component(manifests, "api")
    services = [item for item in manifests if item["kind"] == "Service"]
    assert len(services) == 1
    (service,) = services
    assert service["spec"]["type"] == "ClusterIP"
    for workload in _workloads(manifests):
        assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(workload)) == (
            workload is api
        ), workload["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert _container_port(api, port["targetPort"]) == API_PORT


def test_disruption_budget_covers_exactly_the_api_pods(manifests):
    api = _component(manifests, "api")
    budgets = [item for item in manifests if item["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 1
    (budget,) = budgets
    for workload in _workloads(manifests):
        selected = _selects(budget["spec"]["selector"], _pod_labels(workload))
        assert selected == (workload is api), workload["metadata"]["name"]
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable") == 1


def test_autoscaler_scales_the_api_deployment_on_cpu(manifests):
    api = _component(manifests, "api")
    autoscalers = [item for item in manifests if item["kind"] == "HorizontalPodAutoscaler"]
    assert len(autoscalers) == 1
    (autoscaler,) = autoscalers
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        api["metadata"]["name"],
    )
    assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"] >= 2
    metrics = {
        (metric["resource"]["name"], metric["resource"]["target"]["type"])
        for metric in autoscaler["spec"]["metrics"]
    }
    assert ("cpu", "Utilization") in metrics
    api_containers = _pod_spec(api)["containers"]
    assert all("cpu" in container["resources"]["requests"] for container in api_containers)


# The worker and the migration jobs --------------------------------------------------------------


def test_worker_runs_wallet_worker_on_its_own_direct_database_url(manifests):
    worker = _component(manifests, "worker")
    (container,) = _pod_spec(worker)["containers"]
    assert container["args"][0] == "worker"
    assert not container.get("ports"), "the worker serves nothing"
    (database,) = [variable for variable in container["env"] if variable["name"] == "DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "WORKER_DATABASE_URL"}


def test_worker_has_time_to_finish_running_jobs(manifests):
    worker = _component(manifests, "worker")
    assert _pod_spec(worker)["terminationGracePeriodSeconds"] >= 30


# The migration jobs: `wallet migrate` before the rollout (Argo CD PreSync), `wallet migrate --post`
# after it (PostSync). README, "Upgrades and rolling deploys".
MIGRATION_JOBS = [
    ("migration", ["migrate"], "PreSync"),
    ("migration-post", ["migrate", "--post"], "PostSync"),
]
# The README's kubectl steps, by label selector: the pre-deploy Job and what it needs; the rollout;
# the post-deploy Job alone.
FIRST_STEP = {
    "matchExpressions": [
        {"key": COMPONENT, "operator": "NotIn", "values": ["api", "worker", "migration-post"]}
    ]
}
ROLLOUT_STEP = {"matchExpressions": [{"key": COMPONENT, "operator": "NotIn", "values": ["migration-post"]}]}
LAST_STEP = {"matchLabels": {COMPONENT: "migration-post"}}
README_SELECTORS = [
    "-l 'app.kubernetes.io/component notin (api,worker,migration-post)'",
    "-l 'app.kubernetes.io/component!=migration-post'",
    "-l app.kubernetes.io/component=migration-post",
]


@pytest.mark.parametrize(("component", "args", "hook"), MIGRATION_JOBS, ids=["pre", "post"])
def test_migration_jobs_run_wallet_migrate_with_bounded_retries(manifests, component, args, hook):
    job = _component(manifests, component)
    assert job["kind"] == "Job"
    (container,) = _pod_spec(job)["containers"]
    assert container["args"] == args
    assert _pod_spec(job)["restartPolicy"] == "Never"
    assert 1 <= job["spec"]["backoffLimit"] <= 6
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["activeDeadlineSeconds"] > 0
    (database,) = [variable for variable in container["env"] if variable["name"] == "DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "MIGRATION_DATABASE_URL"}
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == hook
    assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"


def test_post_deploy_job_waits_until_no_pod_of_the_previous_version_can_still_be_draining(manifests):
    """Argo CD starts PostSync hooks once the Deployments are healthy; old pods may still be in
    their termination grace period then, finishing requests against what --post removes."""
    job = _component(manifests, "migration-post")
    (wait,) = _pod_spec(job)["initContainers"]
    assert wait["command"][0] == "sleep"
    longest_grace = max(
        _pod_spec(item)["terminationGracePeriodSeconds"]
        for item in _workloads(manifests)
        if item["kind"] == "Deployment"
    )
    assert int(wait["command"][1]) > longest_grace
    assert job["spec"]["activeDeadlineSeconds"] > int(wait["command"][1]) + 300


def _applied(manifests: list[dict[str, Any]], step: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in manifests if _selects(step, item["metadata"].get("labels", {}))]


def test_migration_step_applies_everything_the_job_needs(manifests):
    """The README's first step, `kubectl apply -l 'app.kubernetes.io/component notin
    (api,worker,migration-post)'`, must bring the pre-deploy job and all it depends on, and no
    API, worker or post-deploy object."""
    applied = _applied(manifests, FIRST_STEP)
    names = {(item["kind"], item["metadata"]["name"]) for item in applied}
    for component in ("migration", "migration-post"):
        job = _component(manifests, component)
        pod = _pod_spec(job)
        assert (("Job", job["metadata"]["name"]) in names) == (component == "migration")
        assert ("ServiceAccount", pod["serviceAccountName"]) in names
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
        assert any(
            item["kind"] == "NetworkPolicy" and _selects(item["spec"]["podSelector"], _pod_labels(job))
            for item in applied
        )
    assert not {item["kind"] for item in applied} & {"Deployment", "Service", "HorizontalPodAutoscaler"}


def test_the_rollout_step_holds_back_only_the_post_deploy_job_which_the_last_step_applies_alone(manifests):
    held_back = [item for item in manifests if item not in _applied(manifests, ROLLOUT_STEP)]
    assert [(item["kind"], _pod_labels(item)[COMPONENT]) for item in held_back] == [("Job", "migration-post")]
    assert _applied(manifests, LAST_STEP) == held_back


def test_readme_gives_the_kubectl_steps_these_selectors_check():
    readme = (ROOT / "README.md").read_text()
    for selector in README_SELECTORS:
        assert selector in readme, selector
    assert (
        readme.index(README_SELECTORS[0])
        < readme.index(README_SELECTORS[1])
        < readme.index(README_SELECTORS[2])
    )


# Configuration and secrets -----------------------------------------------------------------------


def _settings_the_code_reads() -> set[str]:
    """Every setting of .env.sample (but its development-only part) and of the code."""
    service_settings = (ROOT / ".env.sample").read_text().split("# --- development only ---")[0]
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", service_settings, re.MULTILINE))
    names |= set(re.findall(r"[\"'](WALLET_[A-Z0-9_]+)[\"']", (ROOT / "core/settings.py").read_text()))
    return names


def test_config_map_holds_every_non_secret_setting_and_nothing_else(manifests):
    data = _one(manifests, "ConfigMap", CONFIG_MAP_NAME)["data"]
    expected = _settings_the_code_reads() - SECRETS_IN_ENVIRONMENT
    assert "WALLET_POOL_MAX_SIZE" in expected and "WALLET_WORKER_CONCURRENCY" in expected
    assert set(data) == expected, {"missing": expected - set(data), "unknown": set(data) - expected}


def test_config_map_values_pass_the_services_own_settings_checks(manifests, monkeypatch):
    for name in _settings_the_code_reads():
        monkeypatch.delenv(name, raising=False)
    for name, value in _one(manifests, "ConfigMap", CONFIG_MAP_NAME)["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WALLET_JWT_SECRET", "x" * 32)
    settings = load_settings()
    assert settings.pool_max_size >= settings.pool_min_size


def test_no_secret_value_is_in_the_manifests(manifests):
    assert not [item for item in manifests if item["kind"] == "Secret"]
    for workload in _workloads(manifests):
        for container in _containers(workload):
            for variable in container.get("env", []):
                if variable["name"] in SECRETS_IN_ENVIRONMENT:
                    assert "value" not in variable, (container["name"], variable["name"])
    data = _one(manifests, "ConfigMap", CONFIG_MAP_NAME)["data"]
    assert not SECRETS_IN_ENVIRONMENT & set(data)
    assert not any(re.search(r"://[^/@\s]+:[^/@\s]+@", value) for value in data.values()), (
        "a URL with a password"
    )


def test_pods_read_secrets_only_by_reference_to_keys_of_the_example(manifests):
    (example,) = _load_yaml(SECRET_EXAMPLE)
    example_keys = set(example["stringData"])
    for workload in _workloads(manifests):
        for container in _containers(workload):
            assert not [source for source in container.get("envFrom", []) if "secretRef" in source]
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] == SECRET_NAME, variable["name"]
                    assert reference["key"] in example_keys, reference["key"]


def test_secret_example_holds_only_placeholders_and_is_in_no_kustomization():
    (example,) = _load_yaml(SECRET_EXAMPLE)
    assert (example["kind"], example["metadata"]["name"]) == ("Secret", SECRET_NAME)
    assert "data" not in example, "base64 data hides what the values are"
    assert example["stringData"]
    for key, value in example["stringData"].items():
        assert PLACEHOLDER in value, key
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        listed = [
            *kustomization.get("resources", []),
            *(patch["path"] for patch in kustomization.get("patches", [])),
        ]
        assert not [entry for entry in listed if "secret" in entry], path
        assert "secretGenerator" not in kustomization, path


# Network policies ---------------------------------------------------------------------------------


def _policies_for(manifests: list[dict[str, Any]], workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        item
        for item in manifests
        if item["kind"] == "NetworkPolicy" and _selects(item["spec"]["podSelector"], _pod_labels(workload))
    ]


def test_every_pod_is_isolated_for_ingress_and_egress(manifests):
    for workload in _workloads(manifests):
        policies = _policies_for(manifests, workload)
        assert policies, workload["metadata"]["name"]
        for policy in policies:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, policy["metadata"]["name"]


def test_egress_goes_only_to_postgresql_and_dns(manifests):
    for item in manifests:
        if item["kind"] != "NetworkPolicy":
            continue
        rules = item["spec"]["egress"]
        assert rules, item["metadata"]["name"]
        allowed = set()
        for rule in rules:
            assert rule.get("ports"), f"{item['metadata']['name']}: an egress rule without ports allows all"
            allowed |= {(port["protocol"], port["port"]) for port in rule["ports"]}
        assert allowed == ALLOWED_EGRESS, (item["metadata"]["name"], allowed)


def test_api_accepts_only_port_8000_from_payments_and_monitoring(manifests):
    (policy,) = _policies_for(manifests, _component(manifests, "api"))
    rules = policy["spec"]["ingress"]
    assert rules
    for rule in rules:
        assert rule["ports"] == [{"protocol": "TCP", "port": API_PORT}]
        assert rule["from"], "a rule without `from` admits everyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            selectors = [peer[key] for key in ("namespaceSelector", "podSelector") if key in peer]
            assert all(selector.get("matchLabels") for selector in selectors), f"an empty selector: {peer}"
            labels = {label for selector in selectors for label in selector["matchLabels"].items()}
            assert labels & {
                ("app.kubernetes.io/part-of", "payments"),
                ("kubernetes.io/metadata.name", "monitoring"),
            }, peer
    sources = [peer for rule in rules for peer in rule["from"]]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert any(peer.get("namespaceSelector", {}).get("matchLabels") == monitoring for peer in sources)


def test_worker_migration_and_verify_accept_no_traffic(manifests):
    for workload in _workloads(manifests):
        component = _pod_labels(workload)[COMPONENT]
        if component == "api":
            continue
        for policy in _policies_for(manifests, workload):
            assert policy["spec"].get("ingress", []) == [], (component, policy["metadata"]["name"])


# The production overlay's own objects: its Namespace and the nightly ledger check ----------------


def _overlay() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(OVERLAY)))


def test_overlay_creates_its_namespace_under_pod_security_restricted():
    objects = _overlay()
    namespace = _kustomization(OVERLAY)["namespace"]
    (created,) = [item for item in objects if item["kind"] == "Namespace"]
    assert created["metadata"]["name"] == namespace
    labels = created["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    for item in objects:
        if item["kind"] != "Namespace":
            assert item["metadata"]["namespace"] == namespace, (item["kind"], item["metadata"]["name"])


def test_overlay_runs_wallet_verify_with_a_checkpoint_nightly_as_the_auditor():
    verify = _component(_overlay(), "verify")
    assert verify["kind"] == "CronJob"
    spec = verify["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*"), spec["schedule"]
    assert spec["timeZone"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec.get("suspend", False) is False
    assert spec["startingDeadlineSeconds"] > 0
    (container,) = _pod_spec(verify)["containers"]
    args = container["args"]
    assert args[:2] == ["verify", "--checkpoint"]
    assert "--since" not in args and "--against" not in args, "the nightly check covers the whole ledger"
    (database,) = [variable for variable in container["env"] if variable["name"] == "DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": "AUDIT_DATABASE_URL"}
    (example,) = _load_yaml(SECRET_EXAMPLE)
    assert "//wallet_audit:" in example["stringData"]["AUDIT_DATABASE_URL"]


def test_a_failed_verify_job_stays_failed_for_the_alert():
    """Any exit but 0 (1 a violation, 3 its timeout, 69 no database) fails the Job, which stays
    for kube-state-metrics (kube_job_failed) to report, without a retry that could only repeat
    the finding; a pod evicted by a drain is not a failure."""
    verify = _component(_overlay(), "verify")
    job = verify["spec"]["jobTemplate"]["spec"]
    assert _pod_spec(verify)["restartPolicy"] == "Never"
    assert job["backoffLimit"] == 0
    disrupted = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert disrupted in job["podFailurePolicy"]["rules"]
    assert "ttlSecondsAfterFinished" not in job, "a deleted failed Job would end the alert unread"
    assert verify["spec"]["failedJobsHistoryLimit"] >= 1
    (container,) = _pod_spec(verify)["containers"]
    timeout = int(_option(container["args"], "--timeout") or VERIFY_TIMEOUT_SECONDS)
    assert job["activeDeadlineSeconds"] > timeout, "the command's own timeout (exit 3) comes first"


# Base and overlay ---------------------------------------------------------------------------------


def test_base_is_namespace_agnostic():
    for item in _resources_from_files(BASE):
        assert "namespace" not in item["metadata"], (item["kind"], item["metadata"]["name"])


def test_base_renders_with_kustomize_as_its_files_say():
    if _kustomize() is None:
        pytest.skip("no kustomize or kubectl to compare with")

    def key(item: dict[str, Any]) -> str:
        return f"{item['kind']}/{item['metadata']['name']}"

    rendered = sorted(_render(BASE), key=key)
    from_files = sorted(_resources_from_files(BASE), key=key)
    assert rendered == from_files


def test_overlay_patches_and_images_target_what_the_base_defines():
    kustomization = _kustomization(OVERLAY)
    assert kustomization["resources"][0] == "../../base"
    base = _resources_from_files(BASE)
    defined = {(item["kind"], item["metadata"]["name"]) for item in base}
    for entry in kustomization["resources"][1:]:
        # The overlay's own objects: files beside it, none of them a base object again.
        assert (OVERLAY / entry).is_file(), entry
        for item in _load_yaml(OVERLAY / entry):
            assert (item["kind"], item["metadata"]["name"]) not in defined, entry
    patch_files = {entry["path"] for entry in kustomization["patches"]}
    assert not patch_files & set(kustomization["resources"])
    assert kustomization["patches"]
    for entry in kustomization["patches"]:
        (patch,) = _load_yaml(OVERLAY / entry["path"])
        assert (patch["kind"], patch["metadata"]["name"]) in defined, entry["path"]
        if patch["kind"] == "Deployment":
            target = _one(base, "Deployment", patch["metadata"]["name"])
            base_names = {container["name"] for container in _containers(target)}
            patched_names = {container["name"] for container in _pod_spec(patch).get("containers", [])}
            assert patched_names <= base_names, entry["path"]
    images_in_base = {
        container["image"].rsplit(":", 1)[0] for item in _workloads(base) for container in _containers(item)
    }
    for image in kustomization.get("images", []):
        assert image["name"] in images_in_base, image["name"]


# The Containerfile ----------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in _instructions(CONTAINERFILE.read_text()):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


def _assignments(stage: list[tuple[str, str]], instruction: str) -> dict[str, str]:
    found = {}
    for name, arguments in stage:
        if name == instruction:
            found.update(word.split("=", 1) for word in shlex.split(arguments) if "=" in word)
    return found


def test_containerfile_builds_in_two_stages_on_python_311_slim_pinned_by_digest():
    stages = _stages()
    assert len(stages) >= 2
    images = {stage[0][1].split()[0] for stage in stages}
    assert len(images) == 1, images  # both stages on the same base
    [image] = images
    assert re.fullmatch(
        r"(docker\.io/library/)?python:3\.11(\.\d+)?-slim-bookworm@sha256:[0-9a-f]{64}", image
    ), image
    labels = _assignments(stages[-1], "LABEL")
    assert labels["org.opencontainers.image.base.name"] == image


def test_build_stage_installs_locked_wheels_without_the_embedded_postgresql():
    build = " ".join(arguments for instruction, arguments in _stages()[0] if instruction in {"RUN", "ENV"})
    assert re.search(r"pip install [^&;]*-c requirements\.lock", build)
    assert "PIP_ONLY_BINARY=:all:" in build or "--only-binary=:all:" in build
    assert "pgserver" not in build and "[embedded" not in build and "embedded]" not in build


def test_final_stage_has_no_compiler_and_installs_nothing():
    final = _stages()[-1]
    text = " ".join(arguments for _, arguments in final)
    for tool in ("gcc", "g++", "build-essential", "clang", "python3-dev", "apt-get install", "pip install"):
        assert tool not in text, tool


def test_final_stage_runs_as_a_numeric_non_root_user_the_manifests_use():
    users = [arguments for instruction, arguments in _stages()[-1] if instruction == "USER"]
    assert users, "the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, users[-1]
    assert int(user) == IMAGE_UID and (not group or int(group) == IMAGE_UID)


def test_image_runs_the_wheel_it_built_not_the_source_tree():
    """The build stage builds the wheel (it carries migrations/ and sql/, tests/test_wheel.py) and
    installs it, pinned by requirements.lock, in /opt/venv; the final stage copies that alone."""
    build, final = _stages()[0], _stages()[-1]
    copied = {arguments.split()[0].rstrip("/") for instruction, arguments in build if instruction == "COPY"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"
    ]
    assert {*packages["packages"], "sql", "migrations"} <= copied
    runs = " ".join(arguments for instruction, arguments in build if instruction == "RUN")
    assert re.search(r"pip wheel [^&;]*--no-deps", runs)
    assert re.search(r"pip install -c requirements\.lock \S+\.whl", runs)
    assert not re.search(r"pip install [^&;]*(-e|--editable) ", runs)
    copies_from_build = [arguments.split() for instruction, arguments in final if instruction == "COPY"]
    assert copies_from_build == [[f"--from={build[0][1].split()[-1]}", "/opt/venv", "/opt/venv"]]


def test_image_starts_wallet_serve_on_port_8000_and_never_writes_bytecode():
    final = _stages()[-1]
    last = {instruction: arguments for instruction, arguments in final}
    assert json.loads(last["ENTRYPOINT"]) == ["wallet"]
    command = json.loads(last["CMD"])
    assert command[0] == "serve"
    assert _option(command, "--host") == "0.0.0.0" and int(_option(command, "--port")) == API_PORT
    assert last["EXPOSE"].split() == [str(API_PORT)]
    environment = _assignments(final, "ENV")
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert environment["PYTHONUNBUFFERED"] == "1"


def test_image_carries_the_oci_labels():
    labels = _assignments(_stages()[-1], "LABEL")
    for name in ("title", "description", "source", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{name}"), name


def test_containerignore_keeps_git_venv_secrets_and_local_state_out():
    patterns = {
        line.strip()
        for line in CONTAINERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".wallet", ".env", "tests", "bench"} <= patterns
    assert any("__pycache__" in pattern for pattern in patterns)
    assert not any(pattern.startswith("!") for pattern in patterns), "nothing is let back in"
