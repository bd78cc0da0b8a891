"""JSON for the API: ISO 8601 dates, compact output."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from flask.json.provider import DefaultJSONProvider


class APIJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with ISO 8601 dates (Flask's default is RFC 822) and no key sorting."""

    sort_keys = False
    compact = True

    @staticmethod
    def default(o: Any) -> Any:
        """Return a JSON-ready value for types the json module does not know."""
        if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
            return o.isoformat()
        if isinstance(o, decimal.Decimal):
            return int(o) if o == o.to_integral_value() else str(o)
        if isinstance(o, uuid.UUID):
            return str(o)
        return DefaultJSONProvider.default(o)
