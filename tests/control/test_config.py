"""Settings: one name per knob across YAML, env and CLI; errors name the key and where it came from."""

import argparse

import pytest

from kvroute.config import ConfigError, Settings, add_arguments, load


def _load(argv, environ=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(argv), environ or {})


def test_precedence_yaml_env_cli(tmp_path):
    path = tmp_path / "kvroute.yaml"
    path.write_text("poll_interval: 2.5\npoll_timeout: 1\nbreaker_failures: 7\nbackend: [http://a:1]\n")
    settings = _load(["--config", str(path), "--breaker-failures", "9"], {"KVROUTE_POLL_INTERVAL": "3"})
    assert settings.poll_interval == 3.0
    assert settings.breaker_failures == 9
    assert settings.backend == ["http://a:1"]
    assert settings.poll_timeout == 1.0


@pytest.mark.parametrize("text, words", [
    ("pol_interval: 1\n", ["kvroute.yaml", "'pol_interval'", "did you mean 'poll_interval'"]),
    ("poll_interval: fast\n", ["kvroute.yaml", "'poll_interval'"]),
    ("breaker_failures: [1]\n", ["kvroute.yaml", "'breaker_failures'", "an integer"]),
    ("discovery: consul\n", ["kvroute.yaml", "'discovery'", "static, file, dns, kubernetes"]),
    ("poll_interval: 0\n", ["kvroute.yaml", "'poll_interval'", "greater than 0"]),
    ("admin_port: 70000\n", ["kvroute.yaml", "'admin_port'", "port"]),
    ("- just\n- a list\n", ["kvroute.yaml", "mapping"]),
    ("a: [unclosed\n", ["kvroute.yaml", "cannot read"]),
])
def test_yaml_errors_name_key_and_file(tmp_path, text, words):
    path = tmp_path / "kvroute.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        _load(["--config", str(path)])
    for word in words:
        assert word in str(info.value)


def test_env_and_cli_errors_name_their_source():
    with pytest.raises(ConfigError, match=r"^environment: key 'healthy_after'"):
        _load([], {"KVROUTE_HEALTHY_AFTER": "two"})
    with pytest.raises(ConfigError, match=r"^command line: key 'log_format'"):
        _load(["--log-format", "xml"])


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="'discovery_file'"):
        _load(["--discovery", "file"])
    with pytest.raises(ConfigError, match="'dns_name'"):
        _load(["--discovery", "dns"])
    with pytest.raises(ConfigError, match="'k8s_label_selector'"):
        _load(["--discovery", "kubernetes"])
    with pytest.raises(ConfigError, match="'poll_timeout'"):
        _load(["--poll-interval", "0.5", "--poll-timeout", "2"])
    with pytest.raises(ConfigError, match="'admin_host'.*KVROUTE_ADMIN_TOKEN"):
        _load(["--admin-host", "0.0.0.0"])
    assert _load(["--admin-host", "0.0.0.0"], {"KVROUTE_ADMIN_TOKEN": "t"}).admin_token == "t"
    assert _load(["--admin-host", "::1"]).admin_host == "::1"


def test_api_key_tiers_name_a_known_tier(tmp_path):
    config = tmp_path / "kvroute.yaml"
    config.write_text("api_key_tiers:\n  gold: platinum\n")
    with pytest.raises(ConfigError, match="'api_key_tiers'.*'gold' maps to 'platinum'"):
        _load(["--config", str(config)])
    config.write_text("api_key_tiers:\n  gold: high\n")
    assert _load(["--config", str(config)]).api_key_tiers == {"gold": "high"}


def test_defaults_are_valid():
    assert _load([]) == Settings()


def test_policy_weights_from_yaml_env_and_cli_reach_the_core(tmp_path):
    from kvroute.gateway import Gateway

    path = tmp_path / "kvroute.yaml"
    path.write_text("policy: cost\npolicy_weights: {load_alpha: 0.05, content_weight: 50}\n")
    assert _load(["--config", str(path)]).policy_weights == {"load_alpha": 0.05, "content_weight": 50.0}
    assert _load([], {"KVROUTE_POLICY_WEIGHTS": "kv_knee=0.9"}).policy_weights == {"kv_knee": 0.9}
    settings = _load(["--config", str(path), "--policy-weights", "content_weight=7"])
    assert settings.policy_weights == {"content_weight": 7.0}  # the command line replaces the mapping
    name, weights = Gateway(settings, admin=False).router.policy()
    assert name == "cost" and weights["content_weight"] == 7.0
    assert weights["load_alpha"] == Gateway(Settings(), admin=False).router.policy()[1]["load_alpha"]


@pytest.mark.parametrize("argv, words", [
    (["--policy-weights", "content_weight"], ["command line", "'policy_weights'", "name=value"]),
    (["--policy-weights", "content_weight=fast"], ["command line", "'policy_weights'", "names to numbers", "'content_weight' is 'fast'"]),
    (["--policy-weights", "bogus=1"], ["'policy_weights'", "no weight \"bogus\""]),
    (["--policy-weights", "content_weight=2000"], ["'policy_weights'", "outside"]),
    (["--policy", "prefix_hash", "--policy-weights", "content_weight=1"], ["'policy_weights'", "prefix_hash"]),
])
def test_policy_weight_errors_name_the_key(argv, words):
    with pytest.raises(ConfigError) as info:
        _load(argv)
    for word in words:
        assert word in str(info.value)
