"""Property-based fuzzing: corrupted dumps through every reading command (fast profile).

The long profile (thousands of cases) is benchmarks/fuzz_long.py; its result is recorded in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from fuzzing import COMMANDS, check_command, corrupted_dump
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

FAST_EXAMPLES = 40  # about 15 s on one core: enough to catch a regression of the contract in the suite
SCRATCH = Path(tempfile.mkdtemp(prefix="actgeom-fuzz-"))  # the strategy needs it when the module loads
atexit.register(shutil.rmtree, SCRATCH, True)


@settings(max_examples=FAST_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=corrupted_dump(SCRATCH), command=st.sampled_from(sorted(COMMANDS)))
def test_corrupted_dumps_never_crash_leak_or_touch_the_input(case, command):
    path, description = case
    check_command(CliRunner(), command, path, description)
