"""Kubernetes manifests, plus a kustomize base listing them.

- ``namespace.yaml``;
- ``config.yaml``: ConfigMap ``<app>-config`` (the container topology,
  mounted at ``/etc/amoeba/config``) and ``<app>-env`` (variables the file
  gives a default, as environment);
- ``<app>-<process>.yaml`` per process: Deployment (a StatefulSet with a
  persistent volume claim for its data directory when a service of it keeps
  data in a SQLite file; such a process is refused more than one pod)
  (replicas, requests and
  limits, liveness ``/healthz``, readiness ``/readyz``, a ``preStop`` pause so
  endpoints drop the pod before it drains, ``terminationGracePeriodSeconds``
  covering pause + drain + grace), Service, NetworkPolicy (a process accepts
  traffic only from the processes that call it, and public ports from the
  ingress controller's namespace), HorizontalPodAutoscaler when asked;
- ``ingress.yaml`` for the public listeners.

Secret values are never written: containers read them with ``secretKeyRef``
from the Secret named by ``deploy.secret`` (and the JWT key file from
``<app>-auth-keys``), which the operator creates.
"""

from __future__ import annotations

from typing import Any

from amoeba.deploy import image
from amoeba.deploy.document import dump_yaml
from amoeba.deploy.plan import DATA_DIR, KEYS_IN_K8S, KEYS_VAR, Plan, Unit
from amoeba.topology import TopologyError

__all__ = ["PRE_STOP_SECONDS", "render"]

PRE_STOP_SECONDS = 5  # endpoints controllers and kube-proxy catch up before SIGTERM
CONFIG_DIR = "/etc/amoeba/config"


def _labels(plan: Plan, unit: Unit | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": plan.app, "app.kubernetes.io/part-of": plan.app}
    if unit is not None:
        labels["app.kubernetes.io/component"] = unit.process
    labels["app.kubernetes.io/managed-by"] = "amoeba"
    return labels


def _selector(plan: Plan, unit: Unit) -> dict[str, str]:
    return {"app.kubernetes.io/name": plan.app, "app.kubernetes.io/component": unit.process}


def _meta(plan: Plan, name: str, unit: Unit | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": plan.namespace, "labels": _labels(plan, unit)}


def _env(plan: Plan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "AMOEBA_DATA_DIR", "value": DATA_DIR}]
    if plan.auth_secret is not None:
        env.append({"name": KEYS_VAR, "value": KEYS_IN_K8S})
    env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": plan.secret, "key": var}}}
            for var in plan.secrets]
    return env


def _workload(plan: Plan, unit: Unit) -> dict[str, Any]:
    """A Deployment, or for a process with SQLite data a StatefulSet whose data
    directory is a PersistentVolumeClaim: it survives rollouts and restarts."""
    http = unit.ports[0].name
    stateful = bool(unit.embedded)
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{plan.base}-config"}},
        *([] if stateful else [{"name": "data", "emptyDir": {}}]), {"name": "tmp", "emptyDir": {}}]
    if plan.auth_secret is not None:
        mounts.append({"name": "auth-keys", "mountPath": KEYS_IN_K8S.rsplit("/", 1)[0],
                       "readOnly": True})
        volumes.append({"name": "auth-keys", "secret": {
            "secretName": plan.auth_secret, "items": [{"key": "keys.json", "path": "keys.json"}]}})
    container: dict[str, Any] = {
        "name": unit.process.replace("_", "-"),
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["run", f"{CONFIG_DIR}/topology.yaml", "--process", unit.process],
        "ports": [{"name": p.name, "containerPort": p.number, "protocol": "TCP"} for p in unit.ports],
    }
    if plan.config:
        container["envFrom"] = [{"configMapRef": {"name": f"{plan.base}-env"}}]
    container |= {
        "env": _env(plan),
        "resources": {"requests": dict(unit.sizing.requests), "limits": dict(unit.sizing.limits)},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": http}, "periodSeconds": 10,
                          "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": http}, "periodSeconds": 2,
                           "timeoutSeconds": 2, "failureThreshold": 2},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": http}, "periodSeconds": 1,
                         "failureThreshold": 60},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_SECONDS)]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {}
    if unit.sizing.autoscale is None:
        spec["replicas"] = unit.replicas  # with an HPA, the HPA owns the count
    if stateful:
        # One pod (per_pod_problems refuses more): the old pod stops and releases
        # the volume before the new one starts; SQLite never sees two writers.
        spec |= {"serviceName": unit.name, "selector": {"matchLabels": _selector(plan, unit)},
                 "updateStrategy": {"type": "RollingUpdate"}}
    else:
        spec |= {"selector": {"matchLabels": _selector(plan, unit)},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}
    spec |= {
        "template": {
            # /metrics is served on the process's private listener (the one added for
            # it when the process has only public ones): Prometheus never needs a
            # public port, and the NetworkPolicy admits it there.
            "metadata": {"labels": _labels(plan, unit), "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(unit.rpc_port),
                "prometheus.io/path": "/metrics"}},
            "spec": {
                "terminationGracePeriodSeconds": PRE_STOP_SECONDS + plan.stop_seconds + 5,
                "securityContext": {"runAsNonRoot": True, "runAsUser": image.UID,
                                    "runAsGroup": image.UID, "fsGroup": image.UID,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if stateful:
        spec["volumeClaimTemplates"] = [{
            "metadata": {"name": "data", "labels": _labels(plan, unit)},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": unit.sizing.storage}}}}]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet" if stateful else "Deployment",
            "metadata": _meta(plan, unit.name, unit), "spec": spec}


def _service(plan: Plan, unit: Unit) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(plan, unit.name, unit),
            "spec": {"type": "ClusterIP", "selector": _selector(plan, unit),
                     "ports": [{"name": p.name, "port": p.number, "targetPort": p.name,
                                "protocol": "TCP"} for p in unit.ports]}}


def _network_policy(plan: Plan, unit: Unit) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    if unit.callers:
        rules.append({"from": [{"podSelector": {"matchLabels": _selector(plan, plan.unit(c))}}
                               for c in unit.callers],
                      "ports": [{"protocol": "TCP", "port": unit.rpc_port}]})
    rules.append({"from": [{"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": plan.deploy.metrics_namespace}}}],
                  "ports": [{"protocol": "TCP", "port": unit.rpc_port}]})
    public = [p.number for p in unit.ports if p.public]
    if public:
        ns = plan.deploy.ingress_namespace
        rules.append({"from": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": ns}}}],
                      "ports": [{"protocol": "TCP", "port": n} for n in public]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(plan, unit.name, unit),
            "spec": {"podSelector": {"matchLabels": _selector(plan, unit)},
                     "policyTypes": ["Ingress"], "ingress": rules}}


def _hpa(plan: Plan, unit: Unit) -> dict[str, Any] | None:
    auto = unit.sizing.autoscale
    if auto is None:
        return None
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(plan, unit.name, unit),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1",
                                        "kind": "StatefulSet" if unit.embedded else "Deployment",
                                        "name": unit.name},
                     "minReplicas": auto.min, "maxReplicas": auto.max,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": auto.cpu}}}]}}


def _ingress(plan: Plan) -> dict[str, Any] | None:
    if not plan.upstreams:
        return None
    ups = {u.name: u for u in plan.upstreams}
    default = plan.upstreams[0]

    def backend(name: str) -> dict[str, Any]:
        u = ups[name]
        return {"service": {"name": u.unit, "port": {"number": u.port}}}

    paths: dict[tuple[str, str], str] = {}
    exact = {r.path for r in plan.routes if r.exact}
    for r in plan.routes:
        if r.mount:  # Prefix matches by path segments: /api/v1 and /api/v1/..., not /api/v1x
            paths[(r.path, "Prefix")] = r.upstream
        elif r.exact:
            paths[(r.path, "Exact")] = r.upstream
        else:
            paths[(r.prefix, "Prefix")] = r.upstream
            if r.prefix not in exact:  # Prefix /a/b also matches /a/b itself
                paths[(r.prefix, "Exact")] = default.name
    paths[("/", "Prefix")] = default.name
    rule: dict[str, Any] = {}
    if plan.deploy.edge_host:
        rule["host"] = plan.deploy.edge_host
    rule["http"] = {"paths": [{"path": p, "pathType": t, "backend": backend(n)}
                              for (p, t), n in paths.items()]}
    spec: dict[str, Any] = {}
    if plan.deploy.ingress_class:
        spec["ingressClassName"] = plan.deploy.ingress_class
    spec["rules"] = [rule]
    meta = _meta(plan, plan.base)
    # ingress-nginx reads these; other controllers ignore them.
    meta["annotations"] = {
        "nginx.ingress.kubernetes.io/proxy-body-size": str(plan.settings.max_body),
        "nginx.ingress.kubernetes.io/proxy-connect-timeout": str(max(1, plan.connect_timeout_ms // 1000)),
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(plan.read_timeout),
        "nginx.ingress.kubernetes.io/proxy-next-upstream": "error timeout http_502 http_503",
    }
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def _dump(plan: Plan, docs: list[dict[str, Any]]) -> str:
    body = "---\n".join(dump_yaml(d)
                        for d in docs)
    return plan.header("k8s") + body


def manifests(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects in it (what ``render`` writes, for validation)."""
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": plan.namespace, "labels": _labels(plan)}}
    topology = image.files(plan, "k8s")["topology.yaml"]
    config: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(plan, f"{plan.base}-config"),
         "data": {"topology.yaml": topology}}]
    if plan.config:
        config.append({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": _meta(plan, f"{plan.base}-env"), "data": dict(plan.config)})
    out: dict[str, list[dict[str, Any]]] = {"namespace.yaml": [ns], "config.yaml": config}
    for unit in plan.units:
        docs = [_workload(plan, unit), _service(plan, unit), _network_policy(plan, unit)]
        hpa = _hpa(plan, unit)
        if hpa is not None:
            docs.append(hpa)
        out[f"{unit.name}.yaml"] = docs
    ingress = _ingress(plan)
    if ingress is not None:
        out["ingress.yaml"] = [ingress]
    return out


def render(plan: Plan) -> dict[str, str]:
    if plan.per_pod:
        raise TopologyError(list(plan.per_pod))
    objs = manifests(plan)
    files = {name: _dump(plan, docs) for name, docs in objs.items()}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": list(objs)}
    files["kustomization.yaml"] = plan.header("k8s") + dump_yaml(kustomization)
    return {**image.files(plan, "k8s"), **files}
