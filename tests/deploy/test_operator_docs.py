"""The operator's documents point at things that exist: README links every doc, and every repository
path the deployment documents name (in backticks or links) is there."""

from __future__ import annotations

import re

import pytest

from deploy_support import ROOT

DOCUMENTS = ["docs/deployment.md", "docs/gpu-server.md", "docs/reading-list.md", "deploy/local/README.md",
             "infra/terraform/README.md"]
PATH = re.compile(r"(?<![\w/.-])((?:deploy|infra|docs|tests|bench|controlplane)/[\w./-]*[\w/])")


def test_readme_links_every_doc_and_infra():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(([^)]+)\)", readme))
    docs = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert docs <= linked, f"README does not link {sorted(docs - linked)}"
    assert "infra/terraform/README.md" in linked


@pytest.mark.parametrize("document", DOCUMENTS)
def test_named_paths_exist(document):
    text = (ROOT / document).read_text()
    # `kubectl rollout status deploy/vllm` names a Deployment, not a folder.
    resources = set(re.findall(r"(?:status|scale|restart)\s+(deploy/[\w-]+)", text))
    named = set(PATH.findall(text)) - resources
    assert named, f"{document} names no path (the pattern is wrong)"
    base = (ROOT / document).parent
    missing = sorted(p for p in named if not (ROOT / p).exists() and not (base / p).exists()
                     and not p.endswith("/fleets/"))
    assert not missing, f"{document} names paths that do not exist: {missing}"
