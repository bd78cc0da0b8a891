"""GET /api/openapi.json: an OpenAPI 3 document of every route, from the models that validate requests."""

from __future__ import annotations

import re

import pytest

from apps.api.app import schemas


@pytest.fixture
def doc(client) -> dict:
    r = client.get("/api/openapi.json")
    assert r.status_code == 200
    return r.json


def test_document_is_openapi_3_and_public(doc):
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "Rentals API"
    assert doc["components"]["securitySchemes"]["bearer"] == doc["components"]["securitySchemes"]["bearer"] | {
        "type": "http",
        "scheme": "bearer",
    }


def test_every_route_of_the_app_is_documented(app, doc):
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (method, path)


def test_request_bodies_and_parameters_come_from_the_validating_models(doc):
    post = doc["paths"]["/api/rentals"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/RentalCreate")
    schema = doc["components"]["schemas"]["RentalCreate"]
    assert set(schema["required"]) == {"customer_id", "product_id", "start_date", "end_date"}
    assert schema["additionalProperties"] is False
    params = {p["name"]: p for p in doc["paths"]["/api/rentals"]["get"]["parameters"] if p["in"] == "query"}
    assert set(params) == {"status", "customer_id", "product_id", "from", "to", "limit", "cursor"}
    assert params["limit"]["schema"]["maximum"] == 100
    product_params = {p["name"] for p in doc["paths"]["/api/products"]["get"]["parameters"]}
    assert {"available_from", "available_to", "category", "active", "q"} <= product_params
    path_params = doc["paths"]["/api/customers/{customer_id}"]["get"]["parameters"]
    assert [(p["name"], p["in"]) for p in path_params if p["in"] != "header"] == [("customer_id", "path")]
    assert set(doc["components"]["schemas"]) >= {
        name for name, part in schemas.REQUEST_PARTS.items() if part == "body" and name != "BodyModel"
    }


def test_responses_and_security_are_declared(doc):
    create = doc["paths"]["/api/rentals"]["post"]
    assert {"201", "400", "401", "409", "422"} <= set(create["responses"])
    assert create["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert create["security"] == [{"bearer": []}]
    assert (
        "security" not in doc["paths"]["/api/auth/login"]["post"]
        or not doc["paths"]["/api/auth/login"]["post"]["security"]
    )
    assert doc["paths"]["/api/health/db"]["get"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/api/dashboard"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/DashboardOut")


def test_operation_ids_are_unique(doc):
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
