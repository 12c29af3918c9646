"""How discovery sets change the fleet, and how sources leave each other's backends alone.

No network here: the fleet is the real one over the real native core, fed target sets directly.
"""

from kvroute._native import Router
from kvroute.control.discovery import Reconciler, Target
from kvroute.control.fleet import Fleet


def targets(*urls: str, draining: tuple[str, ...] = ()) -> dict[str, Target]:
    return {url: Target(url, draining=url in draining) for url in urls}


def make() -> tuple[Router, Fleet]:
    router = Router("round_robin")
    return router, Fleet(router)


def test_added_drained_and_retired():
    router, fleet = make()
    added = []
    source = Reconciler(fleet, "file", on_added=added.append)
    source.apply(targets("http://a:1", "http://b:1"))
    assert sorted(b.id for b in added) == ["a:1", "b:1"]
    assert not fleet.get("a:1").healthy  # not routable before its first successful poll
    source.apply(targets("http://a:1", "http://b:1", draining=("http://b:1",)))
    assert fleet.get("b:1").draining and fleet.get("b:1").discovery_draining
    source.apply(targets("http://a:1"))
    assert fleet.get("b:1").retiring  # nothing in flight: gone at the next tick
    fleet.tick()
    assert fleet.get("b:1") is None and router.backend_ids() == ["a:1"]


def test_a_retiring_backend_waits_for_its_requests_and_can_come_back():
    router, fleet = make()
    source = Reconciler(fleet, "dns")
    source.apply(targets("http://a:1"))
    backend = fleet.get("a:1")
    backend.liveness.record(True)
    backend.models = ["m"]
    fleet.push(backend)
    decision = router.route(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    assert decision.backend_id == "a:1"
    source.apply({})
    fleet.tick()
    assert fleet.get("a:1") is backend and backend.retiring  # a request is still running there
    source.apply(targets("http://a:1"))  # back in DNS before it left: revived, not re-added
    assert fleet.get("a:1") is backend and not backend.retiring and not backend.draining
    source.apply({})
    router.release(decision.ticket, True)
    fleet.tick()
    assert fleet.get("a:1") is None


def test_sources_leave_each_others_backends_alone():
    router, fleet = make()
    Reconciler(fleet, "static").apply(targets("http://s:1"))
    fleet.add("http://admin:1", source="admin")
    source = Reconciler(fleet, "file")
    source.apply(targets("http://s:1", "http://f:1"))
    assert fleet.get("s:1").source == "static"  # listed by both: stays static
    source.apply({})
    fleet.tick()
    assert sorted(b.id for b in fleet.all()) == ["admin:1", "s:1"]
    operator = fleet.set_drained("s:1", True)
    Reconciler(fleet, "static").apply(targets("http://s:1"))
    assert operator.drained  # a source does not undo an operator's drain
