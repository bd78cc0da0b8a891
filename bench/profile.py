"""make bench-profile: py-spy profile of the API's hot path under load, into bench/PROFILE.md.

    .venv/bin/python -m bench.profile   # small data set; the API, the fixed psycopg2 pool and hello
    (make bench also profiles, after its measurements, when BENCH_PROFILE_SECONDS > 0)

How the samples are taken and charged to layers: bench/pyspy.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from . import procs
from .harness import Bench
from .settings import ROOT, load_bench_settings

logger = logging.getLogger("bench")


def main() -> int:
    """Set up a small data set, start the API and hello, profile them; write PROFILE.md."""
    logging.basicConfig(level=logging.INFO, format="bench %(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("BENCH_QUICK", "1")
    os.environ.setdefault("BENCH_PROFILE_SECONDS", "15")
    os.environ.setdefault("BENCH_OUT", str(ROOT / "bench"))
    settings = load_bench_settings()
    with procs.terminate_on_signals(), contextlib.ExitStack() as stack:
        bench = Bench(settings, stack)
        bench.start_database()
        bench.start_apps(["api", "psycopg2-fixed", "hello"])
        bench.authenticate()
        bench.decide_scenarios()
        bench.write_params()
        bench.run_profiles()
    logger.info("profile summary: %s", Path(settings.out_dir) / "PROFILE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
