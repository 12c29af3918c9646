"""`python -m bench.run`'s command line: windows, seeds and sweep selection reach the suite it runs,
bad values are refused with a message, and the suites as defined are never changed by a run."""

from __future__ import annotations

import pytest

from bench import contenders, run


def test_trace_window_and_seed_reach_every_trace_sweep() -> None:
    suite, _ = run.configure(["--suite", "full", "--trace-window", "0:1992", "--seed", "7"])
    traces = [s for s in suite.sweeps if s.workload == "trace"]
    assert len(traces) == 2 and suite.seed == 7
    assert all((s.params["start"], s.params["limit"]) == (0, 1992) for s in traces)
    # The suite's definition still names the tuning window.
    assert all(s.params["start"] == run.TUNING_WINDOW[0] for s in run.SUITES["full"].sweeps)


def test_max_requests_cuts_a_copy_of_the_params() -> None:
    suite, _ = run.configure(["--suite", "standard", "--workloads", "trace", "--max-requests", "10"])
    assert [s.params["limit"] for s in suite.sweeps] == [10]
    assert run.SUITES["standard"].sweeps[-1].params["limit"] == run.TUNING_WINDOW[1]


def test_a_sweep_is_chosen_by_its_label() -> None:
    suite, _ = run.configure(["--suite", "full", "--workloads", "trace-full"])
    assert [s.label for s in suite.sweeps] == ["trace-full"]
    full = suite.sweeps[0]
    # Its own profile restarts the fleet; the quarter-length sweep's engine field does too.
    quarter = run.SUITES["full"].sweeps[0]
    shapes = {full.fleet_shape(suite), quarter.fleet_shape(suite), run.Sweep("trace", "open", [1]).fleet_shape(suite)}
    assert len(shapes) == 3


@pytest.mark.parametrize("argv, said", [
    (["--trace-window", "5"], "START:COUNT"),
    (["--trace-window", "-1:4"], "START:COUNT"),
    (["--trace-window", "3:0"], "START:COUNT"),
    (["--workloads", "nope"], "none of nope is in suite quick"),
])
def test_bad_values_are_refused_with_the_reason(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run.configure(argv)
    assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_a_kvroute_contender_carries_its_weights_to_serve() -> None:
    c = contenders.by_name("kvroute:cost+exact:w2@content_weight=0@load_alpha=0.05")
    assert (c.name, c.exact, c.workers) == ("kvroute:cost+exact:w2@content_weight=0@load_alpha=0.05", True, 2)
    assert c.flags[-2:] == ("--policy-weights", "content_weight=0.0,load_alpha=0.05")
    assert contenders.by_name("kvroute:cost").flags == contenders.KVROUTE_FLAGS


@pytest.mark.parametrize("spec", ["kvroute:cost@nope=1", "kvroute:cost@content_weight=x",
                                  "kvroute:cost@content_weight", "kvroute:round_robin@queue_weight=1"])
def test_a_weight_the_policy_lacks_or_without_a_number_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="is not <weight>=<number> with a weight of"):
        contenders.by_name(spec)
