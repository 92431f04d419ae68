"""Benchmarks: named scenarios that write a JSON result and a PNG chart (``expnet-stream bench``).

See ``README.md`` in this folder for what each scenario measures and the latest results on the project machine.
"""

from .common import BenchError as BenchError
from .runner import ALL as ALL
from .runner import SCENARIOS as SCENARIOS
from .runner import run_scenario as run_scenario
