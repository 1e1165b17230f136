"""The simulated TEE for development: a software "platform" whose evidence is signed by a
simulated platform key kept in a file. It protects nothing; policies accept its evidence only
when they tolerate ``simulation``. See ``docs/simulator.md``."""

from confide.sim.measure import Measurement, measure_command, resolve_command
from confide.sim.platform import SimPlatform, load_platform_public_key

__all__ = ["Measurement", "SimPlatform", "load_platform_public_key", "measure_command", "resolve_command"]
