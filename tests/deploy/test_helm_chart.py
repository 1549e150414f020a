"""The Helm chart in helm/kafka-qa-worker, rendered and linted by Helm's own engine.

helm-python-sdk binds Helm's Go SDK (no helm binary): `Chart.render` runs the same template
engine and values.schema.json validation as `helm install`, and `lint` is `helm lint`. The
rendered objects are checked against the worker itself: its configuration object for the
environment, its HTTP server for the probes, its metrics registry for the alert and dashboard
queries, its command line for the export init container, and Kubernetes' OpenAPI schemas.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import math
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import helm_python as helm
import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client.metrics_core import Metric

from tests.support.crd_validation import crd_problems
from tests.support.otlp import OtlpReceiver
from worker.backends.onnx import stream_layout
from worker.cli import build_parser
from worker.config import Settings, base_type, env_name
from worker.observability.http import HealthServer
from worker.observability.metrics import METRIC_NAMES, WorkerMetrics
from worker.observability.tracing import build_tracing
from worker.qa import QAOptions
from worker.stream.transport import faust_credentials, ssl_context
from worker.tagging import load_question_sets, parse_topic_sets

CHART = Path(__file__).resolve().parents[2] / "helm" / "kafka-qa-worker"
RELEASE, NAMESPACE = "qa", "ml"
FULLNAME = f"{RELEASE}-kafka-qa-worker"


def kube_version_floor() -> str:
    """The oldest Kubernetes the chart supports: Chart.yaml's kubeVersion lower bound, as X.Y."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    found = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(\.\d+)?(-0)?", constraint.strip())
    assert found, f"kubeVersion {constraint!r} is not a plain lower bound"
    return f"{found[1]}.{found[2]}"


# Kubernetes' own schemas at the oldest version the chart supports and the newest one
# kubernetes-validate ships; custom resources are checked against their CRDs' schemas instead.
KUBE_VERSIONS = (kube_version_floor(), kubernetes_validate.latest_version())
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}

# Settings the chart sets from other values than `config`: the model folder from `model`, the
# password from a Secret, the TLS and question-sets file paths from where their Secret and
# ConfigMap are mounted, tracing from `tracing`, the group instance id from the pod's name.
# Settings the chart derives from the CPU limit when they are null.
STREAM_LAYOUT = {"inference_streams", "threads"}
# And all the settings the chart derives from other values when they are null: the session
# timeout too, from `staticMembership`.
CHART_DERIVED = STREAM_LAYOUT | {"session_timeout_s"}
CHART_MANAGED = {
    "model",
    "tracing",
    "group_instance_id",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "question_sets",
}
# Environment variables besides the worker's settings: where writable files go (HOME, TMPDIR;
# the root filesystem is read-only) and the Hub cache of the export init container.
OTHER_ENV = {"HOME", "TMPDIR", "HF_HOME"}
# The standard variables the OpenTelemetry SDK reads
# (worker.observability.tracing_otel.otlp_tracing).
OTEL_ENV = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
}

SASL_TLS = {
    "config": {
        "securityProtocol": "SASL_SSL",
        "saslMechanism": "SCRAM-SHA-512",
        "saslUsername": "qa-user",
    },
    "kafka": {
        "sasl": {"password": "s3cret"},
        "tls": {"existingSecret": "kafka-client-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
    },
}

QUESTION_SETS = {
    "acquisitions": {
        "fields": {
            "buyer": {"question": "Which company made the acquisition?"},
            "price": {"question": "How much was paid?", "null_threshold": 0.1, "top_k": 2},
        }
    }
}

# The value sets every structural test runs on.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "keda": {"keda": {"enabled": True}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        }
    },
    "sasl-tls": {**SASL_TLS, "keda": {"enabled": True}},
    "model-pvc": {"model": {"source": "pvc", "pvc": {"existingClaim": "qa-models"}}},
    "model-export": {
        "model": {
            "source": "export",
            "export": {"source": "/checkpoints/mobilebert", "checkpointClaim": "checkpoints"},
        }
    },
    "hpa": {"autoscaling": {"enabled": True}},
    "dynamic-membership": {"staticMembership": {"enabled": False}, "keda": {"enabled": True}},
    "tagging": {
        "config": {"documentsTopics": "news=acquisitions, filings", "replyTopics": "replies.*"},
        "tagging": {"questionSets": QUESTION_SETS},
        "keda": {"enabled": True},
    },
    "tracing": {
        "tracing": {
            "enabled": True,
            "endpoint": "http://otel-collector.observability:4318",
            "serviceName": "qa-east",
            "samplerRatio": 0.25,
            "resourceAttributes": "deployment.environment=prod,team=search",
        },
        "config": {"logFormat": "json"},
        "metrics": {"prometheusRule": {"enabled": True, "abstentions": {"enabled": True}}},
    },
}


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


SETTING_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
WORKER_ENV = {env_name(name) for name in SETTING_FIELDS}


# ---------------------------------------------------------------------------------------------
# Rendering.


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@dataclasses.dataclass
class Rendered:
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} objects named {name or 'anything'}"
        return found[0]

    @property
    def workload(self) -> dict[str, Any]:
        """The workers' StatefulSet (static membership) or Deployment: exactly one of them."""
        (found,) = self.all("StatefulSet") + self.all("Deployment")
        return found

    @property
    def workload_reference(self) -> dict[str, str]:
        """The workload as an autoscaler names it (`scaleTargetRef`)."""
        metadata = self.workload["metadata"]
        return {"apiVersion": "apps/v1", "kind": self.workload["kind"], "name": metadata["name"]}

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"]["labels"]

    @property
    def worker(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "worker"]
        return container

    def secret_data(self, name: str) -> dict[str, str] | None:
        """A rendered Secret's data, decoded; None when the chart does not create it."""
        for secret in self.all("Secret"):
            if secret["metadata"]["name"] == name:
                data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
                return data | secret.get("stringData", {})
        return None

    def environment(
        self, existing_secrets: dict[str, dict[str, str]], ordinal: int = 0
    ) -> dict[str, str]:
        """The worker container's environment as the kubelet would build it, in the StatefulSet's
        pod `ordinal` (named `<StatefulSet>-<ordinal>`, as Kubernetes names them)."""
        environ: dict[str, str] = {}
        for source in self.worker.get("envFrom", []):
            environ.update(self.one("ConfigMap", source["configMapRef"]["name"])["data"])
        for item in self.worker.get("env", []):
            if "value" in item:
                environ[item["name"]] = item["value"]
            elif "fieldRef" in item["valueFrom"]:
                assert item["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name"}
                assert self.workload["kind"] == "StatefulSet", "only its pods' names are stable"
                environ[item["name"]] = f"{self.workload['metadata']['name']}-{ordinal}"
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                data = self.secret_data(ref["name"]) or existing_secrets[ref["name"]]
                environ[item["name"]] = data[ref["key"]]
        return environ


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = [
        obj
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for obj in yaml.safe_load_all(text)
        if obj
    ]
    return Rendered(objects)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# Helm's own checks.


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], problems or report["errors"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_are_valid_kubernetes_objects(chart: helm.Chart, name: str) -> None:
    rendered = render(chart, VALUE_SETS[name])
    checked = 0
    for obj in rendered.objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # custom resources: test_custom_resources_match_their_crds
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} ({version}): {error.message}")
        checked += 1
    assert checked >= 5


def test_the_oldest_supported_kubernetes_has_schemas() -> None:
    # kubernetes-validate would otherwise fail on an unknown version, not on the chart.
    floor = kube_version_floor()
    known = kubernetes_validate.utils.all_versions()
    assert any(v == floor or v.startswith(f"{floor}.") for v in known), (floor, known)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_custom_resources_match_their_crds(chart: helm.Chart, name: str) -> None:
    custom = [
        o for o in render(chart, VALUE_SETS[name]).objects if o["apiVersion"].startswith(CRD_GROUPS)
    ]
    problems = crd_problems(custom)
    assert not any(problems), [
        f"{o['kind']} {o['metadata']['name']}: {p}"
        for o, p in zip(custom, problems, strict=True)
        if p
    ]


def test_the_value_sets_render_every_custom_resource(chart: helm.Chart) -> None:
    rendered = {o["kind"] for values in VALUE_SETS.values() for o in render(chart, values).objects}
    # Each kind the chart can create is validated by test_custom_resources_match_their_crds.
    assert rendered >= CUSTOM_KINDS, CUSTOM_KINDS - rendered


# Negative controls: each validator, given a rendered object with one mistake, must refuse it.
def break_workload_replicas(obj: dict[str, Any]) -> None:
    obj["spec"]["replicas"] = "two"


def break_service_port(obj: dict[str, Any]) -> None:
    obj["spec"]["ports"][0]["port"] = "http"


def break_with_unknown_field(obj: dict[str, Any]) -> None:
    obj["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True


@pytest.mark.parametrize(
    ("kind", "mistake"),
    [
        ("StatefulSet", break_workload_replicas),
        ("Service", break_service_port),
        # Only --strict rejects a field the schema does not have.
        ("StatefulSet", break_with_unknown_field),
    ],
)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_kubernetes_validate_rejects_a_broken_object(
    chart: helm.Chart, kind: str, mistake: Callable[[dict[str, Any]], None], version: str
) -> None:
    obj = copy.deepcopy(render(chart, VALUE_SETS["defaults"]).one(kind, FULLNAME))
    kubernetes_validate.validate(obj, version, strict=True)
    mistake(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, version, strict=True)


def break_scaled_object(obj: dict[str, Any]) -> None:
    obj["spec"]["minReplicaCount"] = "one"


def break_trigger_authentication(obj: dict[str, Any]) -> None:
    del obj["spec"]["secretTargetRef"][0]["parameter"]


def break_service_monitor(obj: dict[str, Any]) -> None:
    obj["spec"]["endpoints"][0]["interval"] = "every minute"


def break_prometheus_rule(obj: dict[str, Any]) -> None:
    del obj["spec"]["groups"][0]["rules"][0]["expr"]


def test_the_crd_schemas_reject_broken_custom_resources(chart: helm.Chart) -> None:
    mistakes = {
        "ScaledObject": break_scaled_object,
        "TriggerAuthentication": break_trigger_authentication,
        "ServiceMonitor": break_service_monitor,
        "PrometheusRule": break_prometheus_rule,
    }
    objects = render(chart, VALUE_SETS["sasl-tls"]).objects
    objects += render(chart, VALUE_SETS["monitoring"]).objects
    custom = [copy.deepcopy(o) for o in objects if o["kind"] in mistakes]
    assert {o["kind"] for o in custom} == set(mistakes)
    assert not any(crd_problems(custom))
    for obj in custom:
        mistakes[obj["kind"]](obj)
    problems = crd_problems(custom)
    assert all(problems), [o["kind"] for o, p in zip(custom, problems, strict=True) if not p]


BAD_VALUES = [
    ({"config": {"topK": 0}}, "/config/topK"),
    ({"config": {"tpoK": 3}}, "tpoK"),
    ({"config": {"saslPassword": "x"}}, "saslPassword"),
    ({"config": {"securityProtocol": "TLS"}}, "/config/securityProtocol"),
    ({"config": {"broker": "kafka"}}, "/config/broker"),
    ({"config": {"questionsTopic": "two words"}}, "/config/questionsTopic"),
    ({"config": {"httpPort": 70000}}, "/config/httpPort"),
    ({"config": {"batchSize": 2.5}}, "/config/batchSize"),
    ({"config": {"precision": "fp16"}}, "/config/precision"),
    ({"config": {"securityProtocol": "SASL_SSL", "saslUsername": "u"}}, "/kafka/sasl"),
    (
        {"config": {"securityProtocol": "SASL_SSL"}, "kafka": {"sasl": {"password": "p"}}},
        "saslUsername",
    ),
    ({"config": {"saslUsername": "u"}}, "/config/securityProtocol"),
    ({"kafka": {"tls": {"existingSecret": "tls"}}}, "/config/securityProtocol"),
    (
        {
            "config": {"securityProtocol": "SSL"},
            "kafka": {"tls": {"existingSecret": "tls", "keyKey": "tls.key"}},
        },
        "/kafka/tls/certKey",
    ),
    ({"keda": {"enabled": True}, "autoscaling": {"enabled": True}}, "/autoscaling/enabled"),
    ({"keda": {"allowIdleConsumers": True, "limitToPartitionsWithLag": True}}, "not"),
    ({"keda": {"lagThreshold": 0}}, "/keda/lagThreshold"),
    ({"model": {"source": "pvc"}}, "/model/pvc/existingClaim"),
    ({"model": {"source": "export"}}, "/model/export/source"),
    ({"model": {"source": "s3"}}, "/model/source"),
    ({"extraEnv": [{"name": "QA_TOP_K", "value": "3"}]}, "/extraEnv/0/name"),
    ({"kafka": {"questionsTopicPartitions": 0}}, "/kafka/questionsTopicPartitions"),
    ({"config": {"documentsTopics": "news=acquisitions"}}, "/tagging"),
    ({"config": {"documentsTopics": "news=a=b"}}, "/config/documentsTopics"),
    ({"replicas": 3}, "replicas"),
    ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
    ({"tracing": {"samplerRatio": 1.5}}, "/tracing/samplerRatio"),
    ({"tracing": {"samplerRatio": -0.1}}, "/tracing/samplerRatio"),
    ({"tracing": {"endpoint": "otel-collector:4318"}}, "/tracing/endpoint"),
    ({"tracing": {"resourceAttributes": "team"}}, "/tracing/resourceAttributes"),
    ({"tracing": {"sampler": "always_on"}}, "sampler"),
    ({"metrics": {"prometheusRule": {"abstentions": {"jump": 0}}}}, "/metrics/prometheusRule"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_bad_values_fail_the_schema(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert where in str(caught.value)
    # helm lint reports the same values as an error.
    assert helm.lint(CHART, values, namespace=NAMESPACE)["errors"]


def test_schema_types_follow_the_worker_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = schema["properties"]["config"]["properties"]
    expected_keys = {camel(name) for name in SETTING_FIELDS if name not in CHART_MANAGED}
    assert set(properties) == expected_keys
    kinds = {int: "integer", float: "number", bool: "boolean", str: "string", Path: "string"}
    for name, field in SETTING_FIELDS.items():
        if name in CHART_MANAGED:
            continue
        prop = properties[camel(name)]
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert kinds[base_type(field)] in types, name
        # Optional settings (default None) accept null, which leaves the worker's default.
        derived = name in CHART_DERIVED
        assert ("null" in types) == (field.default is None or derived), name
        if field.metadata["choices"]:
            assert [c for c in prop["enum"] if c is not None] == list(field.metadata["choices"])


# ---------------------------------------------------------------------------------------------
# The environment: every variable is one the worker reads, every setting can be reached.


def environment_names(rendered: Rendered) -> set[str]:
    names = set(rendered.one("ConfigMap", FULLNAME)["data"])
    for container in rendered.pod["containers"] + rendered.pod.get("initContainers", []):
        names |= {item["name"] for item in container.get("env", [])}
    return names


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_environment_variable_is_one_the_worker_reads(chart: helm.Chart, name: str) -> None:
    rendered = render(chart, VALUE_SETS[name])
    names = environment_names(rendered)
    settings = {n for n in names if n.startswith("QA_")}
    assert settings <= WORKER_ENV, settings - WORKER_ENV
    assert names - settings <= OTHER_ENV | OTEL_ENV, names - settings - OTHER_ENV - OTEL_ENV
    # The only environment source is the chart's ConfigMap.
    assert rendered.worker["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]


def test_every_worker_setting_is_reachable_from_values(chart: helm.Chart) -> None:
    # Every optional setting given a value, with SASL, TLS and tagging on: all settings reach
    # the worker.
    everything = merge(
        merge(merge(SASL_TLS, VALUE_SETS["tagging"]), VALUE_SETS["tracing"]),
        {
            "config": {
                "precision": "int8",
                "threads": 3,
                "inferenceStreams": 2,
                "maxSeqLen": 256,
                "docStride": 64,
                "nullThreshold": 0.25,
                "deadlineMs": 5000,
                "modelRevision": "main",
                "modelCache": "/tmp/models",
                "progress": False,
            }
        },
    )
    rendered = render(chart, everything)
    assert {n for n in environment_names(rendered) if n.startswith("QA_")} == WORKER_ENV
    # And values.yaml lists every setting the chart does not manage itself.
    expected = {camel(name) for name in SETTING_FIELDS if name not in CHART_MANAGED}
    assert set(chart_values()["config"]) == expected


def test_chart_defaults_are_the_worker_defaults() -> None:
    # Deliberate differences: the brokers (a Service named kafka in the namespace rather than
    # localhost), the stream layout (derived from the CPU limit, see
    # test_stream_layout_follows_cpu_limit) and the session timeout (derived from the
    # membership, see test_the_session_timeout_follows_the_membership).
    deliberate = {"broker", *CHART_DERIVED}
    config = chart_values()["config"]
    for name, field in SETTING_FIELDS.items():
        if name in CHART_MANAGED | deliberate:
            continue
        assert config[camel(name)] == field.default, name


LARGE_AND_FRACTIONAL = {
    "config": {
        "maxContextChars": 5_000_000,
        "maxBatchTokens": 16_384,
        "nullThreshold": -0.125,
        "sessionTimeoutS": 12.5,
        "drainTimeoutS": 45.5,
        "maxWaitMs": 2.0,
        "handleImpossibleAnswer": True,
        "deadlineMs": 120_000,
        "groupId": "qa-prod",
    }
}


@pytest.mark.parametrize("name", [*VALUE_SETS, "large-and-fractional"])
def test_the_worker_parses_the_rendered_environment(chart: helm.Chart, name: str) -> None:
    values = VALUE_SETS.get(name, LARGE_AND_FRACTIONAL)
    rendered = render(chart, values)
    environ = rendered.environment(existing_secrets={})
    settings = Settings.from_sources(None, environ)
    merged_config = merge(chart_values()["config"], values.get("config", {}))
    for key, value in merged_config.items():
        field = next(f for f in SETTING_FIELDS if camel(f) == key)
        if value is not None and field not in STREAM_LAYOUT:
            assert getattr(settings, field) == value, key
    assert str(settings.model) == rendered.one("ConfigMap", FULLNAME)["data"]["QA_MODEL"]


# ---------------------------------------------------------------------------------------------
# Probes, ports and shutdown.


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_probes_and_metrics_endpoints_are_the_workers(
    chart: helm.Chart, http: aiohttp.ClientSession
) -> None:
    rendered = render(chart, merge(VALUE_SETS["monitoring"], {"config": {"httpPort": 9123}}))
    worker = rendered.worker
    (port,) = worker["ports"]
    settings = Settings.from_sources(None, rendered.environment({}))
    # The container port is the one the worker binds, and the probes, Service and
    # ServiceMonitor all refer to it by name.
    assert port == {"name": "http", "containerPort": settings.http_port, "protocol": "TCP"}
    probes = {kind: worker[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe")}
    probes["readinessProbe"] = worker["readinessProbe"]["httpGet"]
    assert {probe["port"] for probe in probes.values()} == {"http"}
    assert rendered.one("Service", FULLNAME)["spec"]["ports"][0]["targetPort"] == "http"
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "http"

    ready = False
    server = HealthServer(WorkerMetrics(), lambda: (ready, "no partitions"), "127.0.0.1", 0)
    async with server:
        base = f"http://127.0.0.1:{server.port}"

        async def status(path: str) -> int:
            async with http.get(base + path) as response:
                return response.status

        # Liveness (and startup) answer as soon as the server runs; readiness follows the worker.
        assert await status(probes["livenessProbe"]["path"]) == 200
        assert await status(probes["startupProbe"]["path"]) == 200
        assert await status(probes["readinessProbe"]["path"]) == 503
        ready = True
        assert await status(probes["readinessProbe"]["path"]) == 200
        async with http.get(base + endpoint["path"]) as response:
            assert response.status == 200
            assert "qa_worker_ready" in await response.text()


@pytest.mark.parametrize("drain", [30.0, 0.5, 119.2, 600])
def test_termination_grace_outlasts_the_drain(chart: helm.Chart, drain: float) -> None:
    rendered = render(chart, {"config": {"drainTimeoutS": drain}})
    grace = rendered.pod["terminationGracePeriodSeconds"]
    worker_drain = Settings.from_sources(None, rendered.environment({})).drain_timeout_s
    assert worker_drain == drain
    assert grace > worker_drain
    assert grace == math.ceil(drain) + chart_values()["terminationGraceMarginSeconds"]


@pytest.mark.parametrize(
    ("resources", "cores", "config", "expected"),
    [
        ({"limits": {"cpu": "2"}}, 2, {}, (1, 2)),
        ({"limits": {"cpu": "1500m"}}, 2, {}, (1, 2)),
        ({"limits": {"cpu": 4}}, 4, {}, (1, 4)),
        ({"limits": {"cpu": "250m"}}, 1, {}, (1, 1)),
        ({"requests": {"cpu": "1"}}, 1, {}, (1, 1)),
        ({"limits": {"cpu": "2"}}, 2, {"threads": 6}, (6, 1)),
        ({"limits": {"cpu": 4}}, 4, {"threads": 2}, (2, 2)),
        ({"limits": {"cpu": 4}}, 4, {"inferenceStreams": 1}, (4, 1)),
        ({"limits": {"cpu": 4}}, 4, {"inferenceStreams": 3, "threads": 2}, (2, 3)),
    ],
)
def test_stream_layout_follows_cpu_limit(
    chart: helm.Chart,
    resources: dict[str, Any],
    cores: int,
    config: dict[str, int],
    expected: tuple[int, int],
) -> None:
    # Replacing the default resources needs the defaults' keys nulled (Helm merges maps).
    values: dict[str, Any] = {"resources": {"limits": None, "requests": None, **resources}}
    values["config"] = config
    rendered = render(chart, values)
    settings = Settings.from_sources(None, rendered.environment({}))
    assert (settings.threads, settings.inference_streams) == expected
    # The layout the worker itself would pick on the cores the limit gives.
    given = (config.get("inferenceStreams", 0), config.get("threads", 0))
    assert stream_layout(*given, cores=cores) == expected


def test_stream_layout_given_as_auto_is_left_to_the_worker(chart: helm.Chart) -> None:
    rendered = render(chart, {"config": {"inferenceStreams": 0, "threads": 0}})
    settings = Settings.from_sources(None, rendered.environment({}))
    assert (settings.inference_streams, settings.threads) == (0, 0)


# ---------------------------------------------------------------------------------------------
# Security and placement.


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_run_locked_down_with_only_emptydirs_writable(chart: helm.Chart, name: str) -> None:
    rendered = render(chart, VALUE_SETS[name])
    pod = rendered.pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        for mount in container["volumeMounts"]:
            writable = not mount.get("readOnly", False)
            # Writable places are scratch space; the model the worker loads never is.
            if writable:
                assert "emptyDir" in volumes[mount["name"]], (container["name"], mount)
    worker = rendered.worker
    mounts = {mount["mountPath"]: mount for mount in worker["volumeMounts"]}
    # HOME and TMPDIR, and the working directory where faust creates its data directory.
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert mounts[env["HOME"]]["name"] == mounts[env["TMPDIR"]]["name"] == "tmp"
    assert "emptyDir" in volumes[mounts[worker["workingDir"]]["name"]]


def test_replicas_spread_over_zones_and_nodes(chart: helm.Chart) -> None:
    rendered = render(chart, {})
    pod_labels = rendered.pod_labels
    constraints = rendered.pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in constraints:
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()


@pytest.mark.parametrize("name", ["defaults", "dynamic-membership"])
def test_rollouts_never_surge_past_the_partitions(chart: helm.Chart, name: str) -> None:
    # An extra replica during a rollout could get no partition, stay unready and stall it.
    rendered = render(chart, VALUE_SETS[name])
    spec = rendered.workload["spec"]
    if spec.get("serviceName"):
        # A StatefulSet has no surge: it replaces one pod at a time (maxUnavailable absent).
        assert spec["updateStrategy"] == {"type": "RollingUpdate"}
        assert "strategy" not in spec
    else:
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    budget = rendered.one("PodDisruptionBudget")["spec"]
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["selector"]["matchLabels"].items() <= rendered.pod_labels.items()


def test_disruption_budget_takes_either_bound(chart: helm.Chart) -> None:
    default = render(chart, {}).one("PodDisruptionBudget")["spec"]
    assert default["maxUnavailable"] == 1 and "minAvailable" not in default
    values = {"podDisruptionBudget": {"minAvailable": "50%"}}
    spec = render(chart, values).one("PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == "50%" and "maxUnavailable" not in spec
    assert not render(chart, {"podDisruptionBudget": {"enabled": False}}).all("PodDisruptionBudget")


def test_config_changes_roll_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = render(chart, values).workload["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"topK": 3}})


# ---------------------------------------------------------------------------------------------
# Rolling restarts: static membership.


def test_each_pod_joins_the_group_under_its_own_stable_name(chart: helm.Chart) -> None:
    rendered = render(chart, {})
    assert rendered.workload["kind"] == "StatefulSet"
    # The instance id comes from the pod itself, so it is in no ConfigMap shared by the pods.
    assert "QA_GROUP_INSTANCE_ID" not in rendered.one("ConfigMap", FULLNAME)["data"]
    pods = [Settings.from_sources(None, rendered.environment({}, ordinal=n)) for n in range(3)]
    # Each pod's name: distinct among the replicas, the same whenever the StatefulSet brings
    # that pod back, and an id the worker accepts.
    names = [f"{FULLNAME}-{ordinal}" for ordinal in range(3)]
    assert [settings.group_instance_id for settings in pods] == names
    assert {settings.group_id for settings in pods} == {"kafka-qa-worker"}


def test_the_statefulset_has_its_headless_service_and_scales_in_parallel(chart: helm.Chart) -> None:
    rendered = render(chart, {})
    spec = rendered.workload["spec"]
    governing = rendered.one("Service", spec["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= rendered.pod_labels.items()
    assert spec["selector"]["matchLabels"].items() <= rendered.pod_labels.items()
    # Scaling starts and stops pods all at once; rollouts are one pod at a time regardless.
    assert spec["podManagementPolicy"] == "Parallel"


def test_dynamic_membership_keeps_a_deployment_without_instance_ids(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["dynamic-membership"])
    assert rendered.workload["kind"] == "Deployment"
    assert "QA_GROUP_INSTANCE_ID" not in environment_names(rendered)
    assert Settings.from_sources(None, rendered.environment({})).group_instance_id is None
    assert [service["metadata"]["name"] for service in rendered.all("Service")] == [FULLNAME]


@pytest.mark.parametrize(
    ("values", "session_timeout_s"),
    [
        # Static members: a session longer than a pod's restart, from staticMembership.
        ({}, 60.0),
        ({"staticMembership": {"sessionTimeoutS": 120}}, 120.0),
        # Dynamic members: the worker's own default.
        ({"staticMembership": {"enabled": False}}, SETTING_FIELDS["session_timeout_s"].default),
        # A session timeout given in config wins either way.
        ({"config": {"sessionTimeoutS": 25}}, 25.0),
        ({"config": {"sessionTimeoutS": 25}, "staticMembership": {"enabled": False}}, 25.0),
    ],
)
def test_the_session_timeout_follows_the_membership(
    chart: helm.Chart, values: dict[str, Any], session_timeout_s: float
) -> None:
    settings = Settings.from_sources(None, render(chart, values).environment({}))
    assert settings.session_timeout_s == session_timeout_s


def test_a_statefulset_name_too_long_for_its_pods_is_refused(chart: helm.Chart) -> None:
    # Kubernetes labels each StatefulSet pod with the name and an 11-character revision suffix,
    # at most 63 characters: a longer name would leave the StatefulSet unable to make pods.
    with pytest.raises(helm.HelmError) as caught:
        render(chart, {"fullnameOverride": "q" * 53})
    assert "fullnameOverride" in str(caught.value)
    assert render(chart, {"fullnameOverride": "q" * 52}).workload["kind"] == "StatefulSet"
    dynamic = {"fullnameOverride": "q" * 53, "staticMembership": {"enabled": False}}
    assert render(chart, dynamic).workload["kind"] == "Deployment"


# ---------------------------------------------------------------------------------------------
# Kafka credentials.


@pytest.fixture(scope="module")
def client_certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate and key, used as the CA bundle and the client certificate."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=qa-test"),
            *("-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    cert = (folder / "cert.pem").read_text()
    return {"ca.crt": cert, "tls.crt": cert, "tls.key": (folder / "key.pem").read_text()}


def test_sasl_and_tls_settings_reach_the_worker(
    chart: helm.Chart, client_certificate: dict[str, str], tmp_path: Path
) -> None:
    rendered = render(chart, SASL_TLS)
    environ = rendered.environment(existing_secrets={})
    # Project the TLS Secret the way the kubelet does: its items as files under the mount.
    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    for mount in rendered.worker["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert secret["secretName"] == SASL_TLS["kafka"]["tls"]["existingSecret"]
        assert mount["readOnly"] is True
        for item in secret["items"]:
            file = tmp_path / mount["mountPath"].lstrip("/") / item["path"]
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(client_certificate[item["key"]])
    for name in ("QA_SSL_CAFILE", "QA_SSL_CERTFILE", "QA_SSL_KEYFILE"):
        environ[name] = str(tmp_path / environ[name].lstrip("/"))

    settings = Settings.from_sources(None, environ)
    assert settings.sasl_password == SASL_TLS["kafka"]["sasl"]["password"]
    assert settings.sasl_username == "qa-user"
    credentials = faust_credentials(settings)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.username == "qa-user" and credentials.password == "s3cret"
    # The mounted CA bundle and client certificate load into the worker's TLS context.
    context = ssl_context(settings)
    assert context is not None and context.cert_store_stats()["x509_ca"] == 1


def test_an_existing_sasl_secret_is_referenced_not_created(chart: helm.Chart) -> None:
    values = merge(SASL_TLS, {"kafka": {"sasl": {"existingSecret": "kafka-users", "password": ""}}})
    rendered = render(chart, values)
    refs = [
        item["valueFrom"]["secretKeyRef"]
        for item in rendered.worker["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    ]
    assert refs == [{"name": "kafka-users", "key": "password"}]
    assert rendered.secret_data(f"{FULLNAME}-sasl") is None
    environ = rendered.environment(existing_secrets={"kafka-users": {"password": "from-vault"}})
    assert Settings.from_sources(None, environ).sasl_password == "from-vault"


def test_question_sets_reach_the_worker(chart: helm.Chart, tmp_path: Path) -> None:
    rendered = render(chart, VALUE_SETS["tagging"])
    environ = rendered.environment(existing_secrets={})
    # Project the ConfigMap's file the way the kubelet does, where the container would see it.
    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    (mount,) = [m for m in rendered.worker["volumeMounts"] if m["name"] == "question-sets"]
    assert mount["readOnly"] is True
    source = volumes["question-sets"]["configMap"]
    data = rendered.one("ConfigMap", source["name"])["data"]
    for item in source["items"]:
        file = tmp_path / mount["mountPath"].lstrip("/") / item["path"]
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(data[item["key"]])
    environ["QA_QUESTION_SETS"] = str(tmp_path / environ["QA_QUESTION_SETS"].lstrip("/"))

    settings = Settings.from_sources(None, environ)
    sets = load_question_sets(settings.question_sets, settings.subset(QAOptions))
    assert list(sets) == ["acquisitions"]
    fields = {field.name: field for field in sets["acquisitions"].fields}
    assert set(fields) == {"buyer", "price"}
    assert fields["price"].options.top_k == 2
    assert parse_topic_sets(settings.documents_topics) == {"news": "acquisitions", "filings": None}


def test_an_existing_question_sets_config_map_is_mounted(chart: helm.Chart) -> None:
    values = merge(
        VALUE_SETS["tagging"], {"tagging": {"questionSets": None, "existingConfigMap": "sets"}}
    )
    rendered = render(chart, values)
    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    assert volumes["question-sets"]["configMap"]["name"] == "sets"
    assert not [c for c in rendered.all("ConfigMap") if "question-sets" in c["metadata"]["name"]]


# ---------------------------------------------------------------------------------------------
# Autoscaling.


def test_keda_scales_on_the_workers_own_group_and_topic(chart: helm.Chart) -> None:
    values = {
        "config": {"groupId": "answers-eu", "questionsTopic": "questions.eu", "broker": "b:9093"},
        "kafka": {"questionsTopicPartitions": 24},
        "keda": {"enabled": True, "lagThreshold": 2_000_000, "activationLagThreshold": 5},
    }
    rendered = render(chart, values)
    settings = Settings.from_sources(None, rendered.environment({}))
    scaled = rendered.one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == rendered.workload_reference
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    # The group and topic the worker consumes (its faust app id is the group id).
    assert metadata["consumerGroup"] == settings.group_id == "answers-eu"
    assert metadata["topic"] == settings.questions_topic == "questions.eu"
    assert metadata["bootstrapServers"] == settings.broker
    # KEDA reads trigger metadata as strings and parses the thresholds as integers.
    assert metadata["lagThreshold"] == "2000000"
    assert metadata["activationLagThreshold"] == "5"
    assert metadata["allowIdleConsumers"] == "false"
    assert metadata["limitToPartitionsWithLag"] == "false"
    assert metadata["offsetResetPolicy"] == "earliest"
    assert all(isinstance(value, str) for value in metadata.values())
    # At most one replica per partition by default.
    assert scaled["maxReplicaCount"] == 24 and scaled["minReplicaCount"] == 1
    # KEDA owns the replica count: no fixed replicas, no second autoscaler, no credentials needed.
    assert "replicas" not in rendered.workload["spec"]
    assert not rendered.all("HorizontalPodAutoscaler")
    assert "authenticationRef" not in trigger and not rendered.all("TriggerAuthentication")


def test_keda_measures_every_topic_the_group_consumes(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["tagging"])
    settings = Settings.from_sources(None, rendered.environment({}))
    triggers = rendered.one("ScaledObject")["spec"]["triggers"]
    expected = [settings.questions_topic, *parse_topic_sets(settings.documents_topics)]
    assert [trigger["metadata"]["topic"] for trigger in triggers] == expected
    assert {trigger["metadata"]["consumerGroup"] for trigger in triggers} == {settings.group_id}


def test_keda_options_pass_through(chart: helm.Chart) -> None:
    values = {
        "keda": {
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": 40,
            "allowIdleConsumers": True,
            "behavior": None,
        }
    }
    scaled = render(chart, values).one("ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 40)
    assert scaled["triggers"][0]["metadata"]["allowIdleConsumers"] == "true"
    assert "advanced" not in scaled
    limited = render(chart, {"keda": {"enabled": True, "limitToPartitionsWithLag": True}})
    metadata = limited.one("ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert metadata["limitToPartitionsWithLag"] == "true"


def test_keda_authenticates_like_the_worker(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["sasl-tls"])
    auth = rendered.one("TriggerAuthentication")
    trigger = rendered.one("ScaledObject")["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    existing = {"kafka-client-tls": {"ca.crt": "CA", "tls.crt": "CERT", "tls.key": "KEY"}}
    resolved = {}
    for ref in auth["spec"]["secretTargetRef"]:
        data = rendered.secret_data(ref["name"]) or existing[ref["name"]]
        resolved[ref["parameter"]] = data[ref["key"]]
    assert resolved == {
        "sasl": "scram_sha512",
        "username": "qa-user",
        "password": "s3cret",
        "tls": "enable",
        "ca": "CA",
        "cert": "CERT",
        "key": "KEY",
    }


@pytest.mark.parametrize(
    ("protocol", "mechanism", "sasl", "tls"),
    [
        ("SASL_PLAINTEXT", "PLAIN", "plaintext", "disable"),
        ("SASL_SSL", "SCRAM-SHA-256", "scram_sha256", "enable"),
        ("SSL", "PLAIN", None, "enable"),
    ],
)
def test_keda_sasl_and_tls_modes(
    chart: helm.Chart, protocol: str, mechanism: str, sasl: str | None, tls: str
) -> None:
    config: dict[str, Any] = {"securityProtocol": protocol, "saslMechanism": mechanism}
    kafka: dict[str, Any] = {}
    if sasl:
        config["saslUsername"] = "u"
        kafka["sasl"] = {"password": "p"}
    rendered = render(chart, {"config": config, "kafka": kafka, "keda": {"enabled": True}})
    data = rendered.secret_data(f"{FULLNAME}-keda-kafka")
    assert data is not None
    assert data.get("sasl") == sasl and data["tls"] == tls
    params = {
        ref["parameter"] for ref in rendered.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    }
    assert params == ({"sasl", "username", "password", "tls"} if sasl else {"tls"})


def test_cpu_autoscaler_is_capped_at_the_partition_count(chart: helm.Chart) -> None:
    rendered = render(
        chart, {"autoscaling": {"enabled": True}, "kafka": {"questionsTopicPartitions": 12}}
    )
    hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == rendered.workload_reference
    assert hpa["maxReplicas"] == 12
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in rendered.workload["spec"]


# ---------------------------------------------------------------------------------------------
# Model supply.


def test_model_baked_into_the_image(chart: helm.Chart) -> None:
    rendered = render(chart, {})
    assert rendered.environment({})["QA_MODEL"] == chart_values()["model"]["path"]
    assert "initContainers" not in rendered.pod
    assert {volume["name"] for volume in rendered.pod["volumes"]} == {"tmp", "state"}


def test_model_from_a_persistent_volume_claim(chart: helm.Chart) -> None:
    rendered = render(
        chart,
        {"model": {"source": "pvc", "pvc": {"existingClaim": "qa-models", "subPath": "bert"}}},
    )
    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "qa-models", "readOnly": True}
    (mount,) = [m for m in rendered.worker["volumeMounts"] if m["name"] == "model"]
    assert mount["readOnly"] is True
    model = Path(rendered.environment({})["QA_MODEL"])
    assert model == Path(mount["mountPath"]) / "bert"


def test_model_exported_by_an_init_container(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["model-export"])
    (init,) = rendered.pod["initContainers"]
    # The init container's arguments are a valid `qa-worker export` command line.
    args = build_parser().parse_args(init["args"])
    assert args.command == "export"
    assert args.source == "/checkpoints/mobilebert"
    assert args.quantize == "int8" and args.allow_pickle is False
    # It writes the folder the worker then loads, on a volume the two share.
    model = Path(rendered.environment({})["QA_MODEL"])
    assert args.out == model
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    worker_mounts = {m["name"]: m for m in rendered.worker["volumeMounts"]}
    assert model.is_relative_to(init_mounts["model"]["mountPath"])
    assert not init_mounts["model"].get("readOnly", False)
    assert worker_mounts["model"]["mountPath"] == init_mounts["model"]["mountPath"]
    assert worker_mounts["model"]["readOnly"] is True
    assert init_mounts["checkpoints"]["readOnly"] is True
    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "checkpoints"
    assert init["image"] == "kafka-qa-worker-exporter:" + chart_metadata()["appVersion"]


def chart_metadata() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# Alerts and dashboard.


def exported_series() -> set[str]:
    """Series names the worker's registry exposes, as PromQL sees them."""
    series: set[str] = set()
    family: Metric
    for family in WorkerMetrics().registry.collect():
        if family.type == "counter":
            series.add(family.name + "_total")
        elif family.type == "histogram":
            series |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            series.add(family.name)
    return series


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def check_query(expr: str, series: set[str]) -> set[str]:
    names = {selector.name for selector in selectors(expr)}
    assert names, expr
    assert names <= series, (names - series, expr)
    return names


def test_the_metric_contract_is_what_the_registry_exports() -> None:
    series = exported_series()
    for name in METRIC_NAMES:
        assert name in series or f"{name}_bucket" in series, name


def test_alerts_use_the_workers_metrics_for_this_release(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["monitoring"])
    (group,) = rendered.one("PrometheusRule")["spec"]["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    assert set(rules) == {
        "QAWorkerConsumerLagGrowing",
        "QAWorkerDeadLetterRateHigh",
        "QAWorkerLatencyP99High",
        "QAWorkerNoCommits",
        "QAWorkerNotReady",
        "QAWorkerPartitionStalled",
    }
    series = exported_series()
    used = {
        "QAWorkerConsumerLagGrowing": {"qa_worker_consumer_lag_messages"},
        "QAWorkerDeadLetterRateHigh": {
            "qa_worker_events_dead_lettered_total",
            "qa_worker_events_received_total",
        },
        "QAWorkerLatencyP99High": {"qa_worker_end_to_end_latency_seconds_bucket"},
        "QAWorkerNoCommits": {
            "qa_worker_seconds_since_last_commit",
            "qa_worker_consumer_lag_messages",
        },
        "QAWorkerNotReady": {"qa_worker_ready"},
        "QAWorkerPartitionStalled": {"qa_worker_partition_stalled"},
    }
    for alert, rule in rules.items():
        assert check_query(rule["expr"], series) == used[alert], alert
        # Only this release's series: the metrics Service's job in the release's namespace.
        for selector in selectors(rule["expr"]):
            matchers = {(m.name, m.value) for m in selector.matchers.matchers}
            assert {("job", FULLNAME), ("namespace", NAMESPACE)} <= matchers, alert
        assert re.fullmatch(r"\d+[smh]", rule["for"]), alert
        assert rule["labels"]["severity"] == "warning"


def test_alert_thresholds_come_from_values(chart: helm.Chart) -> None:
    values = merge(
        VALUE_SETS["monitoring"],
        {
            "metrics": {
                "prometheusRule": {
                    "latency": {"p99Seconds": 2.5},
                    "consumerLag": {"threshold": 1e6},
                    "partitionStalled": {"for": "3m"},
                }
            }
        },
    )
    (group,) = render(chart, values).one("PrometheusRule")["spec"]["groups"]
    rules = {rule["alert"]: rule["expr"] for rule in group["rules"]}
    stalled = next(rule for rule in group["rules"] if rule["alert"] == "QAWorkerPartitionStalled")
    assert stalled["for"] == "3m"
    assert "> 2.5" in rules["QAWorkerLatencyP99High"]
    # Parsed as a number however Go prints it.
    lag = promql_parser.parse(rules["QAWorkerConsumerLagGrowing"])
    assert lag.lhs.rhs.val == 1_000_000


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


# Grafana's built-in interval variables are not PromQL; any duration stands in for them.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)")


def test_dashboard_queries_use_the_workers_metrics(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["monitoring"])
    config_map = rendered.one("ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (document,) = config_map["data"].values()
    dashboard = json.loads(document)
    series = exported_series()
    used: set[str] = set()
    for title, expr in dashboard_queries(dashboard):
        used |= check_query(GRAFANA_INTERVALS.sub("5m", expr), series)
        for selector in selectors(GRAFANA_INTERVALS.sub("5m", expr)):
            matchers = {(m.name, m.value) for m in selector.matchers.matchers}
            assert {("namespace", "$namespace"), ("job", "$job")} <= matchers, title
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.fullmatch(r"label_values\((.+), \w+\)", variable["definition"]).group(1)
            check_query(metric, series)
    # Every metric of the contract is on the dashboard (histograms through their buckets or sums).
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert set(METRIC_NAMES) <= shown, set(METRIC_NAMES) - shown
    # Panels do not overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area


def test_service_monitor_scrapes_this_release(chart: helm.Chart) -> None:
    rendered = render(chart, VALUE_SETS["monitoring"])
    service = rendered.one("Service", FULLNAME)
    monitor = rendered.one("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The operator scrapes each Service the selector matches that has the endpoint's port: the
    # metrics Service alone, not also the StatefulSet's headless one, so no pod counts twice.
    (endpoint,) = monitor["endpoints"]
    scraped = [
        other["metadata"]["name"]
        for other in rendered.all("Service")
        if monitor["selector"]["matchLabels"].items() <= other["metadata"]["labels"].items()
        and endpoint["port"] in {port.get("name") for port in other["spec"].get("ports", [])}
    ]
    assert scraped == [FULLNAME]
    assert monitor["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The alerts' job label is the Service's name, which the operator uses for job by default.
    assert service["metadata"]["name"] == FULLNAME
    # Unready replicas (no partition, or draining) still publish metrics.
    assert service["spec"]["publishNotReadyAddresses"] is True


# ---------------------------------------------------------------------------------------------
# Tracing and the abstention alert.


def test_tracing_values_reach_the_worker_and_its_exporter(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as receiver:
        values = merge(VALUE_SETS["tracing"], {"tracing": {"endpoint": receiver.endpoint}})
        values = merge(values, {"tracing": {"samplerRatio": 0.0}})
        environ = render(chart, values).environment({})
        settings = Settings.from_sources(None, environ)
        assert (settings.tracing, settings.log_format) == ("otlp", "json")
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                monkeypatch.delenv(name)
        for name in OTEL_ENV & environ.keys():
            monkeypatch.setenv(name, environ[name])
        tracing = build_tracing(settings)
        traced = [("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01".encode())]
        # At ratio 0 an event with no trace context is not recorded; one whose producer
        # sampled its trace is, as the parent-based sampler follows the parent.
        for offset, headers in enumerate(([], traced)):
            record = SimpleNamespace(topic="questions", partition=0, offset=offset, key=None)
            with tracing.event(record, headers, settings.group_id) as trace:
                trace.finish(settings.answers_topic, None)
        tracing.shutdown()
    [(resource, spans)] = receiver.resources()
    assert resource["service.name"] == "qa-east"
    assert resource["deployment.environment"] == "prod" and resource["team"] == "search"
    assert [(span.name, span.trace_id.hex()) for span in spans] == [
        ("process questions", "ab" * 16)
    ]


def test_the_service_name_defaults_to_the_release(chart: helm.Chart) -> None:
    environ = render(chart, {"tracing": {"enabled": True}}).environment({})
    assert environ["OTEL_SERVICE_NAME"] == FULLNAME
    assert environ["OTEL_TRACES_SAMPLER_ARG"] == "1"
    assert "OTEL_RESOURCE_ATTRIBUTES" not in environ
    assert not OTEL_ENV & render(chart, {}).environment({}).keys()


def test_the_abstention_alert_compares_this_window_with_the_baseline(chart: helm.Chart) -> None:
    assert "QAWorkerAbstentionRateJump" not in str(render(chart, VALUE_SETS["monitoring"]).objects)
    values = merge(
        VALUE_SETS["monitoring"],
        {"metrics": {"prometheusRule": {"abstentions": {"enabled": True, "jump": 0.15}}}},
    )
    (group,) = render(chart, values).one("PrometheusRule")["spec"]["groups"]
    rule = next(rule for rule in group["rules"] if rule["alert"] == "QAWorkerAbstentionRateJump")
    series = exported_series()
    assert check_query(rule["expr"], series) == {
        "qa_worker_abstentions_total",
        "qa_worker_answer_score_count",
    }
    found = selectors(rule["expr"])
    for selector in found:
        matchers = {(m.name, m.value) for m in selector.matchers.matchers}
        assert {("job", FULLNAME), ("namespace", NAMESPACE)} <= matchers
    # Two selectors look at the last 30 minutes, two at the day before them.
    assert sorted(str(s.offset) for s in found).count("None") == 2
    expr = promql_parser.parse(rule["expr"])
    assert expr.rhs.val == 0.15
    assert rule["for"] == "30m" and rule["labels"]["severity"] == "warning"
