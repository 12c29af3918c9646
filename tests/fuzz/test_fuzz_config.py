"""Configuration loading on arbitrary input from each source (YAML file, environment, command line):
every input ends as Settings that the routing core accepts, or as a ConfigError that names the
problem; never a traceback of another type."""

from __future__ import annotations

import argparse
import dataclasses
import math

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from kvroute import Router
from kvroute.config import ConfigError, Settings, add_arguments, from_env, from_mapping, from_yaml, load, validate
from tests.fuzz.budget import budget

FIELDS = [f.name for f in dataclasses.fields(Settings)]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=20) | st.sampled_from(["nan", "inf", "-1", "0", "1e999", "cost", "high", "a=1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4), max_leaves=12)
keys = st.sampled_from(FIELDS) | st.text(max_size=12) | st.integers() | st.none()


def usable(settings: Settings) -> None:
    """Accepted settings must start the core as the gateway builds it."""
    router = Router(settings.policy, block_tokens=settings.block_tokens, bytes_per_token=settings.bytes_per_token,
                    seed=settings.seed, wait_queue_size=settings.wait_queue_size)
    if settings.policy_weights:
        router.set_policy(settings.policy, **settings.policy_weights)
    for tier in ("high", "normal", "low"):
        router.set_admission(tier, max_queue=getattr(settings, f"queue_threshold_{tier}") or None,
                             max_wait_ms=getattr(settings, f"max_wait_ms_{tier}") or None)
    for name in FIELDS:
        value = getattr(settings, name)
        if isinstance(value, float):
            assert not math.isnan(value), f"{name} accepted NaN: every range check passes on NaN"


def settle(make: object) -> None:
    try:
        settings = validate(make())  # type: ignore[operator]
    except ConfigError as exc:
        assert str(exc)
        return
    usable(settings)


@budget(200)
@given(st.dictionaries(keys, values, max_size=6))
@example({1: 2})
@example({"policy_weights": {"queue_weight": 10**400}})
@example({"policy": "no-such-policy"})
@example({"block_tokens": 2**40})
@example({"seed": -1})
@example({"wait_queue_size": 2**70})
@example({"queue_threshold_low": 2**64})
@example({"poll_interval": "nan"})
def test_any_mapping(mapping: dict) -> None:
    settle(lambda: from_mapping(mapping, "test"))


@budget(100)
@given(st.dictionaries(keys, values, max_size=6).map(lambda m: yaml.safe_dump(m).encode())
       | st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@example(b"1: 2\n")
@example(b"port: \xff\xfe\n")
@example(b"[" * 5000 + b"]" * 5000)
@example(b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000)
def test_any_yaml_file(tmp_path_factory, document: bytes) -> None:
    path = tmp_path_factory.mktemp("config") / "kvroute.yaml"
    path.write_bytes(document)
    settle(lambda: from_yaml(path))


env_values = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)


@budget(100)
@given(st.dictionaries(st.sampled_from(FIELDS).map(lambda n: "KVROUTE_" + n.upper()), env_values, max_size=6))
def test_any_environment(environ: dict[str, str]) -> None:
    settle(lambda: from_env(environ, Settings()))


@budget(100)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), env_values), max_size=6))
def test_any_command_line(flags: list[tuple[str, str]]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in flags
            if not isinstance(dataclasses.fields(Settings)[FIELDS.index(name)].default, bool)]
    args = parser.parse_args(argv)
    settle(lambda: load(args, {}))
