"""checkov over everything an operator applies: every kustomize output, every Helm values set's
render, the Terraform modules and examples, the Dockerfile. Each finding must be in
deploy/checkov-baseline.yaml with its reason, and each baseline entry must still be needed.

checkov lives in its own environment (`make deploy-tools`; its dependency pins would fight the
project's .venv): `make test` passes it as KVROUTE_CHECKOV, and then a missing checkov fails this
test instead of skipping it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from cluster_model import rendered
from deploy_support import DEPLOY, ROOT

BASELINE = DEPLOY / "checkov-baseline.yaml"
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def _checkov() -> str:
    given = os.environ.get("KVROUTE_CHECKOV")
    if given:
        assert Path(given).is_file(), f"KVROUTE_CHECKOV={given} does not exist: run `make deploy-tools`"
        return given
    found = shutil.which("checkov")
    if found is None:
        pytest.skip("checkov not installed (`make deploy-tools` builds it; `make test` sets KVROUTE_CHECKOV)")
    return found


def _findings(args: list[str]) -> dict[str, set[str]]:
    # --skip-download: no Prisma Cloud guidelines or external modules (no network here, and none needed).
    result = subprocess.run([_checkov(), *args, "--compact", "--quiet", "--skip-download", "-o", "json"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=dict(os.environ, LOG_LEVEL="ERROR"))
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout) if result.stdout.strip() else []
    found: dict[str, set[str]] = defaultdict(set)
    for report in reports if isinstance(reports, list) else [reports]:
        assert not report["summary"]["parsing_errors"], report["summary"]
        for check in report["results"]["failed_checks"]:
            found[check["check_id"]].add(check["resource"])
    return found


def _compare(framework: str, found: dict[str, set[str]]) -> None:
    baseline = yaml.safe_load(BASELINE.read_text())[framework] or {}
    for check, entry in baseline.items():
        assert entry["why"].strip(), f"{check}: a skip without a reason"
    unexplained = {c: sorted(r - set(baseline.get(c, {}).get("resources", []))) for c, r in found.items()}
    unexplained = {c: r for c, r in unexplained.items() if r}
    assert not unexplained, f"checkov findings not in {BASELINE.name}: {unexplained}"
    stale = {c: sorted(set(e["resources"]) - found.get(c, set())) for c, e in baseline.items()}
    stale = {c: r for c, r in stale.items() if r}
    assert not stale, f"{BASELINE.name} entries no finding needs any more: {stale}"


def test_kubernetes_manifests_and_chart_renders(tmp_path):
    from helm_support import NAMESPACE, VALUE_SETS, render

    for folder in KUSTOMIZATIONS:
        name = str(folder.relative_to(DEPLOY)).replace("/", "_")
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered(folder)))
    for name, values in VALUE_SETS.items():
        docs = render(values)
        for doc in docs:  # what `helm install -n kvroute` does at apply time
            doc["metadata"].setdefault("namespace", NAMESPACE)
        (tmp_path / f"helm-{name}.yaml").write_text(yaml.safe_dump_all(docs))
    _compare("kubernetes", _findings(["-d", str(tmp_path), "--framework", "kubernetes"]))


def test_terraform():
    _compare("terraform", _findings(["-d", "infra/terraform", "--framework", "terraform"]))


def test_dockerfile():
    _compare("dockerfile", _findings(["-f", "deploy/Dockerfile", "--framework", "dockerfile"]))


def test_the_comparison_fails_on_an_unexplained_finding():
    with pytest.raises(AssertionError, match="not in checkov-baseline.yaml"):
        _compare("dockerfile", {"CKV_DOCKER_7": {"deploy/Dockerfile.FROM"}, "CKV_DOCKER_2": {"x"}})
    with pytest.raises(AssertionError, match="no finding needs any more"):
        _compare("dockerfile", {})
