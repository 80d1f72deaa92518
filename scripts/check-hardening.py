#!/usr/bin/env python3
"""Checks that the rendered manifests (target/deploy/<overlay>.yaml) and compose keep the
hardening the deployment promises (docs/security.md): every namespace enforces the
restricted Pod Security Standard; every pod runs without a service-account token, as
non-root with the RuntimeDefault seccomp profile, and every container without privilege
escalation, with every capability dropped and a read-only root; PodDisruptionBudgets use
maxUnavailable (never blocking a one-replica drain); compose publishes ports on 127.0.0.1
only; network policies deny by default, let every pod resolve names, open every declared
container port to someone named and nothing to everyone; each service reaches PostgreSQL
as a role of its own (the roles roles.sql creates, which the CloudNativePG cluster gives
passwords). Exits 1 naming each breach."""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pod_specs(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        yield doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def check_manifest(path, breaches):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    check_network(path, docs, breaches)
    for doc in docs:
        name = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "Namespace":
            labels = doc["metadata"].get("labels", {})
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                breaches.append(f"{name}: not labelled to enforce the restricted standard")
        if doc.get("kind") == "PodDisruptionBudget" and "minAvailable" in doc["spec"]:
            breaches.append(f"{name}: minAvailable blocks draining a single replica")
        for spec in pod_specs(doc):
            if spec.get("automountServiceAccountToken") is not False:
                breaches.append(f"{name}: mounts a service-account token")
            pod = spec.get("securityContext", {})
            if pod.get("runAsNonRoot") is not True:
                breaches.append(f"{name}: may run as root")
            if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                breaches.append(f"{name}: no RuntimeDefault seccomp profile")
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                ctx = container.get("securityContext", {})
                where = f"{name} container {container['name']}"
                if ctx.get("allowPrivilegeEscalation") is not False:
                    breaches.append(f"{where}: privilege escalation allowed")
                if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                    breaches.append(f"{where}: capabilities not all dropped")
                if ctx.get("readOnlyRootFilesystem") is not True:
                    breaches.append(f"{where}: writable root filesystem")


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions with In) selects `labels`."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] != "In" or labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def check_network(path, docs, breaches):
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    deny = [
        p for p in policies
        if p["spec"].get("podSelector") == {}
        and sorted(p["spec"].get("policyTypes", [])) == ["Egress", "Ingress"]
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    if not deny:
        breaches.append(f"{path.name}: no default-deny NetworkPolicy")
    for policy in policies:
        name = f"{path.name}: NetworkPolicy/{policy['metadata']['name']}"
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("from"):
                breaches.append(f"{name}: an ingress rule open to everyone")
        for rule in policy["spec"].get("egress", []):
            if not rule.get("to"):
                breaches.append(f"{name}: an egress rule open to everywhere")
    for doc in docs:
        for spec in pod_specs(doc):
            labels = (doc["spec"].get("template") or doc["spec"]["jobTemplate"]["spec"]["template"])["metadata"].get("labels", {})
            name = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
            mine = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
            dns = any(
                port.get("port") == 53
                for p in mine for rule in p["spec"].get("egress", []) for port in rule.get("ports", [])
            )
            if not dns:
                breaches.append(f"{name}: no policy lets it resolve names")
            opened = {
                port.get("port")
                for p in mine for rule in p["spec"].get("ingress", []) for port in rule.get("ports", [])
            }
            for container in spec.get("containers", []):
                for port in container.get("ports", []):
                    if port["containerPort"] not in opened:
                        breaches.append(f"{name}: port {port['containerPort']} open to no one")


def check_database_roles(path, breaches):
    """Each workload's DATABASE_URL is its service's own key of `salesplan-database` (one
    role per service); the listener has none."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        for spec in pod_specs(doc):
            service = doc["metadata"]["name"].removesuffix("-migrate").removesuffix("-verify")
            for container in spec.get("containers", []):
                for env in container.get("env", []):
                    if env["name"] != "DATABASE_URL":
                        continue
                    ref = env.get("valueFrom", {}).get("secretKeyRef", {})
                    if service == "tunnel-listener":
                        breaches.append(f"{path.name}: the listener gets a database")
                    elif (ref.get("name"), ref.get("key")) != ("salesplan-database", service):
                        breaches.append(
                            f"{path.name}: {doc['kind']}/{doc['metadata']['name']} connects "
                            f"as {ref.get('name')}/{ref.get('key')}, not its own role"
                        )


def check_verify_role(path, breaches):
    """The read-only role on deal-service's schema is held by the verify job alone."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        for spec in pod_specs(doc):
            for container in spec.get("containers", []):
                for env in container.get("env", []):
                    key = env.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
                    if key == "reporting-verify" and doc["metadata"]["name"] != "reporting-verify":
                        breaches.append(
                            f"{path.name}: {doc['kind']}/{doc['metadata']['name']} holds the verify role"
                        )


def check_cluster_roles(breaches):
    """The cluster runs roles.sql as it is, and gives a password to each role it creates."""
    sql = (ROOT / "deploy/k8s/postgres/roles.sql").read_text()
    created = set(re.findall(r"'(salesplan_[a-z_]+)'", sql))
    rendered = ROOT / "target" / "deploy" / "postgres" / "cluster.yaml"
    if not rendered.exists():
        breaches.append("no rendered cluster in target/deploy/postgres (run scripts/check-deploy.sh)")
        return
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "salesplan-pg-roles"]
    if not maps or maps[0]["data"].get("roles.sql") != sql:
        breaches.append("cluster: the ConfigMap salesplan-pg-roles is not roles.sql")
    cluster = next(d for d in docs if d["kind"] == "Cluster")
    managed = {r["name"] for r in cluster["spec"].get("managed", {}).get("roles", [])
               if r.get("login") and r.get("passwordSecret")}
    if managed != created:
        breaches.append(f"cluster: roles with a password {sorted(managed)} != roles.sql's {sorted(created)}")


def check_compose(path, breaches):
    compose = yaml.safe_load(path.read_text())
    for name, service in compose.get("services", {}).items():
        for port in service.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                breaches.append(f"{path.name}: {name} publishes {port} on every interface")


def main():
    breaches = []
    rendered = sorted((ROOT / "target" / "deploy").glob("*.yaml"))
    if not rendered:
        breaches.append("no rendered overlay in target/deploy (run scripts/check-deploy.sh)")
    for path in rendered:
        check_manifest(path, breaches)
        check_database_roles(path, breaches)
        check_verify_role(path, breaches)
    check_cluster_roles(breaches)
    check_compose(ROOT / "deploy" / "compose.yaml", breaches)
    for breach in breaches:
        print(f"check-hardening: {breach}")
    if not breaches:
        print(f"check-hardening: {len(rendered)} overlays and compose keep the hardening")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
