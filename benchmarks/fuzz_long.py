"""The long fuzzing profile: corrupted dumps through every reading command, for a time budget.

    python benchmarks/fuzz_long.py --minutes 10 [--examples-per-round 500]

Runs rounds of the property of tests/test_fuzz.py (random seeds, no shrinking: a failure is
reported as found, and the next round goes on) until the budget is spent; prints the number of
cases, the exit codes seen and every failure. The result is recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import COMMANDS, check_command, corrupted_dump  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--examples-per-round", type=int, default=100)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="actgeom-fuzz-long-"))
    atexit.register(shutil.rmtree, scratch, True)
    codes: collections.Counter = collections.Counter()
    mutations: collections.Counter = collections.Counter()
    runner = CliRunner()

    @settings(max_examples=args.examples_per_round, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=corrupted_dump(scratch), command=st.sampled_from(sorted(COMMANDS)))
    def one_round(case, command):
        path, description = case
        began = time.monotonic()
        codes[(command, check_command(runner, command, path, description))] += 1
        took = time.monotonic() - began
        if took > slowest[0]:
            slowest[:] = [took, f"{command} after {description}"]
        mutations.update(step.split(" ")[0].rstrip(":") for step in description.split("; "))

    slowest: list = [0.0, ""]
    started, rounds, failures = time.monotonic(), 0, []
    while time.monotonic() - started < 60 * args.minutes:
        try:
            one_round()
        except Exception as exc:  # the property failed (or the harness did): record it, go on
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            print("FAILURE:", failures[-1], flush=True)
        rounds += 1
        print(f"round {rounds}: {sum(codes.values())} cases, {time.monotonic() - started:.0f} s", flush=True)
    elapsed = time.monotonic() - started
    print(f"cases: {sum(codes.values())} in {elapsed:.0f} s ({rounds} rounds of {args.examples_per_round})")
    print("exit codes by command:", dict(sorted(codes.items())))
    print("mutation steps:", dict(sorted(mutations.items())))
    print(f"slowest case: {slowest[0]:.2f} s ({slowest[1]})")
    print("result:", f"{len(failures)} failing round(s)" if failures else "no violation of the contract")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
