"""Turn a run's results.json into REPORT.md and the PNG plots; every figure comes from the points.

    .venv/bin/python -m bench.report [bench/results.json]   # re-render without re-running

The figures: bench/analysis.py; the Markdown: bench/report_md.py; the plots: bench/plots.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import plots, report_md
from .analysis import Results
from .settings import ROOT


def write(data: dict[str, Any], out_dir: Path) -> Path:
    """Write the plots and REPORT.md into out_dir; return the report's path."""
    res = Results(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plots.write_plots(res, out_dir)
    report = out_dir / "REPORT.md"
    report.write_text(report_md.render(res, images))
    return report


def main() -> int:
    """Re-render the report of a results.json (default bench/results.json) next to it."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results.json"
    data = json.loads(path.read_text())
    print(write(data, path.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
