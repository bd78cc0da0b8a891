"""Rentals: list (filters, keyset pages, names embedded), book, read, and status changes."""

from __future__ import annotations

from ..auth import authenticate_request, current_user
from ..idempotency import idempotent
from ..models import rentals as model
from ..openapi import api_blueprint
from ..schemas import ErrorOut, RentalCreate, RentalOut, RentalPage, RentalPath, RentalQuery
from .common import created, not_found

bp = api_blueprint("rentals", __name__, "/api/rentals")
bp.before_request(authenticate_request)
TRANSITION_RESPONSES = {200: RentalOut, 404: ErrorOut, 409: ErrorOut}


@bp.get("", responses={200: RentalPage})
def list_rentals(query: RentalQuery):
    """List rentals, latest start first; filter by status, customer, product, overlap with [from, to)."""
    return model.list_rentals(
        status=query.status,
        customer_id=query.customer_id,
        product_id=query.product_id,
        overlap_from=query.from_,
        overlap_to=query.to,
        limit=query.limit,
        cursor=query.cursor,
    )


@bp.post("", responses={201: RentalOut, 409: ErrorOut, 422: ErrorOut})
@idempotent
def create_rental(body: RentalCreate):
    """Book a product; 409 product_unavailable when the dates overlap a booking, 422 if inactive."""
    row = model.create_rental(body.customer_id, body.product_id, body.start_date, body.end_date, current_user().id)
    return created(row, f"/api/rentals/{row['id']}")


@bp.get("/<int:rental_id>", responses={200: RentalOut, 404: ErrorOut})
def get_rental(path: RentalPath):
    """Return one rental with its customer's and product's names."""
    return model.get_rental(path.rental_id) or not_found("rental", path.rental_id)


@bp.post("/<int:rental_id>/activate", responses=TRANSITION_RESPONSES)
@idempotent
def activate_rental(path: RentalPath):
    """Hand the product over: reserved -> active; 409 from any other status."""
    return model.transition_rental(path.rental_id, "activate")


@bp.post("/<int:rental_id>/return", responses=TRANSITION_RESPONSES)
@idempotent
def return_rental(path: RentalPath):
    """Take the product back: active -> returned, stamping returned_at; 409 otherwise."""
    return model.transition_rental(path.rental_id, "return")


@bp.post("/<int:rental_id>/cancel", responses=TRANSITION_RESPONSES)
@idempotent
def cancel_rental(path: RentalPath):
    """Cancel a reservation: reserved -> cancelled, freeing the dates; 409 otherwise."""
    return model.transition_rental(path.rental_id, "cancel")
