"""Run the fuzz harnesses for a while each and report executions and coverage.

``python fuzz/run.py [--seconds S] [NAME ...]`` runs each ``fuzz_NAME.py`` (all by default)
for ``S`` seconds from a copy of its seed corpus (``fuzz/corpus/NAME``); a crash prints the
traceback and the input, and the exit status is 1.  Extra libFuzzer options can follow
``--``.
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

import attrs

HERE = Path(__file__).resolve().parent

__all__ = ["HarnessResult", "harnesses", "run_harness"]


@attrs.frozen
class HarnessResult:
    """What one run of a harness did."""

    name: str
    returncode: int
    executions: int
    coverage: int
    features: int
    seconds: float
    output: str

    @property
    def crashed(self) -> bool:
        """Whether the harness found an input it failed on."""
        return self.returncode != 0


def harnesses() -> list[str]:
    """Names of the harnesses (``fuzz_<name>.py``)."""
    return sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def run_harness(
    name: str, seconds: float, *, python: str = sys.executable, extra: list[str] | None = None
) -> HarnessResult:
    """Run ``fuzz_<name>.py`` for ``seconds`` (plus its start-up) and parse its statistics."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        work = Path(tmp) / "corpus"
        work.mkdir()
        seeds = HERE / "corpus" / name
        args = [
            python,
            str(HERE / f"fuzz_{name}.py"),
            f"-max_total_time={max(1, round(seconds))}",
            f"-artifact_prefix={tmp}/",
            "-print_final_stats=1",
            "-max_len=4096",
            "-timeout=10",
            "-rss_limit_mb=1024",
            *(extra or []),
            str(work),
        ]
        if seeds.is_dir():
            args.append(str(seeds))
        import time

        start = time.monotonic()
        proc = subprocess.run(
            args, cwd=HERE, capture_output=True, text=True, timeout=seconds + 120, check=False
        )
        took = time.monotonic() - start
        out = proc.stdout + proc.stderr
        for crash in Path(tmp).glob("crash-*"):
            out += f"\ncrashing input ({crash.name}): {crash.read_bytes()!r}\n"
            shutil.copy(crash, HERE / f"{name}-{crash.name}")
        lines = "\n".join(line for line in out.splitlines() if not line.startswith("INFO: Instr"))
        return HarnessResult(
            name,
            proc.returncode,
            _last_int(r"stat::number_of_executed_units:\s*(\d+)", out),
            _last_int(r"cov: (\d+)", out),
            _last_int(r"ft: (\d+)", out),
            round(took, 1),
            lines,
        )


def main() -> int:
    """Command line: run the named harnesses (or all), print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("names", nargs="*")
    args, extra = parser.parse_known_args()
    failed = False
    for name in args.names or harnesses():
        result = run_harness(name, args.seconds, extra=[e for e in extra if e != "--"])
        summary = attrs.asdict(result)
        del summary["output"]
        print(json.dumps(summary), flush=True)
        if result.crashed:
            failed = True
            print(result.output[-6000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
