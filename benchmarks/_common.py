"""Shared helpers for benchmark scripts: peak memory and the final JSON line."""

import json
import resource
import sys


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)


def emit(result: dict) -> None:
    """The last printed line of every benchmark is one JSON object."""
    print(json.dumps(result, ensure_ascii=False), flush=True)
