"""Products: list (search, category, active, availability; keyset pages), create, read, change, delete."""

from __future__ import annotations

from ..auth import authenticate_request, require_admin
from ..idempotency import idempotent
from ..models import products as model
from ..openapi import api_blueprint
from ..schemas import ErrorOut, ProductCreate, ProductOut, ProductPage, ProductPath, ProductQuery, ProductUpdate
from .common import created, not_found

bp = api_blueprint("products", __name__, "/api/products")
bp.before_request(authenticate_request)


@bp.get("", responses={200: ProductPage})
def list_products(query: ProductQuery):
    """List products in id order; with available_from and available_to, only active ones free then."""
    return model.list_products(**query.model_dump())


@bp.post("", responses={201: ProductOut, 409: ErrorOut})
@idempotent
def create_product(body: ProductCreate):
    """Create a product; 409 when the SKU is taken."""
    row = model.create_product(body.model_dump())
    return created(row, f"/api/products/{row['id']}")


@bp.get("/<int:product_id>", responses={200: ProductOut, 404: ErrorOut})
def get_product(path: ProductPath):
    """Return one product."""
    return model.get_product(path.product_id) or not_found("product", path.product_id)


@bp.patch("/<int:product_id>", responses={200: ProductOut, 404: ErrorOut, 409: ErrorOut})
def update_product(path: ProductPath, body: ProductUpdate):
    """Change the fields sent; a new rate applies to bookings made from now on."""
    row = model.update_product(path.product_id, body.model_dump(exclude_unset=True))
    return row or not_found("product", path.product_id)


@bp.delete("/<int:product_id>", responses={204: None, 404: ErrorOut, 409: ErrorOut})
@require_admin
def delete_product(path: ProductPath):
    """Delete a product (admins only); 409 when it has rentals (deactivate it instead)."""
    if not model.delete_product(path.product_id):
        not_found("product", path.product_id)
    return "", 204
