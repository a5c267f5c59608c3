"""The Helm chart (helm/renkei), rendered offline and checked without a cluster.

Rendering uses Helm's own Go engine through helm-python-sdk; every manifest is validated
against the Kubernetes 1.28-1.31 OpenAPI schemas shipped by kubernetes-validate, in strict
mode (unknown fields are errors). The properties an operator relies on are asserted on the
rendered objects: probes, the restricted security context, one SQLite writer, autoscaling
with MongoDB, credentials only from Secrets, no MongoDB of our own, NetworkPolicies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import kubernetes_validate
import pytest
import yaml

from broker.jsonld.context import load_preload_map
from opendata.datasets import load_definitions
from tests.support import broker

pytestmark = pytest.mark.helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "renkei"
EXAMPLES = ROOT / "helm" / "examples"
KUBERNETES_VERSIONS = ["1.28", "1.29", "1.30", "1.31"]
#: Kinds of operators the chart may use; their CRDs are not part of Kubernetes' schemas.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity"),
}
MONGODB_EXTERNAL: dict[str, Any] = {
    "store": {
        "type": "mongodb",
        "mongodb": {"mode": "external", "external": {"existingSecret": "renkei-mongodb-uri"}},
    },
    "broker": {"autoscaling": {"enabled": False}, "replicas": 4},
    "auth": {"enabled": True, "existingSecret": "renkei-auth"},
    "iotAgent": {"brokerKey": {"existingSecret": "renkei-iot-agent"}},
    "mqtt": {
        "mosquitto": {"enabled": False},
        "external": {"host": "mqtt.pref.example.lg.jp", "caConfigMap": "pref-ca"},
    },
    "publish": {
        "enabled": True,
        "mode": "cronjob",
        "timeZone": "Asia/Tokyo",
        "ckanUrl": "https://catalog.example.lg.jp",
        "ckanTokenSecret": {"name": "renkei-ckan"},
    },
    "serviceMonitor": {"enabled": True},
}


def example(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text("utf-8"))
    return values


CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "small-town": example("small-town"),
    "prefecture": example("prefecture"),
    "mongodb-external": MONGODB_EXTERNAL,
    "broker-open": {"broker": {"insecureNoAuth": True}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``, as ``helm template`` would."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="renkei", namespace="komae")
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(CASES[request.param])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} rendered {len(found)} times"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod template metadata, pod spec) of every workload."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            template = d["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        yield f"{d['kind']}/{d['metadata']['name']}", template["metadata"], template["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_lint_finds_nothing() -> None:
    for name, values in CASES.items():
        report = helm.lint(CHART, values, strict=True, kube_version="v1.28.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems, (name, problems)
        assert not report["errors"], (name, report["errors"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_kubernetes(
    case: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    name, docs = case
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            checked = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where} is invalid on {version}: {exc.message}") from exc
        assert checked == version, f"{where}: validated against {checked}, not {version}"


def test_custom_resources_only_when_asked() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in render({})}
    assert not kinds & CUSTOM_KINDS
    prefecture = render(CASES["prefecture"])
    assert {(d["apiVersion"], d["kind"]) for d in prefecture} >= CUSTOM_KINDS


def test_every_server_has_probes_and_every_container_resources(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = case
    servers = set()
    for d in of_kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            where = f"{name}: {d['metadata']['name']}/{c['name']}"
            if c.get("ports"):  # `renkei publish --every` serves nothing to probe
                servers.add(c["name"])
                assert "readinessProbe" in c, where
                assert "livenessProbe" in c, where
            assert c["resources"]["requests"], where
            assert c["resources"]["limits"], where
    assert {"broker", "iot-agent"} <= servers
    for _, _, spec in pod_specs(docs):
        for c in containers(spec):
            assert c["resources"]["requests"], c["name"]
            assert c["resources"]["limits"], c["name"]


def test_broker_readiness_and_liveness_are_separate_endpoints(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = case
    broker = named(docs, "Deployment", "renkei-broker")["spec"]["template"]["spec"]
    (c,) = broker["containers"]
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/health/ready"
    assert live["path"] == "/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == live["path"]


def test_pods_run_restricted(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    specs = list(pod_specs(docs))
    assert specs
    for where, _, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, where, c["name"])
            assert "add" not in sc["capabilities"], (name, where, c["name"])
            if c.get("image", "").startswith(("renkei", "registry.")):
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert mounts.get("/tmp") in tmp, (name, where, "no emptyDir on /tmp")


@pytest.mark.parametrize("grace", [None, 60, 8])
def test_the_broker_stops_within_its_grace_period(grace: int | None) -> None:
    values: dict[str, Any] = (
        {} if grace is None else {"broker": {"terminationGracePeriodSeconds": grace}}
    )
    spec = named(render(values), "Deployment", "renkei-broker")["spec"]["template"]["spec"]
    (broker,) = spec["containers"]
    timeout = float(env_of(broker)["RENKEI_SHUTDOWN_TIMEOUT"]["value"])
    assert spec["terminationGracePeriodSeconds"] == (grace or 30)
    assert timeout == spec["terminationGracePeriodSeconds"] - 5


@pytest.mark.parametrize("name", ["default", "small-town"])
def test_sqlite_is_one_replica_recreated_on_a_volume(name: str) -> None:
    # Even asked for more replicas and autoscaling, the SQLite file keeps one writer.
    values = {**CASES[name], "broker": {"replicas": 5, "autoscaling": {"enabled": True}}}
    docs = render(values)
    broker = named(docs, "Deployment", "renkei-broker")
    assert broker["spec"]["replicas"] == 1
    assert broker["spec"]["strategy"] == {"type": "Recreate"}
    spec = broker["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    (c,) = spec["containers"]
    store = env_of(c)["RENKEI_STORE"]["value"]
    assert store.startswith("sqlite:////data/renkei.db")
    assert {"mountPath": "/data", "name": "data"} in c["volumeMounts"]
    claim = named(docs, "PersistentVolumeClaim", claims["data"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    assert not of_kind(docs, "PodDisruptionBudget")


def test_mongodb_scales_with_autoscaler_and_disruption_budget() -> None:
    docs = render(CASES["prefecture"])
    broker = named(docs, "Deployment", "renkei-broker")
    assert "replicas" not in broker["spec"], "the autoscaler owns the replica count"
    assert broker["spec"]["strategy"]["type"] == "RollingUpdate"
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "renkei-broker",
    }
    assert hpa["spec"]["minReplicas"] == 3
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    labels = broker["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert named(docs, "Deployment", "renkei-iot-agent")["spec"]["replicas"] == 2
    # Replicas share no volume: the store is MongoDB, and no claim is made for the broker.
    spec = broker["spec"]["template"]["spec"]
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert not [
        d for d in of_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == "renkei-data"
    ]

    fixed = render(MONGODB_EXTERNAL)
    assert named(fixed, "Deployment", "renkei-broker")["spec"]["replicas"] == 4
    assert not of_kind(fixed, "HorizontalPodAutoscaler")
    assert of_kind(fixed, "PodDisruptionBudget")


def test_no_mongodb_of_our_own(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    assert not of_kind(docs, "StatefulSet"), name
    for where, _, spec in pod_specs(docs):
        for c in containers(spec):
            assert "mongo" not in c["image"].lower(), (name, where)


def test_operator_mongodb_is_a_replica_set_the_broker_logs_into_from_a_secret() -> None:
    docs = render(CASES["prefecture"])
    (mdb,) = of_kind(docs, "MongoDBCommunity")
    assert mdb["spec"]["type"] == "ReplicaSet"
    assert mdb["spec"]["members"] == 3
    (user,) = mdb["spec"]["users"]
    assert user["passwordSecretRef"]["name"] == "renkei-mongodb-password"
    (c,) = named(docs, "Deployment", "renkei-broker")["spec"]["template"]["spec"]["containers"]
    store = env_of(c)["RENKEI_STORE"]["value"]
    assert store.startswith(
        "mongodb://$(RENKEI_MONGO_USER):$(RENKEI_MONGO_PASSWORD)@renkei-mongodb-0."
    )
    assert "/renkei?replicaSet=renkei-mongodb&authSource=admin" in store
    assert store.count(".renkei-mongodb-svc.komae.svc.cluster.local:27017") == 3


GENERATED_AUTH = "renkei-generated-auth"
SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|_KEY$|_URI$", re.IGNORECASE)


def test_credentials_come_only_from_secrets(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    # No secret of the operator's passes through values; the one Secret the chart may make
    # is the generated access-control file (random key, tests below).
    made = [d["metadata"]["name"] for d in of_kind(docs, "Secret")]
    assert made in ([], [GENERATED_AUTH]), (name, made)
    for where, _, spec in pod_specs(docs):
        secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
        for c in containers(spec):
            env = env_of(c)
            from_secret = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
            for var, e in env.items():
                if SECRETISH.search(var) and not var.endswith("_FILE"):
                    assert var in from_secret, (name, where, var)
                value = e.get("value", "")
                userinfo = re.match(r"^[a-z+]+://([^/@]*)@", value)
                if userinfo:
                    refs = re.fullmatch(r"\$\((\w+)\):\$\((\w+)\)", userinfo.group(1))
                    assert refs, (name, where, var, "credentials written into a URL")
                    assert refs.group(2) in from_secret, (
                        name,
                        where,
                        var,
                        "password not from a Secret",
                    )
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            for var in ("RENKEI_CKAN_TOKEN_FILE", "RENKEI_AUTH_FILE"):
                if var in env:
                    path = env[var]["value"]
                    assert any(
                        path.startswith(mounts[v] + "/") for v in secret_volumes & mounts.keys()
                    ), (name, var)
    for cm in of_kind(docs, "ConfigMap"):
        for key, text in cm["data"].items():
            for line in text.splitlines():
                assert not re.search(
                    r"\b(password|token|secret)\b\s*[:= ]\s*\S", line, re.IGNORECASE
                ), (name, cm["metadata"]["name"], key, line)


def test_mosquitto_reads_passwords_and_acls_from_a_secret() -> None:
    docs = render(CASES["small-town"])
    conf = named(docs, "ConfigMap", "renkei-mosquitto")["data"]["mosquitto.conf"]
    assert "allow_anonymous false" in conf
    assert "password_file /mosquitto/secret/passwd" in conf
    assert "acl_file /mosquitto/secret/acl" in conf
    # QoS 1 measures queued for an agent that falls behind are kept, not dropped at 1000
    assert "max_queued_messages 100000" in conf
    spec = named(docs, "Deployment", "renkei-mosquitto")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "renkei-mosquitto"
    assert {i["path"] for i in volume["secret"]["items"]} == {"passwd", "acl"}
    (c,) = spec["containers"]
    assert c["image"].startswith("eclipse-mosquitto:")
    (agent,) = named(docs, "Deployment", "renkei-iot-agent")["spec"]["template"]["spec"][
        "containers"
    ]
    assert agent["args"] == ["iot-agent"]
    env = env_of(agent)
    assert (
        env["RENKEI_MQTT_URL"]["value"]
        == "mqtt://$(RENKEI_MQTT_USERNAME):$(RENKEI_MQTT_PASSWORD)@renkei-mosquitto:1883"
    )
    assert env["RENKEI_MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "renkei-mqtt"
    assert env["RENKEI_BROKER_URL"]["value"] == "http://renkei-broker:1026"


def test_every_pod_is_under_a_network_policy(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    policies = of_kind(docs, "NetworkPolicy")
    assert policies
    for where, meta, _ in pod_specs(docs):
        covering = [
            p
            for p in policies
            if p["spec"]["podSelector"]["matchLabels"].items() <= meta["labels"].items()
        ]
        assert covering, (name, where)
        assert {"Ingress", "Egress"} <= {t for p in covering for t in p["spec"]["policyTypes"]}


def test_lgwan_allows_no_internet() -> None:
    docs = render(CASES["small-town"])
    cidrs = {
        block["ipBlock"]["cidr"]
        for p in of_kind(docs, "NetworkPolicy")
        for rule in p["spec"].get("egress", [])
        for block in rule.get("to", [])
        if "ipBlock" in block
    }
    assert cidrs == {"10.30.0.0/16"}
    assert "0.0.0.0/0" in json.dumps(render({}))


def test_ingress_serves_the_broker_over_tls() -> None:
    docs = render(CASES["small-town"])
    (ingress,) = of_kind(docs, "Ingress")
    assert ingress["spec"]["tls"] == [
        {"hosts": ["renkei.town.example.lg.jp"], "secretName": "renkei-tls"}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "renkei-broker"
    (c,) = named(docs, "Deployment", "renkei-broker")["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["RENKEI_PUBLIC_URL"]["value"] == "https://renkei.town.example.lg.jp"


def test_context_preload_config_map_loads_in_the_broker(tmp_path: Path) -> None:
    docs = render(CASES["small-town"])
    (c,) = named(docs, "Deployment", "renkei-broker")["spec"]["template"]["spec"]["containers"]
    preload = Path(env_of(c)["RENKEI_CONTEXT_PRELOAD"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert preload.parent == Path(mounts["contexts"])
    for key, text in named(docs, "ConfigMap", "renkei-contexts")["data"].items():
        (tmp_path / key).write_text(text, "utf-8")
    docs_by_url = load_preload_map(tmp_path / preload.name)
    context = docs_by_url["https://town.example.lg.jp/ngsi-ld/context.jsonld"]
    assert "避難所" in json.dumps(context, ensure_ascii=False)


def test_publish_definitions_config_map_loads_in_the_publisher(tmp_path: Path) -> None:
    docs = render(CASES["small-town"])
    (job,) = [d for d in of_kind(docs, "CronJob") if d["metadata"]["name"] == "renkei-publish"]
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["args"][:3] == ["publish", "--definitions", "/etc/renkei/publish"]
    assert job["spec"]["timeZone"] == "Asia/Tokyo"
    for key, text in named(docs, "ConfigMap", "renkei-publish")["data"].items():
        (tmp_path / key).write_text(text, "utf-8")
    (definition,) = load_definitions(tmp_path)
    assert definition.title["ja"] == "避難所一覧（例町）"  # noqa: RUF001

    watch = named(render(CASES["prefecture"]), "Deployment", "renkei-publish")
    (c,) = watch["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["publish", "--definitions", "/etc/renkei/publish", "--every", "15m"]
    assert watch["spec"]["replicas"] == 1


def test_sqlite_backups_run_beside_the_broker() -> None:
    docs = render(CASES["small-town"])
    job = named(docs, "CronJob", "renkei-backup")
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    script = c["command"][-1]
    assert 'renkei backup --store "$RENKEI_STORE" --out "$out"' in script
    assert env_of(c)["RENKEI_STORE"]["value"].startswith("sqlite:////data/renkei.db")
    assert env_of(c)["RENKEI_BACKUP_KEEP"]["value"] == "14"
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": "renkei-data", "backups": "renkei-backup"}
    (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    assert not [d for d in render(CASES["prefecture"]) if d["metadata"]["name"] == "renkei-backup"]


def test_the_iot_agent_serves_beyond_loopback_only_under_the_auth_file() -> None:
    def agent(values: dict[str, Any]) -> dict[str, Any]:
        docs = render(values)
        spec = named(docs, "Deployment", "renkei-iot-agent")["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        found: dict[str, Any] = {**c, "volumes": spec["volumes"]}
        return found

    # no auth file at all (the broker open on purpose): loopback only; the probes run inside
    c = agent({"broker": {"insecureNoAuth": True}})
    env = env_of(c)
    assert env["RENKEI_IOTA_HOST"]["value"] == "127.0.0.1"
    assert "RENKEI_AUTH_FILE" not in env
    assert "RENKEI_INSECURE_NO_AUTH" not in env
    assert "127.0.0.1:4041/health" in " ".join(c["readinessProbe"]["exec"]["command"])
    assert "exec" in c["livenessProbe"]
    # with the auth file: the pod's address, the broker's file, its own key
    c = agent(MONGODB_EXTERNAL)
    env = env_of(c)
    assert env["RENKEI_IOTA_HOST"]["value"] == "0.0.0.0"
    assert env["RENKEI_AUTH_FILE"]["value"] == "/etc/renkei/auth/auth.yaml"
    key = env["RENKEI_BROKER_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "renkei-iot-agent", "key": "api-key"}
    (auth,) = [v for v in c["volumes"] if v["name"] == "auth"]
    assert auth["secret"]["secretName"] == "renkei-auth"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    # auth on, but no key for the agent: refused with what is missing
    with pytest.raises(helm.HelmError, match=r"iotAgent\.brokerKey\.existingSecret"):
        render({"auth": {"enabled": True, "existingSecret": "renkei-auth"}})
    # open on purpose, beside a broker open on purpose
    env = env_of(agent({"broker": {"insecureNoAuth": True}, "iotAgent": {"insecureNoAuth": True}}))
    assert env["RENKEI_IOTA_HOST"]["value"] == "0.0.0.0"
    assert env["RENKEI_INSECURE_NO_AUTH"]["value"] == "true"
    assert "RENKEI_BROKER_API_KEY" not in env
    # provisioning open on purpose, the broker under the generated file: the agent still
    # writes with the generated key
    env = env_of(agent({"iotAgent": {"insecureNoAuth": True}}))
    assert env["RENKEI_IOTA_HOST"]["value"] == "0.0.0.0"
    assert env["RENKEI_INSECURE_NO_AUTH"]["value"] == "true"
    assert "RENKEI_AUTH_FILE" not in env
    key = env["RENKEI_BROKER_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": GENERATED_AUTH, "key": "admin-api-key"}


def broker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = named(docs, "Deployment", "renkei-broker")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    found: dict[str, Any] = {**c, "volumes": spec["volumes"]}
    return found


def agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = named(docs, "Deployment", "renkei-iot-agent")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    found: dict[str, Any] = {**c, "volumes": spec["volumes"]}
    return found


def mounted_auth_file(c: dict[str, Any]) -> tuple[str, str]:
    """(Secret name, key) of the file ``RENKEI_AUTH_FILE`` names in container ``c``."""
    path = Path(env_of(c)["RENKEI_AUTH_FILE"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume_name = mounts[str(path.parent)]
    (volume,) = [v for v in c["volumes"] if v["name"] == volume_name]
    items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
    return volume["secret"]["secretName"], items[path.name]


def test_default_install_starts_under_a_generated_auth_file() -> None:
    # A default install listens on the pod's address: without an auth file the broker
    # would refuse to start, and running it open is never the default.
    docs = render({})
    secret = named(docs, "Secret", GENERATED_AUTH)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) == {"auth.yaml", "admin-api-key"}
    broker = broker_container(docs)
    env = env_of(broker)
    assert env["RENKEI_HOST"]["value"] == "0.0.0.0"
    assert "RENKEI_INSECURE_NO_AUTH" not in env
    assert mounted_auth_file(broker) == (GENERATED_AUTH, "auth.yaml")
    # only the file is mounted, never the plain key beside it
    (volume,) = [v for v in broker["volumes"] if v["name"] == "auth"]
    assert [i["key"] for i in volume["secret"]["items"]] == ["auth.yaml"]
    # the agent reads the same file, serves on its pod's address and writes with the key
    agent = agent_container(docs)
    env = env_of(agent)
    assert mounted_auth_file(agent) == (GENERATED_AUTH, "auth.yaml")
    assert env["RENKEI_IOTA_HOST"]["value"] == "0.0.0.0"
    assert "RENKEI_INSECURE_NO_AUTH" not in env
    key = env["RENKEI_BROKER_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": GENERATED_AUTH, "key": "admin-api-key"}
    assert agent["readinessProbe"]["httpGet"]["path"] == "/health"
    # the agent's own key, when given, is used instead of the generated one
    agent = agent_container(
        render({"iotAgent": {"brokerKey": {"existingSecret": "renkei-iot-agent-key"}}})
    )
    key = env_of(agent)["RENKEI_BROKER_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "renkei-iot-agent-key", "key": "api-key"}
    assert mounted_auth_file(agent) == (GENERATED_AUTH, "auth.yaml")


def test_generated_auth_file_loads_in_the_broker_and_admits_only_its_key() -> None:
    import base64

    from broker.auth.config import hash_key, parse_auth_text
    from broker.auth.credentials import match_api_key
    from broker.auth.policy import Principal

    secrets = []
    for _ in range(2):
        secret = named(render({}), "Secret", GENERATED_AUTH)
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        secrets.append(data)
        key = data["admin-api-key"]
        assert re.fullmatch(r"[A-Za-z0-9]{40}", key)
        policy = parse_auth_text(data["auth.yaml"], "auth.yaml")
        (entry,) = policy.api_keys
        assert entry.digest.hex() == hash_key(key)
        assert key not in data["auth.yaml"], "the file holds only the key's SHA-256"
        assert match_api_key(policy.api_keys, key) is entry
        assert match_api_key(policy.api_keys, key[:-1] + ("a" if key[-1] != "a" else "b")) is None
        principal = Principal(
            name=entry.name, roles=frozenset(entry.roles), tenants=entry.tenants, via="api_key"
        )
        shelter = "https://uri.etsi.org/ngsi-ld/default-context/避難所"
        for tenant in ("", "komae", "chofu"):
            assert policy.can(principal, "write", tenant, shelter)
            assert policy.can(principal, "subscribe", tenant, shelter)
        assert policy.role_of(principal).admin
        # no anonymous access
        assert not policy.anonymous.read.pairs
        assert not policy.anonymous.write.pairs
        assert not policy.anonymous.admin
    # a fresh install makes a fresh key (an upgrade reads the one in the cluster back)
    assert secrets[0]["admin-api-key"] != secrets[1]["admin-api-key"]


@pytest.mark.parametrize("values", [{}, {"broker": {"insecureNoAuth": True}}])
def test_broker_starts_on_the_pods_address_with_the_rendered_settings(
    values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker's own start rule, given the access-control settings the chart renders:
    # the generated file (the key admitted, nobody else), or open on purpose.
    import base64

    docs = render(values)
    env = env_of(broker_container(docs))
    monkeypatch.setenv("RENKEI_HOST", env["RENKEI_HOST"]["value"])
    monkeypatch.delenv("RENKEI_AUTH_FILE", raising=False)
    monkeypatch.delenv("RENKEI_INSECURE_NO_AUTH", raising=False)
    key = None
    if "RENKEI_AUTH_FILE" in env:
        data = named(docs, "Secret", GENERATED_AUTH)["data"]
        path = tmp_path / Path(env["RENKEI_AUTH_FILE"]["value"]).name
        path.write_bytes(base64.b64decode(data["auth.yaml"]))
        monkeypatch.setenv("RENKEI_AUTH_FILE", str(path))
        key = base64.b64decode(data["admin-api-key"]).decode()
    else:
        monkeypatch.setenv("RENKEI_INSECURE_NO_AUTH", env["RENKEI_INSECURE_NO_AUTH"]["value"])
    shelter = {
        "id": "urn:ngsi-ld:EvacuationSite:狛江第一小学校",
        "type": "EvacuationSite",
        "name": {"type": "Property", "value": "狛江第一小学校"},
    }
    with broker(tmp_path / "hub.db") as url:
        entities = f"{url}/ngsi-ld/v1/entities"
        anonymous = httpx.post(entities, json=shelter)
        if key is None:
            assert anonymous.status_code == 201
            return
        assert anonymous.status_code == 401
        assert httpx.post(entities, json=shelter, headers={"X-API-Key": key}).status_code == 201
        # no anonymous reads: the entity is hidden as a missing one would be
        assert httpx.get(f"{entities}/{shelter['id']}").status_code == 404
        got = httpx.get(
            f"{entities}/{shelter['id']}", headers={"NGSILD-Tenant": "komae", "X-API-Key": key}
        )
        assert got.status_code == 404  # admitted in another tenant, where it does not exist
        got = httpx.get(f"{entities}/{shelter['id']}", headers={"X-API-Key": key})
        assert got.json()["name"]["value"] == "狛江第一小学校"


def test_broker_open_on_purpose_generates_nothing() -> None:
    docs = render({"broker": {"insecureNoAuth": True}})
    assert not of_kind(docs, "Secret")
    broker = broker_container(docs)
    env = env_of(broker)
    assert env["RENKEI_INSECURE_NO_AUTH"]["value"] == "true"
    assert "RENKEI_AUTH_FILE" not in env
    assert not [v for v in broker["volumes"] if v["name"] == "auth"]
    agent = env_of(agent_container(docs))
    assert "RENKEI_BROKER_API_KEY" not in agent
    assert "RENKEI_AUTH_FILE" not in agent


def test_operators_auth_file_replaces_the_generated_one() -> None:
    # broker.insecureNoAuth changes nothing once a file is given
    for extra in ({}, {"broker": {"insecureNoAuth": True}}):
        values = {**MONGODB_EXTERNAL, **extra}
        docs = render(values)
        assert not of_kind(docs, "Secret")
        broker = broker_container(docs)
        assert "RENKEI_INSECURE_NO_AUTH" not in env_of(broker)
        assert mounted_auth_file(broker) == ("renkei-auth", "auth.yaml")
        agent = agent_container(docs)
        assert mounted_auth_file(agent) == ("renkei-auth", "auth.yaml")
        key = env_of(agent)["RENKEI_BROKER_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert key == {"name": "renkei-iot-agent", "key": "api-key"}
    # another key name in the operator's Secret
    docs = render({**MONGODB_EXTERNAL, "auth": {**MONGODB_EXTERNAL["auth"], "key": "policy.yaml"}})
    assert mounted_auth_file(broker_container(docs)) == ("renkei-auth", "policy.yaml")


def test_unknown_store_type_is_refused_with_its_name() -> None:
    with pytest.raises(
        helm.HelmError, match="/store/type': value must be one of 'sqlite', 'mongodb'"
    ):
        render({"store": {"type": "postgres"}})


def test_grafana_dashboard_is_shipped_and_reads_renkei_metrics() -> None:
    text = (CHART / "dashboards" / "renkei.json").read_text("utf-8")
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        metrics = re.findall(r"\b([a-z_]+)\{", expr)
        assert metrics, expr
        assert all(m.startswith(("renkei_", "process_")) for m in metrics), expr
    (cm,) = [
        d for d in of_kind(render(CASES["prefecture"]), "ConfigMap") if "renkei.json" in d["data"]
    ]
    assert json.loads(cm["data"]["renkei.json"]) == dashboard
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"store": {"type": "postgres"}}, "/store/type"),
        ({"store": {"sqlite": {"synchronous": "OFF"}}}, "/store/sqlite/synchronous"),
        ({"brokers": {"replicas": 3}}, "brokers"),
        ({"iotAgent": {"replicas": -1}}, "/iotAgent/replicas"),
        ({"publish": {"every": "15 分"}}, "/publish/every"),
        ({"iotAgent": {"mqttVersion": "mqtt4"}}, "/iotAgent/mqttVersion"),
    ],
)
def test_values_schema_refuses_what_the_hub_would_refuse(
    values: dict[str, Any], where: str
) -> None:
    report = helm.lint(CHART, values, strict=True)
    assert any(where in e for e in report["errors"]), report["errors"]
    with helm.Chart.load(CHART) as chart:
        for good in CASES.values():
            chart.validate_schema(good)  # every shipped example passes
        with pytest.raises(helm.HelmError, match=where):
            chart.validate_schema(values)
