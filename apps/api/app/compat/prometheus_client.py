"""prometheus_client internals the metrics module relies on.

- The value class: in multiprocess mode every metric update asks `process_identifier()`
  (by default `os.getpid`, a system call) to notice a fork; we hand it a cached pid,
  refreshed by an after-fork hook, which is exactly when it changes.
- A Histogram series keeps its bucket bounds in `_upper_bounds`, one value per bucket in
  `_buckets` (a count per bucket, not cumulative) and the sum in `_sum`;
  `add_observations` writes counted observations there the way `observe` would.
- `MultiProcessCollector` keeps its folder in `_path` and merges files with `merge()`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Histogram, multiprocess, values

from . import require

DISTRIBUTION = "prometheus-client"
CHECKED = ">=0.26,<0.27"


def use_process_identifier(identify: Callable[[], int]) -> None:
    """Make every metric value created from now on ask `identify()` for the process id."""
    values.ValueClass = values.MultiProcessValue(process_identifier=identify)


def bucket_bounds(series: Histogram) -> Sequence[float]:
    """Return the upper bounds of a histogram series' buckets, +Inf last."""
    return series._upper_bounds


def add_observations(series: Histogram, counts: Sequence[int], total: float) -> None:
    """Add observations already counted per bucket (and their sum) to a histogram series."""
    for index, count in enumerate(counts):
        if count:
            series._buckets[index].inc(count)
    series._sum.inc(total)


class SizedFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector, skipping files a booting worker has created but not sized.

    A worker creates its file empty and sizes it a moment later; reading it in between
    raises struct.error (prometheus/client_python#1199), and a worker killed in between
    leaves it empty for good.
    """

    def collect(self):
        """Merge every non-empty .db file of the shared folder."""
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) > 0:
                    files.append(path)
            except OSError:  # removed meanwhile (a dead worker's live gauges)
                pass
        return self.merge(files, accumulate=True)


def verify() -> None:
    """Raise IncompatibleVersion unless the internals above are still there."""
    series = Histogram("compat_check_seconds", "A probe of Histogram's internals.", registry=None)
    require(
        all(hasattr(series, name) for name in ("_upper_bounds", "_buckets", "_sum")),
        DISTRIBUTION,
        "Histogram._upper_bounds, _buckets and _sum",
    )
    require(len(series._buckets) == len(series._upper_bounds), DISTRIBUTION, "one _buckets value per bound")
    add_observations(series, [1] + [0] * (len(series._upper_bounds) - 1), 0.25)
    sample = {s.name: s.value for s in series.collect()[0].samples if not s.labels or s.labels.get("le") == "+Inf"}
    require(
        sample.get("compat_check_seconds_count") == 1 and sample.get("compat_check_seconds_sum") == 0.25,
        DISTRIBUTION,
        "per-bucket counts in Histogram._buckets",
    )
    collector = SizedFilesCollector(CollectorRegistry(auto_describe=False), path=os.curdir)
    require(collector._path == os.curdir, DISTRIBUTION, "MultiProcessCollector._path")
    require(callable(getattr(values, "MultiProcessValue", None)), DISTRIBUTION, "values.MultiProcessValue")
