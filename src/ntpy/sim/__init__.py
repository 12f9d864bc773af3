"""Deterministic simulation of ntpy's synchronization core against simulated servers.

``python -m ntpy.sim SCENARIO [--seed N] [--json]`` runs one scenario (``all`` runs every
one and prints a results table against chrony and ntpd). See ``world`` for the model and
``scenarios`` for the table of setups and pass limits.
"""

from ntpy.sim.report import Metrics, Report, compute_metrics, markdown_table
from ntpy.sim.scenarios import SCENARIOS, Limits, Reference, Scenario, get_scenario
from ntpy.sim.world import EngineLike, Simulation, SimulationError, run_scenario

__all__ = [
    "SCENARIOS",
    "EngineLike",
    "Limits",
    "Metrics",
    "Reference",
    "Report",
    "Scenario",
    "Simulation",
    "SimulationError",
    "compute_metrics",
    "get_scenario",
    "markdown_table",
    "run_scenario",
]
