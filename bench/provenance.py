"""Where a benchmark's numbers came from: the header every benchmark prints first, and the one
machine-readable line it prints last.

    header = print_header("robustness", args)      # commit, dirty tree, machine, model, arguments
    ...
    print_result("robustness", {"recall@1": ...})  # `RESULT {"bench": "robustness", ...}`

The commit comes from git when the benchmark runs inside a checkout, else from LOUPE_COMMIT
(a copy of the tree without .git, e.g. on a lent GPU machine), else "unknown".
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*argv: str) -> str | None:
    try:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit_identity() -> str:
    """LOUPE_COMMIT when set (a copied tree whose .git is not the source's, e.g. on a lent GPU
    machine), else `<short sha>`, or `<short sha>+dirty` when tracked files differ from it."""
    if os.environ.get("LOUPE_COMMIT"):
        return os.environ["LOUPE_COMMIT"]
    sha = _git("rev-parse", "--short=10", "HEAD")
    if sha is None:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}+dirty" if dirty else sha


def machine_description() -> str:
    """Cores, memory, CPU model and GPU, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory = f"{mem_gib:.0f} GiB"
    except (ValueError, OSError):
        memory = "? GiB"
    gpu = "none"
    if "torch" in sys.modules or _torch_importable():
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()} cores ({cpu}), {memory}, GPU: {gpu}, {platform.system()} {platform.machine()}"


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _arguments(args: Namespace | dict | None) -> str:
    if args is None:
        return ""
    items = vars(args) if isinstance(args, Namespace) else args
    return " ".join(f"{k}={v}" for k, v in sorted(items.items()))


def print_header(bench: str, args: Namespace | dict | None = None, model: str | None = None) -> dict:
    """Print the provenance header; return it as a dict (also written into RESULT lines)."""
    header = {
        "bench": bench,
        "commit": commit_identity(),
        "machine": machine_description(),
        "python": platform.python_version(),
        "argv": " ".join(sys.argv[1:]),
    }
    if model:
        header["model"] = model
    print(f"# bench/{bench}.py  commit {header['commit']}", flush=True)
    print(f"# machine: {header['machine']}; Python {header['python']}", flush=True)
    if model:
        print(f"# model: {model}", flush=True)
    print(f"# arguments: {_arguments(args)}", flush=True)
    return header


def print_result(bench: str, figures: dict, header: dict | None = None) -> None:
    """The last line: `RESULT {json}` with the commit and every figure, for scripts to read."""
    record = {"bench": bench, "commit": (header or {}).get("commit") or commit_identity(), **figures}
    print("RESULT " + json.dumps(_plain(record), sort_keys=True, allow_nan=False), flush=True)


def _plain(value):
    """JSON-ready: numpy numbers as Python ones, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(value) if isinstance(value, int) else number
