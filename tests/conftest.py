"""Test-wide settings: the tests never depend on this host's energy sensors.

A machine where RAPL is readable (CI as root on a laptop) would otherwise turn every
'modeled' energy figure the tests expect into a measured one. The probing itself is tested
with fake sensors (tests/test_energy_factory.py); the subprocesses tests start inherit this.
"""

import os

os.environ.setdefault("EDGEEXIT_ENERGY_METER", "modeled")
