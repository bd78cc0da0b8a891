"""The dashboard: the business at a glance, in one database round trip."""

from __future__ import annotations

from ..auth import authenticate_request
from ..models import dashboard as model
from ..openapi import api_blueprint
from ..schemas import DashboardOut

bp = api_blueprint("dashboard", __name__, "/api/dashboard")
bp.before_request(authenticate_request)


@bp.get("", responses={200: DashboardOut})
def get_dashboard():
    """Return rentals by status, active and overdue counts, revenue, utilisation, top products, new customers."""
    return model.get_dashboard()
