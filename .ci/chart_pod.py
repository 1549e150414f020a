"""Prints the `podman run` options that give a container what the chart gives the worker's pod.

The image check runs the image "locked down like the chart's pod"; rather than keep a second copy
of the chart's security settings in a shell script, they are read from the chart as Helm renders
it: the user and group, the read-only root, the dropped capabilities, no privilege escalation, an
in-memory filesystem wherever the chart mounts an emptyDir, the other volumes as bind mounts of
host folders (read-only where the chart's are), the CPU and memory limits, and the environment
the kubelet would build.
A field of the pod or container that this does not know how to reproduce fails the check, so a
new setting in the chart cannot be left out of it unnoticed.

    .venv/bin/python .ci/chart_pod.py VALUES_JSON VOLUME=HOST_PATH...

prints one option per line, then IMAGE and the container's arguments. Run from the
repository root with the 3.11 .venv (helm-python-sdk).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent.parent / "helm" / "kafka-qa-worker"
RELEASE, NAMESPACE = "check", "ci"
POD_NAME = f"{RELEASE}-kafka-qa-worker-0"

# Fields the container check reproduces in other ways: the probes' endpoints are polled by the
# check itself, the image is the one just built, and the port is reached over the host network.
CHECKED_ELSEWHERE = {
    "name",
    "image",
    "imagePullPolicy",
    "args",
    "ports",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
}
# Pod fields with no meaning for one container on one host.
POD_ONLY = {
    "serviceAccountName",
    "automountServiceAccountToken",
    "terminationGracePeriodSeconds",  # returned as PodRun.grace_s
    "affinity",
    "topologySpreadConstraints",
    "nodeSelector",
    "tolerations",
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [
        obj
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for obj in yaml.safe_load_all(text)
        if obj
    ]


def refuse(what: str) -> None:
    raise SystemExit(f"chart_pod.py cannot reproduce {what}: teach it, or the check misses it")


def security(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    merged = dict(pod.get("securityContext", {}))
    merged.update(container.get("securityContext", {}))
    options: list[str] = []
    for key, value in merged.items():
        if key == "runAsUser":
            options.append(f"--user={value}:{merged.get('runAsGroup', value)}")
        elif key == "runAsGroup":
            pass  # with runAsUser above
        elif key == "fsGroup":
            options.append(f"--group-add={value}")
        elif key == "runAsNonRoot":
            if value and merged.get("runAsUser", 0) == 0:
                refuse("runAsNonRoot without a numeric runAsUser")
        elif key == "readOnlyRootFilesystem":
            if value:
                # podman mounts its own tmpfs on /tmp, /run and /var/tmp under --read-only
                # unless told not to; the pod has only the chart's emptyDirs writable.
                options += ["--read-only", "--read-only-tmpfs=false"]
        elif key == "allowPrivilegeEscalation":
            if not value:
                options.append("--security-opt=no-new-privileges")
        elif key == "privileged":
            if value:
                refuse("a privileged container")
        elif key == "capabilities":
            options += [f"--cap-drop={name}" for name in value.get("drop", [])]
            options += [f"--cap-add={name}" for name in value.get("add", [])]
        elif key == "seccompProfile":
            # podman applies its default seccomp profile, as RuntimeDefault asks.
            if value.get("type") != "RuntimeDefault":
                refuse(f"seccompProfile {value}")
        else:
            refuse(f"securityContext.{key}")
    return options


def mounts(pod: dict[str, Any], container: dict[str, Any], host: dict[str, str]) -> list[str]:
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    options = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "subPath" in mount:
            refuse(f"the subPath of volume {mount['name']}")
        if "emptyDir" in volume:
            # Kubernetes makes an emptyDir writable by all (0777) and owned by the pod's fsGroup.
            # podman 4.3 with runc gives a tmpfs root as owner and the mode of the image's folder
            # beneath it (0755 for the WORKDIR), whatever its mode option says, so the mount is
            # handed to the container's user instead: writable by the pod's user either way.
            options.append(f"--mount=type=tmpfs,destination={mount['mountPath']},chown")
        elif mount["name"] in host:
            mode = "ro" if mount.get("readOnly") else "rw"
            options.append(f"--volume={host[mount['name']]}:{mount['mountPath']}:{mode}")
        else:
            refuse(f"volume {mount['name']} (give it a host folder: {mount['name']}=PATH)")
    return options


def environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            refuse(f"envFrom {source}")
        env.update(config_maps[source["configMapRef"]["name"]].get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = POD_NAME
        else:
            refuse(f"the value of {item['name']}")
    return [f"--env={name}={value}" for name, value in env.items()]


def resources(container: dict[str, Any]) -> list[str]:
    limits = container.get("resources", {}).get("limits", {})
    options = []
    for key, value in limits.items():
        if key == "cpu":
            cores = float(value[:-1]) / 1000 if str(value).endswith("m") else float(value)
            options.append(f"--cpus={cores:g}")
        elif key == "memory":
            # Kubernetes' binary suffixes (Mi, Gi) are podman's k, m, g.
            number, suffix = str(value)[:-2], str(value)[-2:]
            if suffix not in ("Ki", "Mi", "Gi"):
                refuse(f"memory limit {value}")
            options.append(f"--memory={number}{suffix[0].lower()}")
        else:
            refuse(f"the {key} limit")
    return options


@dataclasses.dataclass
class PodRun:
    options: list[str]  # for `podman run`, before the image
    args: list[str]  # the container's arguments, after the image
    grace_s: int  # how long Kubernetes waits after SIGTERM before SIGKILL


def podman_options(values: dict[str, Any], host: dict[str, str]) -> PodRun:
    """`host`: volume name -> host folder, for the volumes that are not emptyDirs."""
    objects = render(values)
    (workload,) = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    pod = workload["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "worker"]
    for key in set(pod) - POD_ONLY - {"containers", "securityContext", "volumes"}:
        refuse(f"the pod's {key}")
    translated = {"securityContext", "volumeMounts", "env", "envFrom", "resources", "workingDir"}
    for key in set(container) - CHECKED_ELSEWHERE - translated:
        refuse(f"the container's {key}")
    options = security(pod, container) + mounts(pod, container, host)
    options += environment(objects, container) + resources(container)
    if "workingDir" in container:
        options.append(f"--workdir={container['workingDir']}")
    return PodRun(options, container.get("args", []), pod.get("terminationGracePeriodSeconds", 30))


if __name__ == "__main__":
    run = podman_options(json.loads(sys.argv[1]), dict(a.split("=", 1) for a in sys.argv[2:]))
    print("\n".join([*run.options, "IMAGE", *run.args]))
