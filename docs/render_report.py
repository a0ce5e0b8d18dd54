"""Render the report of the bundled sample data in headless Chromium and save docs/report.png.

    python docs/render_report.py [--report PATH] [--out docs/report.png] [--chromium PATH]

Without --report, the report is made first (`actgeom report sample_data/*.h5 --ci`: the figures
show their 95 % intervals as error bars). Chromium runs
with networking disabled (every host resolves to nothing) and logs the page's console and its
network requests. The script fails (exit 1) when the page writes to the console, when it
requests anything but file:// URLs, or when no screenshot is written. Needs Debian's
`chromium` (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW = "1400,4000"
TIMEOUT_S = 180
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium(given: str | None) -> str | None:
    if given:
        return given
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def make_report(path: Path) -> None:
    dumps = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sample_data").glob("*.h5"))  # as the README runs it
    command = [sys.executable, "-c", "from actgeom.cli.app import main; main()", "report", *dumps, "--ci", "-o",
               str(path.resolve())]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself requested (the browser's own background requests are not the page's)."""
    log = json.loads(net_log.read_text())
    names = {value: key for key, value in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log.get("events", []):
        params = event.get("params", {})
        if names.get(event["type"]) == "URL_REQUEST_START_JOB" and "file://" in params.get("network_isolation_key", ""):
            if not params.get("url", "").startswith("file://"):
                urls.append(params["url"])
    return urls


def render(report: Path, out: Path, chromium: str) -> list[str]:
    """Screenshot ``report`` to ``out``; return the problems found (console lines, network requests)."""
    with tempfile.TemporaryDirectory() as profile:
        net_log = Path(profile) / "net.json"
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}/user", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
                   "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={net_log}",
                   f"--screenshot={out}", f"--window-size={WINDOW}", report.resolve().as_uri()]
        out.unlink(missing_ok=True)
        run = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        problems = [line for line in run.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]
        problems += [f"the page requested {url}" for url in page_requests(net_log)] if net_log.exists() else []
    if not out.exists() or out.stat().st_size == 0:
        problems.append(f"no screenshot written (chromium exit {run.returncode}): {run.stderr.strip()[-500:]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="an existing report page (default: make one from sample_data/)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--chromium", help="the browser binary (default: chromium on PATH)")
    args = parser.parse_args()
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("Error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        report = args.report or Path(tmp) / "report.html"
        if args.report is None:
            make_report(report)
        problems = render(report, args.out, chromium)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"wrote {args.out} ({WINDOW.replace(',', '×')} px); no console messages, no network requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
