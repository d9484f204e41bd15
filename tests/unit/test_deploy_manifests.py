"""The deployment manifests agree with the code: Dockerfile, deploy/compose.yaml, deploy/k8s (kustomize
base and overlays), the Prometheus, OpenTelemetry, promtail and Grafana configuration, and the CI
workflow.

There is no container engine or cluster here, so each check reads the files and compares them with
what the code says: the settings the processes read (`shop.settings.known_variables`), the commands
the CLI accepts, the paths the apps serve (built with `shop.app`), the metric families of
`shop.observability.metrics`. Each check is a function returning the problems it found; the tests
assert there are none in the repository, and `test_each_check_catches_a_broken_manifest` breaks a
copy of the manifests one way at a time and asserts the check in charge reports it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from shop import migrate
from shop.cli import parser as cli_parser
from shop.discovery.factory import SERVICE_URLS_VAR
from shop.discovery.static import parse_service_urls
from shop.observability import metrics as shop_metrics
from shop.settings import MODULE_NAMES, Settings, SettingsError, known_variables

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/shop-dev/shop"
COMPOSE_IMAGE = IMAGE + ":${SHOP_IMAGE_TAG:-latest}"
ROLES = ("gateway", *MODULE_NAMES)
OPS_PATHS = ("/health", "/ready", "/metrics")

# Every variable a shop process reads: the settings, plus the two read outside them on purpose
# (the static registry of shop.discovery, the migrations folder of shop.migrate).
SHOP_VARIABLES = known_variables() | {SERVICE_URLS_VAR, migrate.MIGRATIONS_DIR_ENV}
# What the Dockerfile may set besides them: the interpreter's and the build tools' own.
TOOL_VARIABLE = re.compile(r"^(PATH|VIRTUAL_ENV|LANG|LC_\w+|PYTHON\w*|PIP_\w+|UV_\w+)$")

# Families the dashboard may use before they exist (another change adds them); each is checked
# like any other as soon as shop.observability.metrics has it: (type, label names).
PENDING_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {"shop_bus_queue_depth": ("gauge", ("queue",))}
# Panels the dashboard must have, by a series each one plots.
DASHBOARD_MUST_PLOT = (
    "shop_http_requests_total",
    "shop_http_request_duration_seconds_bucket",
    "shop_sagas_finished_total",
    "shop_breaker_state",
    "shop_bus_queue_depth",
    "shop_outbox_lag_seconds_bucket",
    "shop_bus_messages_handled_total",
    "shop_bus_messages_failed_total",
    "shop_bus_messages_dead_lettered_total",
)
PROMETHEUS_LABELS = frozenset({"job", "instance"})

Problems = list[str]


# --------------------------------------------------------------------------- what the code says


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: tuple[str, ...]

    @property
    def series(self) -> dict[str, tuple[str, ...]]:
        """The sample names Prometheus stores for this family, with their label names."""
        if self.type == "counter":
            return {f"{self.name}_total": self.labels, f"{self.name}_created": self.labels}
        if self.type == "histogram":
            return {
                f"{self.name}_bucket": (*self.labels, "le"),
                f"{self.name}_count": self.labels,
                f"{self.name}_sum": self.labels,
                f"{self.name}_created": self.labels,
            }
        if self.type == "summary":
            return {self.name: (*self.labels, "quantile"), f"{self.name}_count": self.labels}
        return {self.name: self.labels}


def metric_families() -> dict[str, Family]:
    """The families declared in shop.observability.metrics, by family name."""
    found: dict[str, Family] = {}
    for value in vars(shop_metrics).values():
        if isinstance(value, MetricWrapperBase):
            for described in value.describe():
                found[described.name] = Family(described.name, described.type, tuple(value._labelnames))
        elif isinstance(value, (shop_metrics.HttpMetrics, shop_metrics.BusHandlerMetrics)):
            # collectors of their own (no lock per request or message)
            for described in value.describe():
                found[described.name] = Family(described.name, described.type, value.LABELS[described.name])
    return found


def metric_series() -> dict[str, tuple[str, ...]]:
    """Every series name the shop exports (plus the pending families not exported yet)."""
    families = metric_families()
    for name, (kind, labels) in PENDING_METRICS.items():
        families.setdefault(name, Family(name, kind, labels))
    return {series: labels for family in families.values() for series, labels in family.series.items()}


@pytest.fixture(scope="module")
def role_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    """The HTTP paths each role serves: the apps built by shop.app's factories, not started."""
    from shop import app as shop_app

    data_dir = tmp_path_factory.mktemp("roles")
    paths: dict[str, frozenset[str]] = {}
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith(("SHOP_", "OTEL_"))]:
            env.delenv(name)
        env.setenv("SHOP_DATA_DIR", str(data_dir))
        env.setenv("SHOP_REDIS_URL", "redis://127.0.0.1:1/0")  # never connected: nothing starts
        settings = Settings.from_env()
        paths["run"] = frozenset(route.path for route in shop_app.create_app(settings).routes)  # + dev keys
        for module in MODULE_NAMES:
            app = shop_app.create_service_app(settings, [module])
            paths[module] = frozenset(route.path for route in app.routes)
        gateway = shop_app.create_gateway()
        paths["gateway"] = frozenset(route.path for route in gateway.ops.routes)
    return paths


# --------------------------------------------------------------------------- reading the manifests


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with an empty environment; a required
    `${VAR:?message}` as if the operator had set it (to "set-by-operator")."""
    value = re.sub(r"\$\{\w+:?\?[^}]*\}", "set-by-operator", value)
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


# Variables that hold a credential: compose must require them (`${VAR:?...}`), never default them.
CREDENTIALS = (
    "SHOP_ADMIN_PASSWORD",
    "SHOP_POSTGRES_PASSWORD",
    "SHOP_REDIS_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


def command_of(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


class Manifests:
    """The deployment files of a checkout at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deploy = root / "deploy"
        self.k8s = self.deploy / "k8s"

    @cached_property
    def compose(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.deploy / "compose.yaml").read_text())
        return data

    @cached_property
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.compose["services"]
        return services

    @cached_property
    def shop_services(self) -> dict[str, dict[str, Any]]:
        """Compose services built from the repository's Dockerfile: the shop's own containers."""
        return {name: svc for name, svc in self.services.items() if "build" in svc}

    def compose_env(self, service: Mapping[str, Any]) -> dict[str, str]:
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.partition("=")[::2] for item in env)
        return {str(k): interpolate(str(v)) for k, v in env.items()}

    def kustomization(self, folder: Path) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
        return data

    @cached_property
    def base(self) -> list[dict[str, Any]]:
        """The base's resources, in kustomization order."""
        folder = self.k8s / "base"
        docs: list[dict[str, Any]] = []
        for resource in self.kustomization(folder).get("resources") or []:
            if (folder / resource).is_file():
                docs.extend(load_yaml_all(folder / resource))
        return docs

    def base_objects(self, kind: str) -> dict[str, dict[str, Any]]:
        return {doc["metadata"]["name"]: doc for doc in self.base if doc.get("kind") == kind}

    @cached_property
    def workloads(self) -> dict[str, dict[str, Any]]:
        """Deployments and Jobs of the base, by name: their pod templates."""
        return {**self.base_objects("Deployment"), **self.base_objects("Job")}

    def containers(self, workload: Mapping[str, Any]) -> list[dict[str, Any]]:
        spec = workload["spec"]["template"]["spec"]
        return [*spec.get("initContainers", []), *spec["containers"]]

    @cached_property
    def overlays(self) -> dict[str, Path]:
        folder = self.k8s / "overlays"
        return {p.parent.name: p.parent for p in sorted(folder.glob("*/kustomization.yaml"))}

    @cached_property
    def dockerfile(self) -> list[Instruction]:
        """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
        text = re.sub(r"\\\n", " ", (self.root / "Dockerfile").read_text())
        instructions: list[Instruction] = []
        stage = -1
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, args = line.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                stage += 1
            instructions.append(Instruction(stage, keyword, args.strip()))
        return instructions

    def dockerfile_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.dockerfile:
            if ins.keyword != "ENV":
                continue
            tokens = shlex.split(ins.args)
            if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
                env[tokens[0]] = " ".join(tokens[1:])
            else:
                env.update(token.partition("=")[::2] for token in tokens)
        return env

    @cached_property
    def workflow(self) -> dict[Any, Any]:
        data: dict[Any, Any] = yaml.safe_load((self.root / ".github/workflows/ci.yml").read_text())
        return data

    @cached_property
    def prometheus(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.deploy / "prometheus/prometheus.yml").read_text())
        return data

    @cached_property
    def dashboards(self) -> dict[str, Any]:
        folder = self.deploy / "grafana/dashboards"
        return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}

    @cached_property
    def datasources(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in sorted((self.deploy / "grafana/provisioning/datasources").glob("*.yaml")):
            for doc in load_yaml_all(path):
                found.extend(doc.get("datasources") or [])
        return found


def role_of(command: list[str]) -> str | None:
    """The role a shop command line runs: gateway, a module (serve), run, migrate."""
    if not command or command[0] != "shop" or len(command) < 2:
        return None
    if command[1] == "serve":
        return command[2] if len(command) > 2 else None
    return command[1]


def url_host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    try:
        return parts.hostname or "", parts.port
    except ValueError:
        return parts.hostname or "", None


# --------------------------------------------------------------------------- the checks


def check_yaml_parses(m: Manifests) -> Problems:
    """Every YAML file (multi-document too) and JSON file under deploy/ and .github/ parses."""
    problems: Problems = []
    files = [p for top in (m.deploy, m.root / ".github") for p in sorted(top.rglob("*")) if p.is_file()]
    for path in files:
        try:
            if path.suffix in (".yaml", ".yml"):
                load_yaml_all(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except (yaml.YAMLError, ValueError) as exc:
            problems.append(f"{path.relative_to(m.root)}: {exc}")
    if not any(p.name == "compose.yaml" for p in files):
        problems.append("deploy/compose.yaml is missing")
    return problems


def _resolves(folder: Path, entry: str) -> bool:
    target = folder / entry
    return target.is_file() or (target / "kustomization.yaml").is_file()


def check_kustomizations(m: Manifests) -> Problems:
    problems: Problems = []
    base = (m.k8s / "base").resolve()
    base_ids = {(doc.get("kind"), doc["metadata"]["name"]) for doc in m.base}
    folders = sorted(p.parent for p in m.k8s.rglob("kustomization.yaml"))
    if base not in [f.resolve() for f in folders]:
        problems.append("deploy/k8s/base/kustomization.yaml is missing")
    if not {"staging", "production"} <= set(m.overlays):
        problems.append(f"overlays staging and production expected, found {sorted(m.overlays)}")
    for folder in folders:
        where = folder.relative_to(m.root)
        k = m.kustomization(folder)
        for resource in k.get("resources") or []:
            if not _resolves(folder, resource):
                problems.append(f"{where}: resource {resource} does not exist")
        for patch in k.get("patches") or []:
            if "path" in patch and not (folder / patch["path"]).is_file():
                problems.append(f"{where}: patch {patch['path']} does not exist")
            target = patch.get("target") or {}
            if (
                folder.resolve() != base
                and "name" in target
                and (target.get("kind"), target["name"]) not in base_ids
            ):
                problems.append(f"{where}: patch target {target} is not in the base")
        for generator in [*(k.get("secretGenerator") or []), *(k.get("configMapGenerator") or [])]:
            for source in [*(generator.get("envs") or []), *(generator.get("files") or [])]:
                source = source.rpartition("=")[2]
                if not (folder / source).is_file() and not (folder / f"{source}.example").is_file():
                    problems.append(
                        f"{where}: generator source {source} (or {source}.example) does not exist"
                    )
            if (
                generator.get("behavior") in ("replace", "merge")
                and (
                    "Secret" if generator in (k.get("secretGenerator") or []) else "ConfigMap",
                    generator["name"],
                )
                not in base_ids
            ):
                problems.append(f"{where}: generator {generator['name']} replaces nothing in the base")
        for image in k.get("images") or []:
            if image.get("name") != IMAGE:
                problems.append(f"{where}: images entry {image.get('name')} is not {IMAGE}")
            if not image.get("newTag"):
                problems.append(f"{where}: images entry {image.get('name')} has no newTag")
        for replica in k.get("replicas") or []:
            if ("Deployment", replica["name"]) not in base_ids:
                problems.append(
                    f"{where}: replicas for {replica['name']}, which is no Deployment of the base"
                )
        if folder.resolve() != base and not any(
            (folder / r).resolve() == base for r in k.get("resources") or []
        ):
            problems.append(f"{where}: the overlay does not build on ../../base")
    return problems


def check_every_role_is_deployed(m: Manifests) -> Problems:
    problems: Problems = []
    deployments, services = m.base_objects("Deployment"), m.base_objects("Service")
    for role in ROLES:
        deployment = deployments.get(role)
        if deployment is None:
            problems.append(f"k8s base: no Deployment {role}")
        else:
            commands = [
                command_of(c.get("command")) + command_of(c.get("args")) for c in m.containers(deployment)
            ]
            if role not in [role_of(c) for c in commands]:
                problems.append(f"k8s base: Deployment {role} does not run its role: {commands}")
            pod_labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
            selector = deployment["spec"]["selector"].get("matchLabels") or {}
            if not selector.items() <= pod_labels.items():
                problems.append(f"k8s base: Deployment {role}'s selector does not match its pods")
            service = services.get(role)
            if service is None:
                problems.append(f"k8s base: no Service {role}")
            elif not (service["spec"].get("selector") or {}).items() <= pod_labels.items():
                problems.append(f"k8s base: Service {role} selects no pod of Deployment {role}")
        compose = m.services.get(role)
        if compose is None:
            problems.append(f"compose: no service {role}")
        elif role_of(command_of(compose.get("command"))) != role:
            problems.append(f"compose: service {role} runs {compose.get('command')}")
    jobs = [
        role_of(command_of(c.get("command"))) for j in m.base_objects("Job").values() for c in m.containers(j)
    ]
    if "migrate" not in jobs:
        problems.append("k8s base: no Job runs shop migrate")
    if "migrate" not in [role_of(command_of(s.get("command"))) for s in m.shop_services.values()]:
        problems.append("compose: no service runs shop migrate")
    if (m.services.get("catalog") or {}).get("deploy", {}).get("replicas") != 2:
        problems.append("compose: catalog should run 2 replicas (deploy.replicas: 2)")
    hpas = [
        h["spec"]["scaleTargetRef"]
        for h in m.base_objects("HorizontalPodAutoscaler").values()
        if h.get("apiVersion") == "autoscaling/v2"
    ]
    if {"kind": "Deployment", "name": "catalog", "apiVersion": "apps/v1"} not in hpas:
        problems.append(
            f"k8s base: no autoscaling/v2 HorizontalPodAutoscaler scales Deployment catalog: {hpas}"
        )
    for name, ingress in m.base_objects("Ingress").items():
        for rule in ingress["spec"].get("rules") or []:
            for path in rule.get("http", {}).get("paths") or []:
                backend = path["backend"]["service"]
                if backend["name"] not in services:
                    problems.append(f"k8s base: Ingress {name} routes to a missing Service {backend['name']}")
                elif backend["name"] != "gateway":
                    problems.append(f"k8s base: Ingress {name} bypasses the gateway ({backend['name']})")
    if not m.base_objects("Ingress"):
        problems.append("k8s base: no Ingress for the gateway")
    return problems


def shop_commands(m: Manifests) -> Iterator[tuple[str, list[str]]]:
    for name, svc in m.shop_services.items():
        if svc.get("command") is not None:
            yield f"compose {name}", command_of(svc.get("command"))
    for name, workload in m.workloads.items():
        for container in m.containers(workload):
            yield f"k8s {name}", command_of(container.get("command")) + command_of(container.get("args"))
    cmd = [ins.args for ins in m.dockerfile if ins.keyword == "CMD"]
    if cmd:
        yield "Dockerfile CMD", command_of(json.loads(cmd[-1]) if cmd[-1].startswith("[") else cmd[-1])


def check_commands_parse(m: Manifests) -> Problems:
    """Every `shop ...` command line is one the CLI accepts, naming real modules."""
    problems: Problems = []
    for where, command in shop_commands(m):
        if command[:1] == ["python"] or (command[:2] == ["sh", "-c"] and "load_keys" in command[2]):
            continue  # the compose one-shot that writes the signing pair
        if command[:1] != ["shop"]:
            problems.append(f"{where}: {command} does not run the shop command")
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage
                args = cli_parser().parse_args(command[1:])
        except SystemExit:
            problems.append(f"{where}: `shop` refuses the arguments {command[1:]}")
            continue
        unknown = [name for name in getattr(args, "modules", None) or [] if name not in MODULE_NAMES]
        if unknown:
            problems.append(f"{where}: unknown module(s) {unknown}")
    return problems


def _known(where: str, names: Any, problems: Problems) -> None:
    for name in sorted(names):
        if name not in SHOP_VARIABLES:
            problems.append(f"{where}: {name} is not a variable the shop reads")


def _valid(where: str, env: Mapping[str, str], problems: Problems) -> None:
    try:
        Settings.from_env(env)
    except SettingsError as exc:
        problems.append(f"{where}: {exc}")
    if env.get(SERVICE_URLS_VAR):
        try:
            parse_service_urls(env[SERVICE_URLS_VAR])
        except ValueError as exc:
            problems.append(f"{where}: {SERVICE_URLS_VAR}: {exc}")


def check_environment_variables(m: Manifests) -> Problems:
    """Every variable given to a shop container is one the shop reads, with a value it accepts."""
    problems: Problems = []
    for name, svc in m.services.items():
        env = m.compose_env(svc)
        if name in m.shop_services:
            _known(f"compose {name}", env, problems)
            _valid(f"compose {name}", env, problems)
        else:
            for var in env:
                if var.startswith("SHOP_"):
                    problems.append(f"compose {name}: {var} given to a container that is not the shop")
    configs = m.base_objects("ConfigMap")
    secrets = m.base_objects("Secret")
    combined: dict[str, str] = {}
    for name, config in configs.items():
        _known(f"k8s ConfigMap {name}", config.get("data") or {}, problems)
        combined.update({k: str(v) for k, v in (config.get("data") or {}).items()})
    for name, secret in secrets.items():
        keys = {**(secret.get("stringData") or {}), **(secret.get("data") or {})}
        _known(f"k8s Secret {name}", keys, problems)
        combined.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    _valid("k8s ConfigMap + Secrets", combined, problems)
    for name, workload in m.workloads.items():
        for container in m.containers(workload):
            _known(f"k8s {name}", [e["name"] for e in container.get("env") or []], problems)
            for source in container.get("envFrom") or []:
                for kind, defined in (("configMapRef", configs), ("secretRef", secrets)):
                    if kind in source and source[kind]["name"] not in defined:
                        problems.append(f"k8s {name}: {kind} {source[kind]['name']} is not in the base")
    for folder in m.overlays.values():
        for example in sorted(folder.glob("*.env.example")):
            lines = [ln for ln in example.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            _known(str(example.relative_to(m.root)), [ln.partition("=")[0].strip() for ln in lines], problems)
        for patch in m.kustomization(folder).get("patches") or []:
            for path in re.findall(r"path:\s*/data/(\w+)", str(patch.get("patch", ""))):
                _known(f"{folder.relative_to(m.root)} patch", [path], problems)
    dockerfile_env = m.dockerfile_env()
    for var in dockerfile_env:
        if var.startswith(("SHOP_", "OTEL_")):
            _known("Dockerfile ENV", [var], problems)
        elif not TOOL_VARIABLE.match(var):
            problems.append(f"Dockerfile ENV: {var} is neither a shop variable nor the interpreter's")
    _valid("Dockerfile ENV", {k: v for k, v in dockerfile_env.items() if k.startswith("SHOP_")}, problems)
    return problems


def check_paths_are_served(m: Manifests, role_paths: Mapping[str, frozenset[str]]) -> Problems:
    """Probe, health-check and scrape paths are routes of the role they are aimed at."""
    problems: Problems = []
    for name, workload in m.workloads.items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        for container in m.containers(workload):
            role = role_of(command_of(container.get("command")) + command_of(container.get("args")))
            served = role_paths.get(role or "", frozenset())
            ports = {p.get("name") for p in container.get("ports") or []} | {
                p["containerPort"] for p in container.get("ports") or []
            }
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                http = (container.get(probe) or {}).get("httpGet")
                if http is None:
                    if probe != "startupProbe" and workload["kind"] == "Deployment":
                        problems.append(f"k8s {name}: no {probe} httpGet")
                    continue
                if http["path"] not in served:
                    problems.append(f"k8s {name}: {probe} path {http['path']} is not served by {role}")
                if http["port"] not in ports:
                    problems.append(f"k8s {name}: {probe} port {http['port']} is no container port")
            if workload["kind"] == "Deployment":
                if (container.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/health":
                    problems.append(f"k8s {name}: livenessProbe should ask /health")
                if (container.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/ready":
                    problems.append(f"k8s {name}: readinessProbe should ask /ready")
                path = annotations.get("prometheus.io/path")
                if path is not None and path not in served:
                    problems.append(f"k8s {name}: prometheus.io/path {path} is not served by {role}")
    healthchecks = [ins.args for ins in m.dockerfile if ins.keyword == "HEALTHCHECK"]
    for check in healthchecks:
        for path in re.findall(r"https?://[^/'\"]+(/[\w/-]*)", check):
            for role, served in role_paths.items():
                if path not in served:
                    problems.append(f"Dockerfile HEALTHCHECK: {path} is not served by {role}")
    scraped: set[str] = set()
    for job in m.prometheus.get("scrape_configs") or []:
        targets = [
            t.partition(":")[0] for sc in job.get("static_configs") or [] for t in sc.get("targets") or []
        ]
        targets += [n for dc in job.get("dns_sd_configs") or [] for n in dc.get("names") or []]
        path = job.get("metrics_path", "/metrics")
        for target in targets:
            if target not in m.services:
                if target not in ("localhost", "127.0.0.1"):
                    problems.append(f"prometheus {job['job_name']}: {target} is no compose service")
                continue
            role = role_of(command_of(m.services[target].get("command")))
            if target in m.shop_services and role is not None:
                scraped.add(role)
                if path not in role_paths.get(role, frozenset()):
                    problems.append(f"prometheus {job['job_name']}: {path} is not served by {role}")
    missing = [r for r in ROLES if r not in scraped]
    if missing:
        problems.append(f"prometheus: nothing scrapes {missing}")
    return problems


def check_ports_and_addresses(m: Manifests) -> Problems:
    """The port the shop listens on, the ports that point at it, the addresses between services."""
    problems: Problems = []
    config = m.base_objects("ConfigMap").get("shop-config", {}).get("data") or {}
    port = int(config.get("SHOP_PORT", 8000))
    exposed = [ins.args for ins in m.dockerfile if ins.keyword == "EXPOSE"]
    if exposed != [str(m.dockerfile_env().get("SHOP_PORT", 8000))]:
        problems.append(f"Dockerfile: EXPOSE {exposed} is not SHOP_PORT")
    services = m.base_objects("Service")
    deployments = m.base_objects("Deployment")
    for name, deployment in deployments.items():
        for container in m.containers(deployment):
            ports = [p["containerPort"] for p in container.get("ports") or []]
            if ports != [port]:
                problems.append(f"k8s {name}: containerPort {ports} is not SHOP_PORT {port}")
    for name, service in services.items():
        if name in deployments:
            container = m.containers(deployments[name])[0]
            names = {p.get("name") for p in container.get("ports") or []}
            numbers = {p["containerPort"] for p in container.get("ports") or []}
            for p in service["spec"]["ports"]:
                if p.get("targetPort", p["port"]) not in names | numbers:
                    problems.append(
                        f"k8s Service {name}: targetPort {p.get('targetPort')} is no container port"
                    )
    urls = parse_service_urls(config.get(SERVICE_URLS_VAR, ""))
    if set(urls) != set(MODULE_NAMES):
        problems.append(f"k8s {SERVICE_URLS_VAR}: modules {sorted(urls)} are not {list(MODULE_NAMES)}")
    for module, module_urls in urls.items():
        for url in module_urls:
            host, url_port = url_host_port(url)
            service = services.get(host)
            if service is None:
                problems.append(f"k8s {SERVICE_URLS_VAR}: {module}={url} names no Service")
            elif url_port not in [p["port"] for p in service["spec"]["ports"]]:
                problems.append(
                    f"k8s {SERVICE_URLS_VAR}: {module}={url}: Service {host} has no port {url_port}"
                )
    for name, svc in m.shop_services.items():
        env = m.compose_env(svc)
        for var in ("SHOP_DATABASE_URL", "SHOP_REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            host, _ = url_host_port(env.get(var, ""))
            if var in env and host not in m.services:
                problems.append(f"compose {name}: {var} points at {host!r}, no compose service")
        if SERVICE_URLS_VAR in env:
            problems.append(f"compose {name}: {SERVICE_URLS_VAR} set; compose uses the Redis registry")
    for job in m.prometheus.get("scrape_configs") or []:
        for dc in job.get("dns_sd_configs") or []:
            for target in dc.get("names") or []:
                svc = m.shop_services.get(target)
                if svc is not None and str(dc.get("port")) != m.compose_env(svc).get("SHOP_PORT", "8000"):
                    problems.append(f"prometheus {job['job_name']}: port {dc.get('port')} is not {target}'s")
    gateway = m.services.get("gateway") or {}
    if not any(str(p).endswith(":8000") for p in gateway.get("ports") or []):
        problems.append("compose: the gateway does not publish :8000")
    return problems


def check_image_names(m: Manifests) -> Problems:
    """One image, one name: compose, k8s, the kustomize overlays and the workflow agree."""
    problems: Problems = []
    for name, svc in m.shop_services.items():
        if svc.get("image") != COMPOSE_IMAGE:
            problems.append(f"compose {name}: image {svc.get('image')} is not {COMPOSE_IMAGE}")
        build = svc["build"]
        dockerfile = (m.deploy / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
        if dockerfile != (m.root / "Dockerfile").resolve():
            problems.append(f"compose {name}: builds {dockerfile}, not the repository's Dockerfile")
    for name, svc in m.services.items():
        if name not in m.shop_services and str(svc.get("image", "")).startswith(IMAGE):
            problems.append(f"compose {name}: runs the shop image without building it")
    for name, workload in m.workloads.items():
        for container in m.containers(workload):
            if container["image"].rpartition(":")[0] != IMAGE:
                problems.append(f"k8s {name}: image {container['image']} is not {IMAGE}:<tag>")
    jobs = m.workflow.get("jobs") or {}
    if (m.workflow.get("env") or {}).get("IMAGE") != IMAGE:
        problems.append(f"workflow: env.IMAGE is not {IMAGE}")
    steps = [step for job in jobs.values() for step in job.get("steps") or []]
    builds = [s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action")]
    if not builds:
        problems.append("workflow: no docker/build-push-action step")
    for step in builds:
        tags = str((step.get("with") or {}).get("tags", ""))
        if "${{ env.IMAGE }}:${{ github.sha }}" not in tags:
            problems.append(f"workflow: the image is not tagged with the commit: {tags!r}")
        if (m.root / (step.get("with") or {}).get("file", "Dockerfile")).resolve() != (
            m.root / "Dockerfile"
        ).resolve():
            problems.append("workflow: builds another Dockerfile")
    runs = "\n".join(str(s.get("run", "")) for s in steps)
    if "kustomize edit set image ${{ env.IMAGE }}=${{ env.IMAGE }}:${{ github.sha }}" not in runs:
        problems.append("workflow: the deploy does not set the commit's image in the overlay")
    return problems


def _labels_in(expr: str) -> Iterator[tuple[str | None, str]]:
    """(metric or None, label name) for each label matcher and each by/without label."""
    for metric, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
            yield metric, label
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in re.findall(r"[a-zA-Z_]\w*", group):
            yield None, label


def check_dashboards(m: Manifests) -> Problems:
    """The dashboard parses and plots only series the shop exports, by labels they have."""
    problems: Problems = []
    series = metric_series()
    uids = {ds.get("uid") for ds in m.datasources}
    if {"prometheus", "loki", "jaeger"} - {ds.get("type") for ds in m.datasources}:
        problems.append("grafana: the data sources should be Prometheus, Loki and Jaeger")
    if not m.dashboards:
        problems.append("grafana: no dashboard")
    for file, dashboard in m.dashboards.items():
        exprs: list[str] = []
        for panel in dashboard.get("panels") or []:
            if panel.get("type") == "row":
                continue
            targets = panel.get("targets") or []
            if not targets:
                problems.append(f"{file}: panel {panel.get('title')!r} has no query")
            for ds in [panel.get("datasource"), *(t.get("datasource") for t in targets)]:
                if (
                    isinstance(ds, dict)
                    and ds.get("uid") not in uids
                    and not str(ds.get("uid")).startswith("$")
                ):
                    problems.append(
                        f"{file}: panel {panel.get('title')!r}: data source {ds.get('uid')} unknown"
                    )
            exprs.extend(t.get("expr", "") for t in targets)
        for variable in (dashboard.get("templating") or {}).get("list") or []:
            ds = variable.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") not in uids:
                problems.append(
                    f"{file}: variable {variable.get('name')}: data source {ds.get('uid')} unknown"
                )
            query = variable.get("query")
            exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
        for expr in exprs:
            used = set(re.findall(r"\bshop_\w+", expr))
            for name in sorted(used - set(series)):
                problems.append(f"{file}: {name} is no series of shop.observability.metrics ({expr})")
            allowed = PROMETHEUS_LABELS.union(*(series.get(n, ()) for n in used))
            for metric, label in _labels_in(expr):
                labels = PROMETHEUS_LABELS | set(series.get(metric, allowed)) if metric else allowed
                if label not in labels:
                    problems.append(
                        f"{file}: label {label} is not a label of {metric or sorted(used)} ({expr})"
                    )
        plotted = " ".join(exprs)
        for name in DASHBOARD_MUST_PLOT:
            if not re.search(rf"\b{name}\b", plotted):
                problems.append(f"{file}: no panel plots {name}")
    return problems


def check_dockerfile(m: Manifests) -> Problems:
    problems: Problems = []
    stages = [ins for ins in m.dockerfile if ins.keyword == "FROM"]
    if len(stages) < 2:
        problems.append(f"Dockerfile: {len(stages)} stage(s); a builder and a runtime stage expected")
    if not all(re.search(r"python:3\.11|\$\{?PYTHON_IMAGE", s.args) for s in stages):
        problems.append("Dockerfile: every stage should start from python:3.11 (slim)")
    if not any(
        re.search(r"python:3\.11[\w.-]*-slim", ins.args) for ins in m.dockerfile if ins.keyword == "ARG"
    ):
        problems.append("Dockerfile: the base image is not a slim python:3.11")
    last = len(stages) - 1
    final = [ins for ins in m.dockerfile if ins.stage == last]
    users = [ins.args.partition(":")[0] for ins in final if ins.keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append(f"Dockerfile: the runtime stage runs as {users[-1] if users else 'root'}")
    health = [ins.args for ins in final if ins.keyword == "HEALTHCHECK"]
    if not health or "/health" not in health[-1] or "python" not in health[-1]:
        problems.append("Dockerfile: no HEALTHCHECK asking /health with python")
    elif re.search(r"\b(curl|wget)\b", health[-1]):
        problems.append("Dockerfile: the HEALTHCHECK needs curl/wget, which the image does not have")
    makefile = (m.root / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", makefile, re.M)
    text = " ".join(ins.args for ins in m.dockerfile)
    if uv_version is None or f"UV_VERSION={uv_version.group(1)}" not in text.replace(" ", ""):
        problems.append("Dockerfile: uv is not the Makefile's UV_VERSION")
    syncs = [ins.args for ins in m.dockerfile if ins.keyword == "RUN" and "uv sync" in ins.args]
    if not syncs:
        problems.append("Dockerfile: no `uv sync`")
    for sync in syncs:
        if "--frozen" not in sync or "--no-dev" not in sync:
            problems.append(f"Dockerfile: {sync!r} is not `uv sync --frozen --no-dev` (the lock, no dev)")
        if re.search(r"--all-extras|--extra\b", sync):
            problems.append(f"Dockerfile: {sync!r} installs extras (the dev tools)")
    copies = " ".join(ins.args for ins in final if ins.keyword == "COPY")
    for needed in ("/app/.venv", "src", "migrations"):
        if needed not in copies:
            problems.append(f"Dockerfile: the runtime stage does not copy {needed}")
    if not any(ins.keyword == "CMD" for ins in final):
        problems.append("Dockerfile: no CMD")
    ignored = (m.root / ".dockerignore").read_text().split() if (m.root / ".dockerignore").exists() else []
    for pattern in (".venv", "var", ".git"):
        if pattern not in ignored:
            problems.append(f".dockerignore: {pattern} is not excluded")
    return problems


def check_observability_wiring(m: Manifests) -> Problems:
    """Collector pipelines, Grafana data sources and compose mounts point at things that exist."""
    problems: Problems = []
    for name, svc in m.services.items():
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":")[0]
            is_bind = source.startswith((".", "/")) and not source.startswith("/var/run")
            if is_bind and not (m.deploy / source).exists():
                problems.append(f"compose {name}: mounts {source}, which does not exist")
    collector = yaml.safe_load((m.deploy / "otel-collector.yaml").read_text())
    for pipeline, spec in (collector.get("service", {}).get("pipelines") or {}).items():
        for section in ("receivers", "processors", "exporters"):
            for component in spec.get(section) or []:
                if component not in (collector.get(section) or {}):
                    problems.append(f"otel-collector {pipeline}: {section[:-1]} {component} is not defined")
    pipelines = collector.get("service", {}).get("pipelines") or {}
    for pipeline, backend in (("traces", "jaeger"), ("logs", "loki")):
        hosts = [
            url_host_port(str((collector.get("exporters") or {}).get(e, {}).get("endpoint", "")))[0]
            or str((collector.get("exporters") or {}).get(e, {}).get("endpoint", "")).partition(":")[0]
            for e in (pipelines.get(pipeline) or {}).get("exporters") or []
        ]
        if backend not in hosts or backend not in m.services:
            problems.append(f"otel-collector: {pipeline} are not exported to the {backend} service ({hosts})")
    http = ((collector.get("receivers") or {}).get("otlp") or {}).get("protocols", {}).get("http") or {}
    for name, svc in m.shop_services.items():
        endpoint = m.compose_env(svc).get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint is not None:
            host, port = url_host_port(endpoint)
            if host not in m.services or not str(http.get("endpoint", "")).endswith(f":{port}"):
                problems.append(
                    f"compose {name}: OTLP endpoint {endpoint} is no collector's OTLP/HTTP receiver"
                )
    for ds in m.datasources:
        host, _ = url_host_port(str(ds.get("url", "")))
        if host not in m.services:
            problems.append(f"grafana data source {ds.get('name')}: {ds.get('url')} is no compose service")
    grafana_mounts = [str(v).split(":")[1] for v in (m.services.get("grafana") or {}).get("volumes") or []]
    for path in sorted((m.deploy / "grafana/provisioning/dashboards").glob("*.yaml")):
        for doc in load_yaml_all(path):
            for provider in doc.get("providers") or []:
                if provider.get("options", {}).get("path") not in grafana_mounts:
                    problems.append(f"grafana provider {provider.get('name')}: its path is not mounted")
    return problems


def check_secrets(m: Manifests) -> Problems:
    """No credential has a default in compose (each is required from the operator), credentials
    in URLs come from those variables, and only users can read the token signing key."""
    problems: Problems = []
    text = (m.deploy / "compose.yaml").read_text()
    for var in CREDENTIALS:
        uses = re.findall(r"\$\{" + var + r"(:?[-?])?[^}]*\}", text)
        if not uses:
            problems.append(f"compose: {var} is never used")
        for op in uses:
            if op not in ("?", ":?"):
                problems.append(f"compose: {var} has a default (use ${{{var}:?...}})")
    for name, svc in m.services.items():
        env = m.compose_env(svc)
        for var in ("SHOP_DATABASE_URL", "SHOP_REDIS_URL"):
            url = env.get(var, "")
            if url and "set-by-operator" not in url:
                problems.append(f"compose {name}: {var} carries no password from the operator")
        mounts = [str(v).split(":")[0] for v in svc.get("volumes") or ()]
        signs = "jwt-private" in mounts or "SHOP_JWT_PRIVATE_KEY" in env
        if signs and name not in ("users", "keys"):
            problems.append(f"compose {name}: holds the token signing key (only users signs)")
        if name in m.shop_services and name not in ("keys", "migrate") and "jwt-public" not in mounts:
            problems.append(f"compose {name}: cannot read the public key it verifies tokens with")
    users = m.services.get("users", {})
    if "SHOP_JWT_PRIVATE_KEY" not in m.compose_env(users):
        problems.append("compose users: no SHOP_JWT_PRIVATE_KEY (it signs the tokens)")
    return problems


def check_workflow(m: Manifests) -> Problems:
    problems: Problems = []
    triggers = m.workflow.get("on", m.workflow.get(True)) or {}  # YAML 1.1 reads `on` as true
    for event in ("push", "pull_request"):
        if event not in triggers:
            problems.append(f"workflow: not run on {event}")
    jobs: dict[str, Any] = m.workflow.get("jobs") or {}
    runs = {
        name: "\n".join(str(s.get("run", "")) for s in job.get("steps") or []) for name, job in jobs.items()
    }
    everything = "\n".join(runs.values())
    for needed in (
        "ruff check",
        "make typecheck",
        "lint-imports --no-logo importlinter.ini",
        "make test-deep",
    ):
        if needed not in everything:
            problems.append(f"workflow: no step runs `{needed}`")
    testing = [n for n, r in runs.items() if re.search(r"make (test|pytest)\b", r)]
    if not testing:
        problems.append("workflow: no job runs the tests")
    for name in testing:
        job = jobs[name]
        ports = {
            svc: [str(p) for p in spec.get("ports") or []]
            for svc, spec in (job.get("services") or {}).items()
        }
        if ["5432:5432"] not in ports.values() or ["6379:6379"] not in ports.values():
            problems.append(f"workflow {name}: PostgreSQL and Redis service containers on 5432/6379 expected")
        if str((job.get("env") or {}).get("CI", "")).lower() != "true":
            problems.append(f"workflow {name}: CI=true not set (missing servers would skip tests)")
    deploys = [n for n, r in runs.items() if "kubectl apply -k" in r]
    if not deploys:
        problems.append("workflow: no job deploys with kubectl apply -k")
    for name in deploys:
        condition = str(jobs[name].get("if", ""))
        if "refs/heads/main" not in condition or "push" not in condition:
            problems.append(f"workflow {name}: deploys on more than pushes to main ({condition!r})")
        overlay = str((jobs[name].get("env") or {}).get("OVERLAY", ""))
        if (m.root / overlay).resolve() != (m.k8s / "overlays/production").resolve():
            problems.append(f"workflow {name}: deploys {overlay!r}, not deploy/k8s/overlays/production")
    return problems


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def repo() -> Manifests:
    return Manifests(ROOT)


def test_known_variables_are_what_from_env_reads() -> None:
    known = known_variables()

    assert {f"SHOP_{m.upper()}_DATABASE_URL" for m in MODULE_NAMES} <= known
    assert {"SHOP_DATABASE_URL", "SHOP_REDIS_URL", "SHOP_TRANSPORT", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= known
    default = Settings.from_env({})
    for name in known:  # each one is read: a value changes the settings, or is refused naming it
        try:
            noticed = Settings.from_env({name: "\x00not valid\x00"}) != default
        except SettingsError as exc:
            noticed = name in str(exc)
        assert noticed, name
    assert "SHOP_SERVE_MODULES" not in known  # set by the CLI for its own app factory


def test_every_role_serves_health_ready_and_metrics(role_paths: dict[str, frozenset[str]]) -> None:
    for role in ("run", "gateway", *MODULE_NAMES):
        assert set(OPS_PATHS) <= role_paths[role], role


def test_yaml_files_parse(repo: Manifests) -> None:
    assert check_yaml_parses(repo) == []


def test_kustomizations_are_complete(repo: Manifests) -> None:
    assert check_kustomizations(repo) == []


def test_every_role_is_deployed_in_compose_and_k8s(repo: Manifests) -> None:
    assert check_every_role_is_deployed(repo) == []


def test_commands_are_ones_the_cli_accepts(repo: Manifests) -> None:
    assert check_commands_parse(repo) == []


def test_environment_variables_are_settings(repo: Manifests) -> None:
    assert check_environment_variables(repo) == []


def test_probe_healthcheck_and_scrape_paths_are_served(
    repo: Manifests, role_paths: dict[str, frozenset[str]]
) -> None:
    assert check_paths_are_served(repo, role_paths) == []


def test_ports_and_addresses_agree(repo: Manifests) -> None:
    assert check_ports_and_addresses(repo) == []


def test_image_names_agree(repo: Manifests) -> None:
    assert check_image_names(repo) == []


def test_dashboards_plot_real_metrics(repo: Manifests) -> None:
    assert check_dashboards(repo) == []


def test_pending_metric_families_have_the_promised_shape() -> None:
    families = metric_families()
    for name, (kind, labels) in PENDING_METRICS.items():
        if name in families:  # added since: it must be what the dashboard assumes
            assert (families[name].type, families[name].labels) == (kind, labels)


def test_dockerfile(repo: Manifests) -> None:
    assert check_dockerfile(repo) == []


def test_observability_wiring(repo: Manifests) -> None:
    assert check_observability_wiring(repo) == []


def test_no_default_credentials_and_only_users_holds_the_signing_key(repo: Manifests) -> None:
    assert check_secrets(repo) == []


def test_workflow(repo: Manifests) -> None:
    assert check_workflow(repo) == []


def _copy_of_the_manifests(root: Path) -> Path:
    for name in ("Dockerfile", ".dockerignore", "Makefile"):
        shutil.copy(ROOT / name, root / name)
    for name in ("deploy", ".github"):
        shutil.copytree(ROOT / name, root / name)
    return root


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed"
)
@pytest.mark.parametrize("folder", ["base", "overlays/staging", "overlays/production"])
def test_kustomize_builds(tmp_path: Path, folder: str) -> None:
    root = _copy_of_the_manifests(tmp_path)
    for example in (root / "deploy/k8s").rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    built = subprocess.run(
        ["kubectl", "kustomize", str(root / "deploy/k8s" / folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1
    assert next(iter(images)).startswith(f"{IMAGE}:")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == set(ROLES)


# Each mutation breaks a copy of the manifests in one way; the named check must report it.
Mutation = tuple[str, str, str, Callable[..., Problems]]
MUTATIONS: list[Mutation] = [
    ("deploy/compose.yaml", "services:\n", "services: [\n", check_yaml_parses),
    (
        "deploy/k8s/base/kustomization.yaml",
        "  - ingress.yaml\n",
        "  - ingress.yaml\n  - pdb.yaml\n",
        check_kustomizations,
    ),
    ("deploy/k8s/overlays/production/kustomization.yaml", "  - ../../base\n", "", check_kustomizations),
    (
        "deploy/k8s/overlays/staging/kustomization.yaml",
        "  - name: gateway\n",
        "  - name: gatewy\n",
        check_kustomizations,
    ),
    ("deploy/k8s/base/kustomization.yaml", "  - delivery.yaml\n", "", check_every_role_is_deployed),
    (
        "deploy/compose.yaml",
        '["shop", "serve", "payments"]',
        '["shop", "serve", "orders"]',
        check_every_role_is_deployed,
    ),
    ("deploy/compose.yaml", "      replicas: 2\n", "      replicas: 1\n", check_every_role_is_deployed),
    (
        "deploy/k8s/base/catalog-hpa.yaml",
        "    name: catalog\n",
        "    name: catalogue\n",
        check_every_role_is_deployed,
    ),
    (
        "deploy/k8s/base/ingress.yaml",
        "                name: gateway\n",
        "                name: users\n",
        check_every_role_is_deployed,
    ),
    (
        "deploy/compose.yaml",
        '["shop", "serve", "orders"]',
        '["shop", "serve", "order"]',
        check_commands_parse,
    ),
    (
        "deploy/k8s/base/gateway.yaml",
        '["shop", "gateway"]',
        '["shop", "gateway", "--prt", "1"]',
        check_commands_parse,
    ),
    (
        "deploy/k8s/base/configmap.yaml",
        "  SHOP_LOG_LEVEL: INFO\n",
        "  SHOP_LOGLEVEL: INFO\n",
        check_environment_variables,
    ),
    (
        "deploy/k8s/base/configmap.yaml",
        "  SHOP_LOG_LEVEL: INFO\n",
        "  SHOP_LOG_LEVEL: LOUD\n",
        check_environment_variables,
    ),
    (
        "deploy/k8s/base/secrets.yaml",
        "  SHOP_ADMIN_EMAIL:",
        "  SHOP_ADMIN_MAIL:",
        check_environment_variables,
    ),
    (
        "deploy/compose.yaml",
        "  SHOP_TRANSPORT: dramatiq\n",
        "  SHOP_TRANSPORT: kafka\n",
        check_environment_variables,
    ),
    (
        "deploy/compose.yaml",
        "      GF_SECURITY_ADMIN_USER",
        "      SHOP_ADMIN_EMAIL: a@b.c\n      GF_SECURITY_ADMIN_USER",
        check_environment_variables,
    ),
    (
        "deploy/k8s/overlays/production/secrets.env.example",
        "SHOP_DATABASE_URL=",
        "SHOP_DB_URL=",
        check_environment_variables,
    ),
    (
        "deploy/k8s/base/users.yaml",
        "name: shop-users-secrets",
        "name: shop-user-secrets",
        check_environment_variables,
    ),
    ("Dockerfile", "    SHOP_DATA_DIR=/app/var", "    SHOP_DATADIR=/app/var", check_environment_variables),
    ("deploy/k8s/base/orders.yaml", "path: /ready", "path: /readyz", check_paths_are_served),
    ("deploy/k8s/base/payments.yaml", "port: http\n", "port: web\n", check_paths_are_served),
    (
        "deploy/prometheus/prometheus.yml",
        "  - job_name: delivery\n    metrics_path: /metrics",
        "  - job_name: delivery\n    metrics_path: /metric",
        check_paths_are_served,
    ),
    (
        "deploy/prometheus/prometheus.yml",
        "      - names: [payments]",
        "      - names: [payment]",
        check_paths_are_served,
    ),
    ("Dockerfile", "/health' %", "/healthz' %", check_paths_are_served),
    ("deploy/k8s/base/configmap.yaml", ",payments=http://payments:8000", "", check_ports_and_addresses),
    (
        "deploy/k8s/base/configmap.yaml",
        "delivery=http://delivery:8000",
        "delivery=http://delivery:8080",
        check_ports_and_addresses,
    ),
    ("deploy/compose.yaml", "@redis:6379/0", "@cache:6379/0", check_ports_and_addresses),
    ("Dockerfile", "EXPOSE 8000", "EXPOSE 8080", check_ports_and_addresses),
    (
        "deploy/compose.yaml",
        "image: ghcr.io/shop-dev/shop:",
        "image: ghcr.io/shop-dev/shop-api:",
        check_image_names,
    ),
    (
        "deploy/k8s/base/delivery.yaml",
        "image: ghcr.io/shop-dev/shop:",
        "image: ghcr.io/shop/shop:",
        check_image_names,
    ),
    (
        "deploy/k8s/overlays/production/kustomization.yaml",
        "  - name: ghcr.io/shop-dev/shop\n",
        "  - name: shop\n",
        check_kustomizations,
    ),
    (
        ".github/workflows/ci.yml",
        "  IMAGE: ghcr.io/shop-dev/shop\n",
        "  IMAGE: ghcr.io/shop-dev/shop-app\n",
        check_image_names,
    ),
    (
        ".github/workflows/ci.yml",
        "${{ env.IMAGE }}:${{ github.sha }}\n",
        "${{ env.IMAGE }}:main\n",
        check_image_names,
    ),
    (
        "deploy/grafana/dashboards/shop.json",
        "max by (breaker) (shop_breaker_state",
        "max by (breaker) (shop_breaker_status",
        check_dashboards,
    ),
    (
        "deploy/grafana/dashboards/shop.json",
        "sum by (consumer) (rate(shop_bus_messages_handled",
        "sum by (consumr) (rate(shop_bus_messages_handled",
        check_dashboards,
    ),
    ("deploy/grafana/dashboards/shop.json", '"uid": "prometheus"', '"uid": "prom"', check_dashboards),
    (
        "deploy/grafana/dashboards/shop.json",
        "(increase(shop_sagas_finished_total",
        "(increase(shop_sagas_active",
        check_dashboards,
    ),
    ("deploy/grafana/dashboards/shop.json", '"panels": [', '"panels": [[', check_yaml_parses),
    ("Dockerfile", "USER shop:shop", "USER root", check_dockerfile),
    ("Dockerfile", "FROM ${PYTHON_IMAGE} AS builder", "RUN true", check_dockerfile),
    (
        "Dockerfile",
        "uv sync --frozen --no-dev --no-install-project",
        "uv sync --no-install-project",
        check_dockerfile,
    ),
    ("Dockerfile", "ARG UV_VERSION=0.13.8", "ARG UV_VERSION=0.4.0", check_dockerfile),
    ("Dockerfile", '["python", "-c", "import os', '["curl", "-c", "import os', check_dockerfile),
    (".dockerignore", ".venv\n", "", check_dockerfile),
    (
        "deploy/otel-collector.yaml",
        "      exporters: [otlp/jaeger]",
        "      exporters: [otlp/jeager]",
        check_observability_wiring,
    ),
    (
        "deploy/otel-collector.yaml",
        "endpoint: http://loki:3100/otlp",
        "endpoint: http://logs:3100/otlp",
        check_observability_wiring,
    ),
    (
        "deploy/compose.yaml",
        "./prometheus/prometheus.yml:",
        "./prometheus/prometheus.yaml:",
        check_observability_wiring,
    ),
    (
        "deploy/grafana/provisioning/datasources/shop.yaml",
        "url: http://loki:3100",
        "url: http://lokki:3100",
        check_observability_wiring,
    ),
    (
        "deploy/compose.yaml",
        "http://otel-collector:4318",
        "http://otel-collector:4317",
        check_observability_wiring,
    ),
    (
        "deploy/compose.yaml",
        "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}",
        "${GRAFANA_ADMIN_PASSWORD:-admin}",
        check_secrets,
    ),
    (
        "deploy/compose.yaml",
        "${SHOP_ADMIN_PASSWORD:?set SHOP_ADMIN_PASSWORD}",
        "${SHOP_ADMIN_PASSWORD:-change-me-please}",
        check_secrets,
    ),
    (
        "deploy/compose.yaml",
        "redis://:${SHOP_REDIS_PASSWORD:?set SHOP_REDIS_PASSWORD}@redis:6379/0",
        "redis://redis:6379/0",
        check_secrets,
    ),
    (
        "deploy/compose.yaml",
        "    - jwt-public:/keys/public:ro\n  restart: unless-stopped",
        "    - jwt-public:/keys/public:ro\n    - jwt-private:/keys/private:ro\n  restart: unless-stopped",
        check_secrets,
    ),
    (".github/workflows/ci.yml", "  pull_request:\n", "", check_workflow),
    (
        ".github/workflows/ci.yml",
        '      CI: "true"\n      SHOP_TEST_POSTGRES_URL',
        "      SHOP_TEST_POSTGRES_URL",
        check_workflow,
    ),
    (
        ".github/workflows/ci.yml",
        "if: github.event_name == 'push' && github.ref == 'refs/heads/main'\n    needs: [image]",
        "needs: [image]",
        check_workflow,
    ),
    (".github/workflows/ci.yml", "- run: make test-deep", "- run: make test", check_workflow),
]


@pytest.mark.parametrize(
    ("file", "old", "new", "check"),
    MUTATIONS,
    ids=[f"{m[3].__name__}:{m[0]}:{i}" for i, m in enumerate(MUTATIONS)],
)
def test_each_check_catches_a_broken_manifest(
    tmp_path: Path,
    role_paths: dict[str, frozenset[str]],
    file: str,
    old: str,
    new: str,
    check: Callable[..., Problems],
) -> None:
    root = _copy_of_the_manifests(tmp_path)
    target = root / file
    text = target.read_text()
    assert old in text, f"the mutation no longer applies to {file}: {old!r}"
    target.write_text(text.replace(old, new, 1))
    manifests = Manifests(root)
    arguments: list[Any] = [manifests, role_paths] if check is check_paths_are_served else [manifests]

    try:
        problems = check(*arguments)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:  # broken beyond reading
        problems = [repr(exc)]

    assert problems, f"{check.__name__} did not notice {file}: {old!r} -> {new!r}"
