"""GET /metrics: Prometheus text format for every worker of this host.

Served on the API's own bind behind HEALTH_API_TOKEN (Prometheus sends it with
`authorization: {credentials: ...}`): one port to open and secure, and the figures
(paths, pool sizes) are not for the public.
"""

from __future__ import annotations

import logging

import psycopg2
from flask import Blueprint, Response, current_app

from .. import metrics, notifications
from ..auth import require_health_token
from ..jobs import status as job_status
from ..models.database import DatabaseUnavailable, monitoring_wait, pool_stats

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@require_health_token
def prometheus_metrics():
    """Return all workers' metrics, after publishing this worker's latest pool figures and the outbox's backlog,
    and the jobs' figures read from the database (left out when it cannot answer)."""
    settings = current_app.config["SETTINGS"]
    wait = monitoring_wait(settings)
    pool_stats()
    notifications.backlog(timeout=wait)
    extra = []
    try:
        extra.append(metrics.JobFigures(job_status.figures(settings, timeout=wait)))
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        logger.warning("cannot read the jobs' figures for the metrics: %s", str(exc).strip())
    body, content_type = metrics.exposition(*extra)
    return Response(body, content_type=content_type)
