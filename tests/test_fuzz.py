"""Fuzz every operation of /api/openapi.json with schemathesis: no 5xx, every reply as documented.

schemathesis reads the document the app serves and, per operation, sends its explicit
examples, boundary and "coverage" cases (each parameter at its limits, wrong types,
missing fields, unsupported methods, no auth) and FUZZ_EXAMPLES generated cases, valid
and invalid, with an admin token, through the app's WSGI callable on a real database
holding a few rows. Each reply must pass schemathesis's checks: not a server error,
status code, content type, headers and body as documented, invalid data refused, auth
enforced. Hypothesis is derandomized, so a run is repeatable.

A second test runs FUZZ_STATEFUL_RUNS sequences of up to 8 calls linked by the ids they
return (create a customer, then read, change or delete it...), from the links schemathesis
infers from the document. `make fuzz` runs both at length and writes the figures to
FUZZ_REPORT.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from apps.api.app import create_app
from tests.helpers import app_config, bearer, insert_row

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ_STATEFUL_RUNS = int(os.environ.get("FUZZ_STATEFUL_RUNS", "20"))
FUZZ_REPORT = os.environ.get("FUZZ_REPORT")
# make test's 30 examples per operation take up to ~4 s and its 20 sequences ~4 s; make fuzz
# runs up to 500 and 300. Half a second per example and a second per sequence, at least
# pyproject's 60 s, leave room for a busy machine without letting a hang run on.
GENERATED_TIMEOUT = max(60, FUZZ_EXAMPLES // 2)
STATEFUL_TIMEOUT = max(60, FUZZ_STATEFUL_RUNS)
HYPOTHESIS_SETTINGS = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
}
# A schema-valid request may still be refused with 400, by rules JSON Schema cannot state:
# end_date after start_date, available_to after available_from, a cursor that this API
# issued, text that is blank once trimmed, a phone or SKU alphabet checked after trimming.
EXCLUDED_CHECKS = [positive_data_acceptance]


class CurrentApp:
    """A WSGI callable that forwards to the running test's app (each test has its own database)."""

    def __init__(self) -> None:
        self.app = None

    def __call__(self, environ, start_response):
        """Serve the request with the current test's app."""
        return self.app(environ, start_response)


TARGET = CurrentApp()
# Per test ("generated", "stateful") and operation: cases run and the status codes they got.
FIGURES: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
    lambda: collections.defaultdict(collections.Counter)
)


def _document() -> dict:
    # Building the app opens no connection, and the document needs no database.
    app = create_app(app_config("postgresql://fuzz@127.0.0.1:9/never-connected"))
    return app.test_client().get("/api/openapi.json").json


schema = schemathesis.openapi.from_dict(_document())
schema.app = TARGET
# Every case carries the admin token, rather than a made-up Authorization header; the
# "ignored_auth" check still sends each operation once without it and expects 401.
schema.config.generation.update(with_security_parameters=False)


@schema.hook("filter_query")
def _fits_a_query_string(context, query) -> bool:
    """Skip generated query strings with an object for a value: one is sent as nothing at all,
    so "invalid data accepted" would blame the API for a request it never saw."""

    def nested(value) -> bool:
        return isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict | list) for v in value))

    return not any(nested(value) for value in (query or {}).values())


def _seeded_id(value):
    # A valid id (1 to 2**63 - 1) becomes one of the seeded rows or the next, missing one;
    # anything else is left as generated.
    return value % 4 + 1 if type(value) is int and 1 <= value < 2**63 else value


def _date(value) -> datetime.date | None:
    if isinstance(value, str) and len(value) == 10:
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            return None
    return None


@schema.hook("map_body")
def _bookable(context, body):
    """Make generated bookings able to succeed: ids among the seeded rows, end_date 1 to 30 days
    after start_date. JSON Schema cannot state these rules, so random bookings would all be 400
    or 422 and the booking statement would never run; invalid values stay invalid."""
    if context.operation is None or context.operation.path != "/api/rentals" or not isinstance(body, dict):
        return body
    body = {name: _seeded_id(value) if name in ("customer_id", "product_id") else value for name, value in body.items()}
    start, end = _date(body.get("start_date")), _date(body.get("end_date"))
    if start and end and not 0 < (end - start).days <= 366 and start.year < 9999:
        body["end_date"] = (start + datetime.timedelta(days=end.toordinal() % 30 + 1)).isoformat()
    return body


def reset_rows(conn) -> None:
    """Empty the domain tables and the login counters, then insert the same few rows with ids 1 to 3."""
    today = datetime.date.today()
    with conn.cursor() as cur:
        # What references rentals goes with them: the outbox and the overdue reminders.
        cur.execute("TRUNCATE outbox, overdue_reminders, rentals, customers, products, rate_limits RESTART IDENTITY")
        for n in (1, 2, 3):
            insert_row(conn, "customers", full_name=f"Customer {n}", email=f"customer{n}@example.com")
            insert_row(conn, "products", sku=f"SKU-{n}", name=f"Product {n}", category="tools", daily_rate_cents=1500)
        for n, status in ((1, "reserved"), (2, "active"), (3, "returned")):
            start = today + datetime.timedelta(days=10 * n - 20)
            returned = datetime.datetime.now(datetime.UTC) if status == "returned" else None
            insert_row(
                conn,
                "rentals",
                customer_id=n,
                product_id=n,
                start_date=start,
                end_date=start + datetime.timedelta(days=3),
                status=status,
                daily_rate_cents=1500,
                total_cents=4500,
                returned_at=returned,
            )


@pytest.fixture
def fuzz_headers(app, admin_user, admin_conn):
    """Point the fuzzer at this test's app on a few known rows, and return an admin's headers."""
    reset_rows(admin_conn)
    TARGET.app = app
    yield bearer(app, admin_user)
    TARGET.app = None


def _record(kind: str, case, response) -> None:
    figures = FIGURES[kind][f"{case.operation.method.upper()} {case.operation.path}"]
    figures["cases"] += 1
    figures[str(response.status_code)] += 1


def _validate(case, headers: dict[str, str]) -> None:
    response = case.call(headers=headers)
    _record("generated", case, response)
    case.validate_response(
        response, headers=headers, excluded_checks=EXCLUDED_CHECKS, transport_kwargs={"headers": headers}
    )


@pytest.mark.timeout(GENERATED_TIMEOUT)
@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, **HYPOTHESIS_SETTINGS)
def test_every_operation_answers_as_documented_and_never_5xx(case, fuzz_headers):
    _validate(case, fuzz_headers)


@pytest.mark.timeout(STATEFUL_TIMEOUT)
def test_sequences_of_linked_calls_answer_as_documented(fuzz_headers, admin_conn):
    class APIWorkflow(schema.as_state_machine()):
        def setup(self):
            # Each sequence starts from the same rows: Hypothesis replays sequences and
            # expects the same replies (a 201 that became a 409 would confuse it).
            reset_rows(admin_conn)

        def get_call_kwargs(self, case):
            return {"headers": fuzz_headers}

        def validate_response(self, response, case, additional_checks=(), **kwargs):
            _record("stateful", case, response)
            case.validate_response(
                response,
                headers=fuzz_headers,
                excluded_checks=EXCLUDED_CHECKS,
                transport_kwargs={"headers": fuzz_headers},
            )

    APIWorkflow.run(settings=settings(max_examples=FUZZ_STATEFUL_RUNS, stateful_step_count=8, **HYPOTHESIS_SETTINGS))


def _summary(figures: dict[str, collections.Counter]) -> dict:
    total = collections.Counter()
    for counts in figures.values():
        total.update(counts)
    return {
        "operations": len(figures),
        "cases": total["cases"],
        "server_errors": sum(n for status, n in total.items() if status.startswith("5")),
        "status_codes": {status: n for status, n in sorted(total.items()) if status != "cases"},
        "per_operation": {op: dict(sorted(counts.items())) for op, counts in sorted(figures.items())},
    }


@pytest.fixture(scope="module", autouse=True)
def _report():
    """After the module, write the figures to FUZZ_REPORT when it is set."""
    started = time.monotonic()
    yield
    if FUZZ_REPORT and FIGURES:
        report = {
            "examples_per_operation": FUZZ_EXAMPLES,
            "stateful_runs": FUZZ_STATEFUL_RUNS,
            "seconds": round(time.monotonic() - started, 1),
            **{kind: _summary(figures) for kind, figures in sorted(FIGURES.items())},
        }
        with open(FUZZ_REPORT, "w") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
