"""GET /metrics: Prometheus text format for every worker of this host.

Served on the API's own bind behind HEALTH_API_TOKEN (Prometheus sends it with
`authorization: {credentials: ...}`): one port to open and secure, and the figures
(paths, pool sizes) are not for the public.
"""

from __future__ import annotations

from flask import Blueprint, Response

from .. import metrics, notifications
from ..auth import require_health_token
from ..models.database import pool_stats

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@require_health_token
def prometheus_metrics():
    """Return all workers' metrics, after publishing this worker's latest pool figures and the outbox's backlog."""
    pool_stats()
    notifications.backlog()
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
