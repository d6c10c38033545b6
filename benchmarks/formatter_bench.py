"""Time the mozlog formatter against python-dockerflow's, per record, in one run.

Run it with the project's interpreter::

    .venv/bin/python benchmarks/formatter_bench.py

The reference formatter comes from ``dockerflow==2026.3.4`` (python-dockerflow) in a
throwaway virtualenv at ``/tmp/dfref-venv``, made on first use with this interpreter's
``venv`` so both sides run the same Python. Both sides run the same timing script, each in a
fresh subprocess, alternating for a few rounds; each figure is the best seen, which is the
least disturbed by other work on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REFERENCE_VENV = Path("/tmp/dfref-venv")
REFERENCE_REQUIREMENT = "dockerflow==2026.3.4"
ROUNDS = 4
TARGET_RATIO = 0.5

# Written to a file (not run with -c) so that tracebacks have source lines to look up, as a
# real service's do.
TIMING_SCRIPT = r"""
import json
import logging
import sys
import timeit

import dockerflow.logging
from dockerflow.logging import MozlogFormatter

formatter = MozlogFormatter(logger_name="bench")
logger = logging.getLogger("request.summary")


def load_user(user_id):
    return query_database(user_id)


def query_database(user_id):
    return run_query("SELECT * FROM users WHERE id = %s", user_id)


def run_query(sql, *params):
    raise ValueError(f"no row for {params!r}")


try:
    load_user(42)
except ValueError:
    exc_info = sys.exc_info()

summary = {
    "agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "lang": "en-US,en;q=0.5",
    "method": "GET",
    "path": "/api/v1/users/42",
    "code": 200,
    "t": 17,
}
shapes = {
    "plain message": logger.makeRecord(
        "request.summary", logging.INFO, __file__, 10, "GET %s took %d ms", ("/", 17), None
    ),
    "6 request.summary extras": logger.makeRecord(
        "request.summary", logging.INFO, __file__, 10, "", (), None, extra=summary
    ),
    "with exception": logger.makeRecord(
        "request.summary", logging.ERROR, __file__, 10, "Unhandled error", (), exc_info
    ),
}
result = {"__file__": dockerflow.logging.__file__}
for name, record in shapes.items():
    formatter.format(record)  # fill linecache and any other first-use cache
    timer = timeit.Timer(lambda: formatter.format(record))
    number, _ = timer.autorange()
    number = max(number, 200)
    result[name] = min(timer.repeat(repeat=7, number=number)) / number * 1e6
print(json.dumps(result))
"""


def reference_python() -> Path:
    """Return the reference virtualenv's interpreter, creating the virtualenv if needed."""
    python = REFERENCE_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {REFERENCE_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True)
    installed = subprocess.run(
        [str(python), "-c", "import dockerflow.logging"], cwd="/", capture_output=True
    )
    if installed.returncode != 0:
        print(f"installing {REFERENCE_REQUIREMENT} into it ...", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", REFERENCE_REQUIREMENT], check=True
        )
    return python


def time_formatter(python: Path | str, script: Path, env: dict[str, str]) -> dict[str, float]:
    """Run the timing script under ``python`` and return µs per record by shape."""
    output = subprocess.run(
        [str(python), str(script)],
        check=True,
        capture_output=True,
        text=True,
        cwd=script.parent,  # keep the work tree off sys.path for the reference
        env=env,
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def main() -> int:
    """Time both formatters, print the table, and return 1 if a shape misses the target."""
    reference = reference_python()
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "format_timing.py"
        script.write_text(TIMING_SCRIPT)
        best: dict[str, dict[str, float]] = {"ours": {}, "reference": {}}
        files = {}
        for _ in range(ROUNDS):
            for side, python in (("ours", sys.executable), ("reference", reference)):
                result = time_formatter(python, script, base_env)
                files[side] = result.pop("__file__")
                for shape, micros in result.items():
                    best[side][shape] = min(micros, best[side].get(shape, float("inf")))
    print(f"ours:      {files['ours']}")
    print(f"reference: {files['reference']} ({REFERENCE_REQUIREMENT})")
    print(f"python:    {sys.version.split()[0]}, best of {ROUNDS} rounds x 7 repeats\n")
    print(f"| {'record shape':<26} | {'ours µs/rec':>11} | {'ref µs/rec':>10} | {'ratio':>5} |")
    print(f"|{'-' * 28}|{'-' * 13}|{'-' * 12}|{'-' * 7}|")
    missed = []
    for shape, ours in best["ours"].items():
        ref = best["reference"][shape]
        ratio = ours / ref
        if ratio > TARGET_RATIO:
            missed.append(shape)
        print(f"| {shape:<26} | {ours:>11.2f} | {ref:>10.2f} | {ratio:>5.2f} |")
    print(f"\nload: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"{'MISSED' if missed else 'MET'}: every shape <= {TARGET_RATIO} x python-dockerflow's")
    if missed:
        print(f"\nabove the {TARGET_RATIO} target: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
