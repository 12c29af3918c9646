"""bench/fleet_check.py against a real gateway (the ConfigMap's kvroute.yaml, `kvroute serve`) in front of
three simulated vLLM servers, all on 127.0.0.1: what the guide's "Verify routing on a live fleet"
tells an operator to run. The report's arithmetic is checked on fixed answers too."""

from __future__ import annotations

import json

from bench import fleet_check
from deploy_support import TINY_TOKENIZER, runnable_configmap
from sim_process import kv_event_args, running_gateway, running_sim, wait_for


def test_summary_arithmetic():
    answers = [fleet_check.Answer(0, "a", "cold", 100, 0), fleet_check.Answer(1, "b", "cold", 100, 0),
               fleet_check.Answer(0, "a", "prefix", 100, 96), fleet_check.Answer(1, "a", "load", 100, 0),
               fleet_check.Answer(0, "a", "prefix", 100, 10)]
    report = fleet_check.summarize(answers)
    assert report["requests"] == 5 and report["expected_warm"] == 2 and report["warm"] == 1
    # Agreeing: the two cold firsts, the warm repeat, the move to a cold backend; not the last.
    assert report["agreement"] == 0.8
    assert report["cached_share_after_first"] == round(106 / 300, 3)
    assert report["backends_per_group"] == {0: 1, 1: 2}
    assert report["branches"] == {"cold": 2, "prefix": 2, "load": 1}


def test_cost_routing_keeps_each_prefix_where_it_is_cached(capsys):
    # With the exact view the ConfigMap turns on: the simulators publish KV events and tokenize with a
    # real tokenizer, which the gateway loads for their model. (Pointed at publishers that do not
    # exist, the gateway would wait for events that never come and route with no cache view at all.)
    config = runnable_configmap()
    sim_args = ("--instances", "3", "--block-size", "16", "--kv-events-port", "0", "--tokenizer", str(TINY_TOKENIZER))
    with running_sim(*sim_args) as sim, \
            running_gateway(config, sim["urls"], "--tokenizer", f"sim-model={TINY_TOKENIZER}",
                            *kv_event_args(sim)) as gateway:
        wait_for(gateway["base"] + "/ready")  # a healthy backend seen: routing has a fleet
        assert fleet_check.main(["--url", gateway["base"], "--groups", "3", "--rounds", "4",
                                 "--prefix-words", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 12 and sum(report["branches"].values()) == 12
    # The servers' own cached_tokens agree with where the gateway sent each request.
    assert report["agreement"] == 1.0
    assert report["expected_warm"] == report["warm"] == 9
    assert all(count == 1 for count in report["backends_per_group"].values())
    assert report["cached_share_after_first"] > 0.5
