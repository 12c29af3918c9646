"""Every knob of `kvroute serve`, with one name everywhere.

A field `queue_threshold_low` is the YAML key `queue_threshold_low`, the CLI flag
`--queue-threshold-low`, the environment variable `KVROUTE_QUEUE_THRESHOLD_LOW` and the admin API
field `queue_threshold_low`. Precedence: defaults < YAML file < environment < CLI flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import ipaddress
import math
import os
import ssl
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from kvroute import model_tokenizers
from kvroute._native import POLICIES, InvalidConfig, RateLimiter, Router
from kvroute.tls import backend_context

ENV_PREFIX = "KVROUTE_"


class ConfigError(ValueError):
    """A configuration value is unknown or of the wrong type; the message names the key and its source."""


@dataclass
class Settings:
    # Listening sockets.
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    workers: int = 1
    # TLS on both listening sockets when both are set (PEM files; the key file may hold the chain too).
    tls_certfile: str = ""
    tls_keyfile: str = ""
    # HTTPS to backends: certificates are verified against the system store, or against this PEM
    # bundle (a private CA) when given; verification off only where an operator says so.
    backend_ca_file: str = ""
    backend_tls_verify: bool = True

    # Backends: static URLs; other discovery modes are chosen by `discovery`.
    backend: list[str] = field(default_factory=list)
    discovery: str = "static"  # static | file | dns | kubernetes
    discovery_file: str = ""
    discovery_interval: float = 2.0  # how often the file is checked and the DNS name resolved
    dns_name: str = ""
    dns_port: int = 8000  # port of DNS-discovered backends (and of EndpointSlices that list none)
    k8s_namespace: str = "default"
    k8s_label_selector: str = ""
    k8s_port_name: str = ""
    k8s_api_server: str = ""  # empty: in-cluster config, else ~/.kube/config; a URL: no credentials

    # Routing core.
    policy: str = "cost"
    # Overrides of the policy's weights (names and ranges: docs/routing.md); the rest keep defaults.
    policy_weights: dict[str, float] = field(default_factory=dict)
    block_tokens: int = 16
    bytes_per_token: float = 4.0
    seed: int = 0
    wait_queue_size: int = 0

    # Admission by tier: queue depth and predicted wait (ms); 0 means no limit.
    queue_threshold_high: int = 0
    queue_threshold_normal: int = 0
    queue_threshold_low: int = 0
    max_wait_ms_high: float = 0.0
    max_wait_ms_normal: float = 0.0
    max_wait_ms_low: float = 0.0

    # Data plane.
    max_body_size: int = 32 * 1024 * 1024
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    idle_timeout: float = 60.0
    total_timeout: float = 600.0
    retry_attempts: int = 2
    retry_budget: float = 0.2
    grace_period: float = 30.0
    queue_timeout: float = 30.0  # seconds a request may wait in the router's queue before a 503
    keepalive_timeout: float = 75.0  # an idle client connection is closed after this many seconds
    request_read_timeout: float = 30.0  # a request must arrive whole this long after its first byte (408)
    debug_headers: bool = False
    forward_api_key: bool = False
    api_key_tiers: dict[str, str] = field(default_factory=dict)
    # Per API key (the client's bearer token; requests without one share the key ""): requests per
    # second and tokens per minute, 0 for no limit; the *_by_key mappings set a key's own limits.
    rate_limit_rps: float = 0.0
    rate_limit_tpm: float = 0.0
    rate_limit_rps_by_key: dict[str, float] = field(default_factory=dict)
    rate_limit_tpm_by_key: dict[str, float] = field(default_factory=dict)

    # Control plane.
    poll_interval: float = 1.0
    poll_timeout: float = 0.8
    unhealthy_after: int = 3
    healthy_after: int = 2
    breaker_failures: int = 5
    breaker_cooldown: float = 10.0
    # vLLM KV events (--kv-events-config): each backend's ZMQ endpoint, named per backend URL, else one
    # port on every backend's host (Kubernetes pods), else a port offset rule (tcp://<backend host>:
    # <backend port + offset>); 0: no rule. Replay likewise.
    kv_events_endpoints: dict[str, str] = field(default_factory=dict)
    kv_events_replay_endpoints: dict[str, str] = field(default_factory=dict)
    kv_events_port: int = 0
    kv_events_replay_port: int = 0
    kv_events_port_offset: int = 0
    kv_events_replay_port_offset: int = 0
    kv_events_replay_timeout: float = 2.0
    # Token-exact block keys: model name (as requests carry it) -> local model directory with its
    # tokenizer.json and chat template; other models keep the byte estimate (kvroute/model_tokenizers.py).
    tokenizer: dict[str, str] = field(default_factory=dict)

    # Operations.
    log_format: str = "text"  # text | json
    log_level: str = "info"
    admin_token: str = ""
    # The admin API's changes, shared by every worker and kept across restarts (control/shared_state.py).
    admin_state_file: str = ""


_HELP = {
    "backend": "backend base URL (repeatable), e.g. http://127.0.0.1:8000",
    "discovery": "where backends come from besides --backend: static, file, dns, kubernetes",
    "policy": "routing policy: " + ", ".join(POLICIES),
    "admin_token": "bearer token for the admin API (better given as KVROUTE_ADMIN_TOKEN)",
    "admin_state_file": "file where admin API changes are kept, applied by every worker and on restart",
    "tls_certfile": "PEM certificate (chain) to serve HTTPS on the proxy and admin ports (with --tls-keyfile)",
    "tls_keyfile": "PEM private key of --tls-certfile",
    "backend_ca_file": "PEM CA bundle that https:// backends' certificates must chain to (default: the system store)",
    "backend_tls_verify": "verify https:// backends' certificates and host names (false: trust any, for testing only)",
    "kv_events_endpoints": "backend URL=ZMQ endpoint of its vLLM KV events, e.g. http://10.0.0.5:8000=tcp://10.0.0.5:5557",
    "kv_events_replay_endpoints": "backend URL=ZMQ replay endpoint of its KV event publisher",
    "kv_events_port": "KV events at tcp://<backend host>:<this port> for backends not named in kv_events_endpoints (0: none)",
    "kv_events_replay_port": "replay endpoint at tcp://<backend host>:<this port> (0: none)",
    "kv_events_port_offset": "KV events at tcp://<backend host>:<backend port + this> (0: only kv_events_endpoints)",
    "kv_events_replay_port_offset": "replay endpoint at tcp://<backend host>:<backend port + this> (0: none)",
    "tokenizer": "MODEL=DIR: tokenize MODEL's prompts with the tokenizer and chat template in DIR "
                 "(repeatable or a comma list), for exact cache keys",
    "policy_weights": "weights of the policy, e.g. content_weight=50,load_alpha=0.05 (docs/routing.md)",
    "rate_limit_rps": "requests per second allowed per API key (0: no limit); over it: 429 with Retry-After",
    "rate_limit_tpm": "tokens (prompt + output) per minute allowed per API key (0: no limit)",
    "rate_limit_rps_by_key": "a key's own requests per second, e.g. sk-a=50,sk-b=5 (better from the YAML file)",
    "rate_limit_tpm_by_key": "a key's own tokens per minute, e.g. sk-a=1000000",
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a YAML/env/CLI value into the field's type, or say which key and source are wrong."""
    kind = _field_types()[name]
    origin = typing.get_origin(kind)
    try:
        if origin is list:
            if isinstance(raw, str):
                return [item for item in raw.split(",") if item]
            if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
                raise TypeError("a list of strings")
            return list(raw)
        if origin is dict:
            value_type = typing.get_args(kind)[1]
            if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
                raw = ",".join(raw)  # a repeated flag
            if isinstance(raw, str):
                pairs = [item.split("=", 1) for item in raw.split(",") if item]
                if not all(len(pair) == 2 for pair in pairs):
                    raise TypeError("a list of name=value pairs")
                raw = dict(pairs)
            if not isinstance(raw, dict):
                raise TypeError("a mapping")
            expected = "a mapping of names to " + ("numbers" if value_type is float else "strings")
            if value_type is float and any(isinstance(v, bool) for v in raw.values()):
                raise TypeError(expected)
            values = {}
            for key, value in raw.items():
                try:
                    values[str(key)] = value_type(value)
                except (TypeError, ValueError):
                    raise TypeError(f"{expected} ({key!r} is {value!r})") from None
            return values
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return raw.lower() in ("1", "true", "yes", "on")
            raise TypeError("a boolean")
        if kind is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, str)):
                raise TypeError("an integer")
            return int(raw)
        if kind is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise TypeError("a number")
            number = float(raw)
            if math.isnan(number):  # NaN passes every range check below: refuse it here
                raise ValueError(raw)
            return number
        if kind is str:
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise TypeError("a string")
            return str(raw)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int too large for a float
        names = {int: "an integer", float: "a number"}
        expected = exc.args[0] if isinstance(exc, TypeError) else names.get(kind, f"a {kind.__name__}")
        raise ConfigError(f"{source}: key {name!r} must be {expected}, got {raw!r}") from None
    raise ConfigError(f"{source}: key {name!r} has an unsupported type")


# Values a key may take, checked where the value is read so that the error names its source.
CHOICES: dict[str, tuple[str, ...]] = {
    "discovery": ("static", "file", "dns", "kubernetes"),
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error", "critical"),
}
POSITIVE = frozenset({
    "discovery_interval", "poll_interval", "poll_timeout", "unhealthy_after", "healthy_after",
    "breaker_failures", "block_tokens", "bytes_per_token", "workers", "max_body_size", "kv_events_replay_timeout",
})
NON_NEGATIVE = frozenset({
    "breaker_cooldown", "connect_timeout", "first_byte_timeout", "idle_timeout", "total_timeout",
    "retry_attempts", "retry_budget", "grace_period", "queue_timeout", "keepalive_timeout",
    "request_read_timeout", "wait_queue_size", "rate_limit_rps", "rate_limit_tpm",
    "queue_threshold_high", "queue_threshold_normal", "queue_threshold_low",
    "max_wait_ms_high", "max_wait_ms_normal", "max_wait_ms_low",
})
PORTS = frozenset({"port", "admin_port", "dns_port", "kv_events_port", "kv_events_replay_port"})
# The core takes them as u64: a larger number would fail deep in the core instead of here.
UNSIGNED_64 = frozenset({"seed", "wait_queue_size", "queue_threshold_high", "queue_threshold_normal",
                         "queue_threshold_low"})
U64_MAX = 2**64 - 1


def _check(name: str, value: Any, source: str) -> None:
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"{source}: key {name!r} must be one of {', '.join(CHOICES[name])}; got {value!r}")
    if name in POSITIVE and value <= 0:
        raise ConfigError(f"{source}: key {name!r} must be greater than 0; got {value!r}")
    if name in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{source}: key {name!r} must not be negative; got {value!r}")
    if name in PORTS and not 0 <= value <= 65535:
        raise ConfigError(f"{source}: key {name!r} must be a port number (0-65535); got {value!r}")
    if name in UNSIGNED_64 and not 0 <= value <= U64_MAX:
        raise ConfigError(f"{source}: key {name!r} must be in 0..2**64-1; got {value!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin_exposure(settings: Settings) -> None:
    """The admin API steers the router: off loopback it must have a token. Kept out of `validate`, which
    also checks a file on its own, because the token normally arrives from the environment."""
    if not settings.admin_token and not is_loopback(settings.admin_host):
        raise ConfigError(f"configuration: key 'admin_host' is {settings.admin_host!r}, not a loopback address, and "
                          "'admin_token' is empty: set KVROUTE_ADMIN_TOKEN to expose the admin API")


def validate(settings: Settings) -> Settings:
    """Checks that involve several keys, once every source has been applied."""
    # Without a selector a Kubernetes source would take every EndpointSlice in the namespace.
    required = {"file": "discovery_file", "dns": "dns_name", "kubernetes": "k8s_label_selector"}
    needed = required.get(settings.discovery)
    if needed and not getattr(settings, needed):
        raise ConfigError(f"configuration: discovery is {settings.discovery!r} but key {needed!r} is empty")
    if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
        given, missing = ("tls_certfile", "tls_keyfile") if settings.tls_certfile else ("tls_keyfile", "tls_certfile")
        raise ConfigError(f"configuration: key {given!r} is set but {missing!r} is empty: TLS needs both")
    for key in ("tls_certfile", "tls_keyfile", "backend_ca_file"):
        path = getattr(settings, key)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"configuration: key {key!r}: cannot read {path!r}")
    if settings.backend_ca_file:
        try:
            backend_context(settings.backend_ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"configuration: key 'backend_ca_file': {settings.backend_ca_file!r} holds no usable "
                              f"PEM certificate: {exc}") from None
    # The core owns policy names, weights, block sizes and rate limits: it checks them.
    try:
        router = Router(settings.policy, block_tokens=settings.block_tokens, bytes_per_token=settings.bytes_per_token)
    except (InvalidConfig, OverflowError) as exc:  # OverflowError: block_tokens beyond the core's u32
        raise ConfigError(f"configuration: the routing core refuses policy {settings.policy!r}, block_tokens "
                          f"{settings.block_tokens}, bytes_per_token {settings.bytes_per_token}: {exc}") from None
    if settings.policy_weights:
        try:
            router.set_policy(settings.policy, **settings.policy_weights)
        except InvalidConfig as exc:
            raise ConfigError(f"configuration: key 'policy_weights': {exc}") from None
    for key, tier in settings.api_key_tiers.items():
        if not isinstance(key, str) or not key or tier not in ("high", "normal", "low"):
            raise ConfigError(f"configuration: key 'api_key_tiers': {key!r} maps to {tier!r}; each API key must map "
                              "to one of high, normal, low")
    try:
        rate_limiter(settings)
    except InvalidConfig as exc:
        raise ConfigError(f"configuration: key 'rate_limit_rps_by_key' or 'rate_limit_tpm_by_key': {exc}") from None
    try:
        model_tokenizers.load_all(settings.tokenizer)
    except model_tokenizers.TokenizerDirError as exc:
        raise ConfigError(f"configuration: key 'tokenizer': {exc}") from None
    if settings.poll_timeout > settings.poll_interval:
        raise ConfigError(f"configuration: key 'poll_timeout' ({settings.poll_timeout}) must not exceed "
                          f"'poll_interval' ({settings.poll_interval}), or polls of a hung backend pile up")
    return settings


def from_mapping(values: Mapping[str, Any], source: str, base: Settings | None = None) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = dataclasses.replace(base) if base else Settings()
    for key, raw in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)  # YAML keys need not be strings
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        value = _coerce(key, raw, source)
        if key == "log_level":
            value = value.lower()
        _check(key, value, source)
        setattr(settings, key, value)
    return settings


def from_yaml(path: str | Path, base: Settings | None = None) -> Settings:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    except RecursionError:  # PyYAML builds nested collections recursively
        raise ConfigError(f"{path}: cannot read configuration: nested too deeply") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return from_mapping(loaded, str(path), base)


def from_env(environ: Mapping[str, str], base: Settings) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {}
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in known:
                values[name] = raw
    return from_mapping(values, "environment", base)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; defaults are None so that only given flags override."""
    parser.add_argument("--config", help="YAML configuration file")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = _field_types()[f.name]
        help_text = _HELP.get(f.name, f"(env {ENV_PREFIX}{f.name.upper()})")
        if typing.get_origin(kind) in (list, dict):
            parser.add_argument(flag, action="append", default=None, help=help_text)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    settings = Settings()
    if getattr(args, "config", None):
        settings = from_yaml(args.config, settings)
    settings = from_env(os.environ if environ is None else environ, settings)
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(args, f.name, None) is not None
    }
    settings = validate(from_mapping(given, "command line", settings))
    check_admin_exposure(settings)
    return settings


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """The core's per-key buckets for one worker process, None when nothing is limited. Each of
    `workers` processes gets its share of every rate: the kernel spreads connections over them."""
    share = 1.0 / max(1, settings.workers)
    keys = set(settings.rate_limit_rps_by_key) | set(settings.rate_limit_tpm_by_key)
    per_key = {key: (settings.rate_limit_rps_by_key.get(key, settings.rate_limit_rps) * share,
                     settings.rate_limit_tpm_by_key.get(key, settings.rate_limit_tpm) * share) for key in keys}
    limiter = RateLimiter(requests_per_s=settings.rate_limit_rps * share,
                          tokens_per_min=settings.rate_limit_tpm * share, per_key=per_key)
    return limiter if limiter.enabled() else None


def fingerprint(secret: str) -> str:
    """A name for a secret that an operator can match against their own copy, and that gives it away
    to nobody: the start of its SHA-256."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain values for the admin API: the admin token and the API keys never leave the process."""
    values = dataclasses.asdict(settings)
    values["admin_token"] = "***" if settings.admin_token else ""
    for name in ("api_key_tiers", "rate_limit_rps_by_key", "rate_limit_tpm_by_key"):
        values[name] = {fingerprint(key): value for key, value in getattr(settings, name).items()}
    return values


def parse_settings(argv: Sequence[str]) -> Settings:
    """Settings for `kvroute serve`; a configuration error exits with its message, not a traceback."""
    parser = argparse.ArgumentParser(prog="kvroute serve")
    add_arguments(parser)
    try:
        return load(parser.parse_args(list(argv)))
    except ConfigError as exc:
        parser.exit(2, f"kvroute serve: configuration error: {exc}\n")


__all__ = ["ConfigError", "Settings", "add_arguments", "load", "from_yaml", "from_mapping", "as_dict", "parse_settings",
           "validate", "is_loopback", "check_admin_exposure"]
