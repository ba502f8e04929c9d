"""Checks one rendered kustomization (`kubectl kustomize DIR`) for what the Kubernetes schemas cannot
see: the CRD objects, and whether the objects agree with each other and with the gateway.

    python deploy/manifests.py target/deploy-check/base.yaml

kubernetes-validate has already checked each built-in object against its schema; it only warns about
kinds it has no schema for, so every kind here is either in BUILT_IN or checked below. The
PrometheusRule's `spec` is written next to the input as INPUT.NAME.rules.yaml for `promtool check
rules`, and so is every query of the Grafana dashboard (as recording rules: promtool parses them).
A gateway whose GATEWAY_CLAMD_ADDRESS is on the pod's loopback needs its clamd sidecar there, with
limits that pass no file unscanned as clean (`check_scanner`).
Every metric an alert or a panel names must be in the catalog, src/metrics.rs.
Exits 1 with every problem listed.
"""

import json
import pathlib
import re
import sys
import tomllib

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILT_IN = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Ingress",
}
# Kinds of the Prometheus operator (monitoring.coreos.com/v1), which no Kubernetes schema covers.
SERVICE_MONITOR_SCHEMA = ROOT / "deploy/schemas/servicemonitor.schema.json"
# The gateway's default shutdown_grace_secs (src/config.rs), when the Deployment does not set it.
DEFAULT_SHUTDOWN_GRACE_SECS = 30

# Grafana's variables, replaced by plain PromQL so that promtool can parse the dashboard's queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$pod": ".*"}

problems = []


def problem(message):
    problems.append(message)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def metric_catalog():
    """Every series name src/metrics.rs defines (a histogram's _bucket, _sum and _count)."""
    source = (ROOT / "src/metrics.rs").read_text()
    names = set(re.findall(r'"(gateway_[a-z0-9_]+)"', source))
    histograms = set(re.findall(r'HistogramOpts::new\(\s*"(gateway_[a-z0-9_]+)"', source))
    return names | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}


def check_metric_names(where, expr):
    unknown = set(re.findall(r"\bgateway_[a-z0-9_]+", expr)) - metric_catalog()
    if unknown:
        problem(f"{where}: metrics not in src/metrics.rs: {sorted(unknown)}")


def config_keys_documented():
    """The keys of the configuration table in docs/configuration.md."""
    reference = (ROOT / "docs/configuration.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", reference, re.M))


def check_deployment(deploy, objects):
    name = deploy["metadata"]["name"]
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if not matches(spec["selector"].get("matchLabels"), labels):
        problem(f"Deployment {name}: selector does not match the pod template's labels")

    def selects(kind, selector):
        if not matches(selector, labels):
            problem(f"{kind}: its selector {selector} does not select the pods of Deployment {name}")

    for o in objects:
        kind, spec_o = o["kind"], o.get("spec", {})
        if kind == "Service":
            selects(f"Service {o['metadata']['name']}", spec_o.get("selector"))
        elif kind == "PodDisruptionBudget":
            selects(f"PodDisruptionBudget {o['metadata']['name']}", spec_o.get("selector", {}).get("matchLabels"))
        elif kind == "NetworkPolicy":
            selects(f"NetworkPolicy {o['metadata']['name']}", spec_o.get("podSelector", {}).get("matchLabels"))
        elif kind == "HorizontalPodAutoscaler":
            target = spec_o["scaleTargetRef"]
            if (target["kind"], target["name"]) != ("Deployment", name):
                problem(f"HorizontalPodAutoscaler {o['metadata']['name']} scales {target}, not Deployment {name}")
            if "replicas" in spec:
                problem(f"Deployment {name} sets replicas while an autoscaler owns the count")

    sec = pod.get("securityContext", {})
    if sec.get("runAsNonRoot") is not True or sec.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(f"Deployment {name}: the pod must run as non-root with the RuntimeDefault seccomp profile")
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in config_maps:
            problem(f"Deployment {name}: volume {v['name']} names ConfigMap {v['configMap']['name']}, not rendered")

    for c in pod.get("initContainers", []) + pod["containers"]:
        csec = c.get("securityContext", {})
        if not (
            csec.get("readOnlyRootFilesystem") is True
            and csec.get("allowPrivilegeEscalation") is False
            and csec.get("capabilities", {}).get("drop") == ["ALL"]
        ):
            problem(
                f"Deployment {name}, container {c['name']}: needs a read-only root filesystem, no privilege "
                "escalation, all capabilities dropped"
            )

    for c in pod["containers"]:
        where = f"Deployment {name}, container {c['name']}"
        ports = {p["name"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            if c.get(probe, {}).get("httpGet", {}).get("port") not in ports:
                problem(f"{where}: {probe} names no port of the container")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            problem(f"{where}: the liveness probe must be /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            problem(f"{where}: the readiness probe must be /readyz")
        for o in objects:
            if o["kind"] == "Service":
                for p in o["spec"]["ports"]:
                    if isinstance(p["targetPort"], str) and p["targetPort"] not in ports:
                        problem(f"Service {o['metadata']['name']}: targetPort {p['targetPort']} is no port of {where}")

        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        grace = int(env.get("GATEWAY_SHUTDOWN_GRACE_SECS", DEFAULT_SHUTDOWN_GRACE_SECS))
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        period = pod.get("terminationGracePeriodSeconds", 30)
        if period <= pre_stop + grace:
            problem(
                f"Deployment {name}: terminationGracePeriodSeconds {period} must be above the preStop "
                f"sleep ({pre_stop} s) plus shutdown_grace_secs ({grace} s), or uploads are killed mid-drain"
            )

        mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in c.get("volumeMounts", [])}
        config_path = env.get("GATEWAY_CONFIG")
        if not config_path:
            problem(f"{where}: GATEWAY_CONFIG is not set")
            continue
        directory, file = config_path.rsplit("/", 1)
        config_map = config_maps.get(mounts.get(directory, {}).get("configMap", {}).get("name"))
        if config_map is None or file not in config_map.get("data", {}):
            problem(f"{where}: GATEWAY_CONFIG {config_path} is not a file of a mounted ConfigMap")
            continue
        settings = tomllib.loads(config_map["data"][file])
        unknown = set(settings) - config_keys_documented()
        if unknown:
            problem(f"ConfigMap {config_map['metadata']['name']}: keys not in the configuration table of docs/configuration.md: {sorted(unknown)}")
        spool = settings.get("spool_dir")
        if spool not in mounts or "emptyDir" not in mounts[spool]:
            problem(f"{where}: spool_dir {spool!r} must be a mounted emptyDir (the root filesystem is read-only)")
        check_scanner(where, env, pod, volumes, config_maps)
        emulator_dir = next((a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--emulator-data-dir=")), None)
        if "--emulator" in c.get("args", []) and not (emulator_dir or "").startswith(f"{spool}/"):
            problem(f"{where}: --emulator needs --emulator-data-dir=DIR on the spool volume")


def clamav_size(value):
    """A SIZE of clamd.conf(5): bytes, or with a K or M suffix."""
    value = value.strip()
    unit = {"k": 1024, "m": 1024 * 1024}.get(value[-1:].lower(), 1)
    return int(value[:-1] if unit > 1 else value) * unit


def clamav_config(container, volumes, config_maps):
    """The clamd.conf or freshclam.conf a container's --config-file= names, as a dict (None when it is
    no file of a mounted ConfigMap)."""
    arg = next((a.split("=", 1)[1] for a in container.get("command", []) + container.get("args", [])
                if a.startswith("--config-file=")), None)
    if not arg:
        return None
    directory, file = arg.rsplit("/", 1)
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == directory), None)
    config_map = config_maps.get(volumes.get(mount["name"], {}).get("configMap", {}).get("name")) if mount else None
    if config_map is None or file not in config_map.get("data", {}):
        return None
    options = {}
    for line in config_map["data"][file].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options[key] = value.strip()
    options["__path__"] = arg
    return options


# libclamav looks at no byte past INT_MAX - 2 (a larger MaxFileSize is cut to it).
CLAMAV_MAX_FILE_BYTES = 2**31 - 3


def check_scanner(where, env, pod, volumes, config_maps):
    """GATEWAY_CLAMD_ADDRESS on the pod's loopback: a clamd sidecar that listens there, starts before
    the gateway and stops after it, and whose limits never pass a file unscanned as clean."""
    address = env.get("GATEWAY_CLAMD_ADDRESS")
    if not address:
        return
    loopback = re.fullmatch(r"tcp://(127\.0\.0\.1|localhost):(\d+)", address)
    if not loopback:
        return  # a clamd elsewhere: nothing in this pod to compare
    port = loopback.group(2)
    init = pod.get("initContainers", [])
    clamd = next((c for c in init + pod["containers"] if c.get("command", [""])[0] == "clamd"), None)
    if clamd is None:
        problem(f"{where}: GATEWAY_CLAMD_ADDRESS {address} but no container of the pod runs clamd")
        return
    cwhere = f"container {clamd['name']}"
    if clamd not in init or clamd.get("restartPolicy") != "Always" or "startupProbe" not in clamd:
        problem(
            f"{cwhere}: clamd must be a native sidecar (an init container with restartPolicy Always) with a "
            "startupProbe, so the gateway starts once clamd answers and is stopped (drained) before it"
        )
    conf = clamav_config(clamd, volumes, config_maps)
    if conf is None:
        problem(f"{cwhere}: its --config-file= is no file of a mounted ConfigMap")
        return
    if conf.get("TCPSocket") != port or conf.get("TCPAddr") != "127.0.0.1":
        problem(
            f"{cwhere}: clamd listens on {conf.get('TCPAddr')}:{conf.get('TCPSocket')}, the gateway expects "
            f"127.0.0.1:{port} (loopback only: clamd has no authentication)"
        )
    mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in clamd.get("volumeMounts", [])}
    for key in ("DatabaseDirectory", "TemporaryDirectory"):
        if "emptyDir" not in mounts.get(conf.get(key), {}):
            problem(f"{cwhere}: {key} {conf.get(key)} must be a mounted emptyDir (the root filesystem is read-only)")
    scan_max = int(env.get("GATEWAY_SCAN_MAX_BYTES", CLAMAV_MAX_FILE_BYTES))
    if scan_max > CLAMAV_MAX_FILE_BYTES:
        problem(f"{where}: GATEWAY_SCAN_MAX_BYTES {scan_max} is past what ClamAV looks at ({CLAMAV_MAX_FILE_BYTES})")
    # clamd's defaults: past them a file is not (wholly) scanned.
    for key, default in (("StreamMaxLength", "100M"), ("MaxFileSize", "100M")):
        if clamav_size(conf.get(key, default)) < scan_max:
            problem(f"{cwhere}: {key} {conf.get(key, default)} is below GATEWAY_SCAN_MAX_BYTES {scan_max}")
    if conf.get("AlertExceedsMax") not in ("yes", "true", "1"):
        problem(
            f"{cwhere}: without AlertExceedsMax clamd answers OK for what it did not look at (past MaxFileSize, "
            "MaxScanSize, MaxScanTime)"
        )
    freshclam = next((c for c in init + pod["containers"] if c.get("command", [""])[0] == "freshclam"), None)
    fresh = clamav_config(freshclam, volumes, config_maps) if freshclam else None
    if fresh is None:
        problem(f"{where}: no freshclam (with a --config-file= from a ConfigMap) keeps clamd's database current")
    elif fresh.get("DatabaseDirectory") != conf.get("DatabaseDirectory") or fresh.get("NotifyClamd") != conf["__path__"]:
        problem(
            f"container {freshclam['name']}: freshclam must update clamd's DatabaseDirectory and notify it "
            f"(NotifyClamd {conf['__path__']})"
        )


def check_service_monitor(monitor, objects):
    schema = json.loads(SERVICE_MONITOR_SCHEMA.read_text())
    for error in jsonschema.Draft202012Validator(schema).iter_errors(monitor):
        problem(f"ServiceMonitor {monitor['metadata'].get('name')}: {error.json_path}: {error.message}")
    selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels")
    services = [o for o in objects if o["kind"] == "Service" and matches(selector, o["metadata"].get("labels", {}))]
    if not services:
        problem(f"ServiceMonitor {monitor['metadata']['name']}: selects no Service")
    for endpoint in monitor.get("spec", {}).get("endpoints", []):
        for s in services:
            if endpoint.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                problem(f"ServiceMonitor: port {endpoint.get('port')} is no port of Service {s['metadata']['name']}")


def check_prometheus_rule(rule, rendered):
    if rule.get("apiVersion") != "monitoring.coreos.com/v1" or set(rule.get("spec", {})) != {"groups"}:
        problem(f"PrometheusRule {rule['metadata'].get('name')}: needs apiVersion monitoring.coreos.com/v1 and spec.groups only")
        return
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            check_metric_names(f"PrometheusRule, {r.get('alert') or r.get('record')}", r["expr"])
    out = rendered.with_suffix(f".{rule['metadata']['name']}.rules.yaml")
    out.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))


def check_dashboard(config_map, rendered):
    """A ConfigMap labelled grafana_dashboard: each file a dashboard whose queries must parse."""
    for file, text in config_map.get("data", {}).items():
        dashboard = json.loads(text)
        rules = []
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                if "$" in expr:
                    problem(f"{file}, panel {panel['title']!r}: a Grafana variable deploy/manifests.py does not know: {expr}")
                check_metric_names(f"{file}, panel {panel['title']!r}", expr)
                rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
        if not rules:
            problem(f"{file}: no queries")
        out = rendered.with_suffix(f".{config_map['metadata']['name']}.rules.yaml")
        out.write_text(yaml.safe_dump({"groups": [{"name": file, "rules": rules}]}, sort_keys=False))


def main(rendered):
    rendered = pathlib.Path(rendered)
    objects = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    for o in objects:
        kind = o["kind"]
        if kind == "Deployment":
            check_deployment(o, objects)
        elif kind == "ServiceMonitor":
            check_service_monitor(o, objects)
        elif kind == "PrometheusRule":
            check_prometheus_rule(o, rendered)
        elif kind == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard"):
            check_dashboard(o, rendered)
        elif kind not in BUILT_IN:
            problem(f"{kind} {o['metadata'].get('name')}: no schema checks this kind; add one to deploy/manifests.py")
        if kind in ("Ingress",):
            for rule in o["spec"].get("rules", []):
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    service = next((s for s in objects if s["kind"] == "Service" and s["metadata"]["name"] == backend["name"]), None)
                    if service is None or backend["port"].get("name") not in {p["name"] for p in service["spec"]["ports"]}:
                        problem(f"Ingress {o['metadata']['name']}: backend {backend} is no Service port")
    if not any(o["kind"] == "Deployment" for o in objects):
        problem("no Deployment rendered")
    for p in problems:
        print(f"{rendered}: {p}", file=sys.stderr)
    print(f"{rendered}: {len(objects)} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
