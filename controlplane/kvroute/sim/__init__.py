"""The vLLM simulator (`kvroute sim`): fake vLLM servers that schedule, cache and time requests
like vLLM's V1 engine. See docs/simulator.md."""

from .fleet import SimFleet, ThreadedFleet
from .profiles import BUILTIN as PROFILES
from .profiles import Profile, load_profile
from .server import FAULT_MODES, SimInstance

__all__ = ["FAULT_MODES", "PROFILES", "Profile", "SimFleet", "SimInstance", "ThreadedFleet", "load_profile"]
