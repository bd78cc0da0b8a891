"""Customers: list (search, keyset pages), create, read, change, delete."""

from __future__ import annotations

from ..auth import authenticate_request, require_admin
from ..idempotency import idempotent
from ..models import customers as model
from ..openapi import api_blueprint
from ..schemas import CustomerCreate, CustomerOut, CustomerPage, CustomerPath, CustomerQuery, CustomerUpdate, ErrorOut
from .common import created, not_found

bp = api_blueprint("customers", __name__, "/api/customers")
bp.before_request(authenticate_request)


@bp.get("", responses={200: CustomerPage})
def list_customers(query: CustomerQuery):
    """List customers in id order; `q` matches part of the name, email or phone."""
    return model.list_customers(query.q, query.limit, query.cursor)


@bp.post("", responses={201: CustomerOut, 409: ErrorOut})
@idempotent
def create_customer(body: CustomerCreate):
    """Create a customer; 409 when the email is taken."""
    row = model.create_customer(body.model_dump())
    return created(row, f"/api/customers/{row['id']}")


@bp.get("/<int:customer_id>", responses={200: CustomerOut, 404: ErrorOut})
def get_customer(path: CustomerPath):
    """Return one customer."""
    return model.get_customer(path.customer_id) or not_found("customer", path.customer_id)


@bp.patch("/<int:customer_id>", responses={200: CustomerOut, 404: ErrorOut, 409: ErrorOut})
def update_customer(path: CustomerPath, body: CustomerUpdate):
    """Change the fields sent; email, phone and notes may be set to null."""
    row = model.update_customer(path.customer_id, body.model_dump(exclude_unset=True))
    return row or not_found("customer", path.customer_id)


@bp.delete("/<int:customer_id>", responses={204: None, 404: ErrorOut, 409: ErrorOut})
@require_admin
def delete_customer(path: CustomerPath):
    """Delete a customer (admins only); 409 when it has rentals."""
    if not model.delete_customer(path.customer_id):
        not_found("customer", path.customer_id)
    return "", 204
