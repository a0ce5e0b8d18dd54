"""The long fuzzing profile: corrupted dumps through every reading command, for a time budget.

    python benchmarks/fuzz_long.py --minutes 120 --cases 10000 [--examples-per-round 100]

Runs rounds of the property of tests/test_fuzz.py (random seeds, no shrinking: a failure is
reported as found, and the next round goes on) until the budget is spent; prints the number of
cases, the exit codes seen and every failure. Each round runs in a child process, so a case that
kills the process (a crash inside a C library) or hangs it is recorded too: the damaged file is
kept in benchmarks/_work/fuzz_failures/ with the command and the mutations. The result is
recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import COMMANDS, check_command, corrupted_dump  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

FAILURES = Path(__file__).resolve().parent / "_work" / "fuzz_failures"
CASE_TIME_LIMIT_S = 120  # a case takes well under a second; a round whose case runs longer is hung


def one_round(round_seed: int, examples: int, scratch: Path, report: Path) -> None:
    """In a child: ``examples`` cases. The case under way is kept in scratch/current.{json,h5} (for
    a crash or a hang) and the tallies so far in ``report`` (JSON), rewritten after every case."""
    tally = {"codes": collections.Counter(), "mutations": collections.Counter(), "slowest": [0.0, ""], "failures": []}
    runner = CliRunner()

    @seed(round_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=corrupted_dump(scratch / "case"), command=st.sampled_from(sorted(COMMANDS)))
    def cases(case, command):
        path, description = case
        shutil.copyfile(path, scratch / "current.h5")
        (scratch / "current.json").write_text(json.dumps({"command": command, "mutations": description}))
        began = time.monotonic()
        tally["codes"][f"{command} {check_command(runner, command, path, description)}"] += 1
        took = time.monotonic() - began
        if took > tally["slowest"][0]:
            tally["slowest"] = [took, f"{command} after {description}"]
        tally["mutations"].update(step.split(" ")[0].rstrip(":") for step in description.split("; "))
        report.write_text(json.dumps(tally))

    try:
        cases()
    except Exception as exc:  # the property failed: record it; the round ends here
        tally["failures"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    report.write_text(json.dumps(tally))


def watch(child, scratch: Path) -> str | None:
    """Wait for a round; → None when it ended normally, else what went wrong."""
    current = scratch / "current.json"
    while child.is_alive():
        child.join(5)
        if child.is_alive() and current.exists() and time.time() - current.stat().st_mtime > CASE_TIME_LIMIT_S:
            child.kill()
            child.join()
            return f"hung (one case ran over {CASE_TIME_LIMIT_S} s)"
    return None if child.exitcode == 0 else f"the process died (exit {child.exitcode})"


def keep_failure(scratch: Path, what: str) -> str:
    """Keep the case that killed or hung a round; → a description for the summary."""
    FAILURES.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    case = json.loads((scratch / "current.json").read_text()) if (scratch / "current.json").exists() else {}
    if (scratch / "current.h5").exists():
        shutil.copyfile(scratch / "current.h5", FAILURES / f"{stamp}.h5")
    (FAILURES / f"{stamp}.json").write_text(json.dumps(case | {"what": what}))
    return f"{what}: actgeom {case.get('command')} after {case.get('mutations')} (kept as {FAILURES / stamp}.h5)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--examples-per-round", type=int, default=100)
    parser.add_argument("--cases", type=int, default=None, help="stop once this many cases ran (else: the time budget)")
    parser.add_argument("--first-round", type=int, default=0, help="seed of the first round (parallel runs: distinct ranges)")
    args = parser.parse_args()
    context = multiprocessing.get_context("fork")
    codes: collections.Counter = collections.Counter()
    mutations: collections.Counter = collections.Counter()
    slowest: list = [0.0, ""]
    failures: list[str] = []
    started, rounds, reported = time.monotonic(), 0, 0
    while time.monotonic() - started < 60 * args.minutes and sum(codes.values()) < (args.cases or float("inf")):
        with tempfile.TemporaryDirectory(prefix="actgeom-fuzz-long-") as directory:
            scratch = Path(directory)
            (scratch / "case").mkdir()
            report = scratch / "report.json"
            child = context.Process(target=one_round, args=(args.first_round + rounds, args.examples_per_round, scratch, report))
            child.start()
            trouble = watch(child, scratch)
            if trouble is not None:
                failures.append(keep_failure(scratch, trouble))
            if report.exists():  # the tallies up to the last case that finished
                tally = json.loads(report.read_text())
                codes.update(tally["codes"])
                mutations.update(tally["mutations"])
                failures += tally["failures"]
                if tally["slowest"][0] > slowest[0]:
                    slowest = tally["slowest"]
        rounds += 1
        print(f"round {rounds}: {sum(codes.values())} cases, {len(failures)} failures, "
              f"{time.monotonic() - started:.0f} s", flush=True)
        for failure in failures[reported:]:
            print("FAILURE:", failure, flush=True)
        reported = len(failures)
    elapsed = time.monotonic() - started
    print(f"cases: {sum(codes.values())} in {elapsed:.0f} s ({rounds} rounds of {args.examples_per_round})")
    print("exit codes by command:", dict(sorted(codes.items())))
    print("mutation steps:", dict(sorted(mutations.items())))
    print(f"slowest case: {slowest[0]:.2f} s ({slowest[1]})")
    print("result:", f"{len(failures)} failure(s)" if failures else "no violation of the contract")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
