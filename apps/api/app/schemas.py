"""Request and reply declarations: the pydantic models that validate requests and document the API.

flask-openapi3 reads a view's `path`, `query` and `body` annotations, validates the
request against them before the view runs, and writes the same models into
/api/openapi.json. Bodies are strict (no "12" for 12, no unknown fields); query strings
are text by nature, so their numbers and booleans are parsed.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from flask import has_request_context, request
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .compat.flask_openapi3 import cached_json_schema

MAX_ID = 2**63 - 1
MAX_RENTAL_DAYS = 366
RENTAL_STATUSES = ("reserved", "active", "returned", "cancelled")
# [0-9], not \d: \d also takes every other script's digits (Arabic-Indic, fullwidth, ...).
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_ASCII_DIGITS = re.compile(r"^[0-9]+$")


def _iso_date(value: Any) -> Any:
    """Accept only YYYY-MM-DD text for a date (pydantic alone would also take numbers)."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("use an ISO date, YYYY-MM-DD")
    if not isinstance(value, str | datetime.date):
        raise ValueError("use an ISO date, YYYY-MM-DD")
    return value


def _ascii_digits(value: Any) -> Any:
    """Accept a number in a URL or query only as ASCII digits (pydantic would also read " 1", "+1", "1_0", "1.0")."""
    if isinstance(value, str) and not _ASCII_DIGITS.match(value):
        raise ValueError("use a whole number written with the digits 0-9")
    return value


def _matches(pattern: str, message: str) -> Callable[[str], str]:
    """Return a validator that accepts text matching `pattern` and refuses the rest with `message`."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(message)
        return value

    return check


def _no_nul(value: str) -> str:
    """Refuse text with a NUL character, which PostgreSQL cannot store in text."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


# Text that goes into a text column or a query parameter; the pattern documents the rule.
NoNul = (AfterValidator(_no_nul), Field(json_schema_extra={"pattern": "^[^\\x00]*$"}))

ISODate = Annotated[datetime.date, BeforeValidator(_iso_date)]
Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
# An id in a URL or a query string: text by nature, so parsed, from ASCII digits only (the
# path's int converter already takes only those: routes/common.py).
UrlId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_ascii_digits)]
FullName = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), *NoNul]
Email = Annotated[
    StrictStr,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=254),
    AfterValidator(_no_nul),
    AfterValidator(_matches(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "not an email address")),
    Field(json_schema_extra={"format": "email"}),
]
Phone = Annotated[
    StrictStr,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=40),
    AfterValidator(_matches(r"^[0-9+(). -]+$", "use digits, spaces and + ( ) . - only")),
]
Notes = Annotated[StrictStr, StringConstraints(max_length=2000), *NoNul]
Sku = Annotated[
    StrictStr,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_matches(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "use letters, digits and . _ - only")),
]
ProductName = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), *NoNul]
Category = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), *NoNul]
RateCents = Annotated[StrictInt, Field(gt=0, le=100_000_000, description="daily rate in cents")]
DepositCents = Annotated[StrictInt, Field(ge=0, le=1_000_000_000, description="deposit in cents")]
Status = Literal["reserved", "active", "returned", "cancelled"]
CancelReason = Literal["by_staff", "not_picked_up"]
Search = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), *NoNul]
Limit = Annotated[int, Field(ge=1, le=100, description="items per page, at most 100"), BeforeValidator(_ascii_digits)]
Cursor = Annotated[str, Field(max_length=500, description="next_cursor of the previous page")]


# Model name -> the part of the request it validates ("body", "query", "path"): names the
# errors that concern the whole part rather than one field.
REQUEST_PARTS: dict[str, str] = {}


class _RequestModel(BaseModel):
    part: ClassVar[str] = "body"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        REQUEST_PARTS[cls.__name__] = cls.part


class BodyModel(_RequestModel):
    """A JSON request body: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid")
    part: ClassVar[str] = "body"


class PathModel(_RequestModel):
    """The variables of a URL."""

    model_config = ConfigDict(extra="forbid")
    part: ClassVar[str] = "path"


class QueryModel(_RequestModel):
    """A query string: unknown parameters rejected."""

    model_config = ConfigDict(extra="forbid")
    part: ClassVar[str] = "query"

    @model_validator(mode="before")
    @classmethod
    def _each_parameter_once(cls, data: Any) -> Any:
        # flask-openapi3 keeps the first of repeated parameters; a second value is refused
        # rather than ignored, as an unknown parameter is.
        if has_request_context():
            repeated = [name for name, values in request.args.lists() if len(values) > 1]
            if repeated:
                raise ValueError(f"send each parameter once: {', '.join(repeated)}")
        return data

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Return the model's JSON schema, built once (flask-openapi3 asks for it on every request)."""
        return cached_json_schema(cls, args, tuple(sorted(kwargs.items())))


def _at_least_one_field(model: BaseModel) -> BaseModel:
    if not model.model_fields_set:
        raise ValueError("send at least one field to change")
    return model


# -- replies ------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """What went wrong: a stable code, a sentence, and details (per field for validation)."""

    code: str
    message: str
    details: dict[str, Any]


class ErrorOut(BaseModel):
    """Every error reply."""

    error: ErrorBody


class UserOut(BaseModel):
    """A staff account."""

    id: int
    email: str
    full_name: str
    role: Literal["admin", "staff"]
    active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class LoginOut(BaseModel):
    """A bearer token, when it expires, and whose it is."""

    token: str
    token_type: Literal["Bearer"]
    expires_at: datetime.datetime
    user: UserOut


class CustomerOut(BaseModel):
    """A customer."""

    id: int
    full_name: str
    email: str | None
    phone: str | None
    notes: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime


class CustomerPage(BaseModel):
    """A page of customers."""

    items: list[CustomerOut]
    next_cursor: str | None


class ProductOut(BaseModel):
    """A product: one physical rentable item."""

    id: int
    sku: str
    name: str
    category: str
    daily_rate_cents: int
    deposit_cents: int
    active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class ProductPage(BaseModel):
    """A page of products."""

    items: list[ProductOut]
    next_cursor: str | None


class RentalOut(BaseModel):
    """A rental, with its customer's and product's names."""

    id: int
    customer_id: int
    customer_name: str
    product_id: int
    product_name: str
    product_sku: str
    start_date: datetime.date = Field(description="first day, inclusive")
    end_date: datetime.date = Field(description="day the product is due back, exclusive")
    status: Status
    daily_rate_cents: int
    total_cents: int
    created_by: int | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    returned_at: datetime.datetime | None
    cancel_reason: CancelReason | None = Field(
        description="why a cancelled rental was cancelled: by_staff, or not_picked_up (expire_reservations)"
    )


class RentalPage(BaseModel):
    """A page of rentals, latest start first."""

    items: list[RentalOut]
    next_cursor: str | None


class TopProduct(BaseModel):
    """A product among the top ten by revenue."""

    product_id: int
    sku: str
    name: str
    revenue_cents: int
    rentals: int


class Utilisation(BaseModel):
    """Product-days rented out against product-days available."""

    booked_days: int
    available_days: int
    ratio: float


class Revenue(BaseModel):
    """Revenue in cents of rentals (active or returned) by start date."""

    current_month: int
    last_30_days: int


class DashboardOut(BaseModel):
    """The business at a glance, as of the database's current date."""

    as_of: datetime.date
    generated_at: datetime.datetime = Field(description="when the database computed these figures (the snapshot)")
    age_seconds: float = Field(description="how old the figures were when this reply was made, in seconds")
    rentals_by_status: dict[Status, int]
    active_rentals: int
    overdue_rentals: int
    revenue_cents: Revenue
    utilisation_last_30_days: Utilisation
    top_products_last_30_days: list[TopProduct]
    new_customers_last_30_days: int


# -- requests -----------------------------------------------------------------------


class LoginBody(BodyModel):
    """Credentials of a staff account."""

    email: Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=3, max_length=254), *NoNul]
    password: Annotated[StrictStr, StringConstraints(min_length=1, max_length=1024)]


class CustomerCreate(BodyModel):
    """A new customer."""

    full_name: FullName
    email: Email | None = None
    phone: Phone | None = None
    notes: Notes | None = None


class CustomerUpdate(BodyModel):
    """The fields to change; email, phone and notes may be set to null."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    full_name: FullName = None  # type: ignore[assignment]  # absent: unchanged; null: refused
    email: Email | None = None
    phone: Phone | None = None
    notes: Notes | None = None

    _check = model_validator(mode="after")(_at_least_one_field)


class CustomerPath(PathModel):
    """The customer named in the URL."""

    customer_id: UrlId


class CustomerQuery(QueryModel):
    """Filters of the customer list."""

    q: Search | None = Field(None, description="part of the name, email or phone")
    limit: Limit = 50
    cursor: Cursor | None = None


class ProductCreate(BodyModel):
    """A new product."""

    sku: Sku
    name: ProductName
    category: Category
    daily_rate_cents: RateCents
    deposit_cents: DepositCents = 0
    active: StrictBool = True


class ProductUpdate(BodyModel):
    """The fields to change."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    sku: Sku = None  # type: ignore[assignment]
    name: ProductName = None  # type: ignore[assignment]
    category: Category = None  # type: ignore[assignment]
    daily_rate_cents: RateCents = None  # type: ignore[assignment]
    deposit_cents: DepositCents = None  # type: ignore[assignment]
    active: StrictBool = None  # type: ignore[assignment]

    _check = model_validator(mode="after")(_at_least_one_field)


class ProductPath(PathModel):
    """The product named in the URL."""

    product_id: UrlId


class ProductQuery(QueryModel):
    """Filters of the product list."""

    q: Search | None = Field(None, description="part of the SKU or name")
    category: Category | None = None
    active: bool | None = None
    available_from: ISODate | None = Field(None, description="with available_to: only active products free then")
    available_to: ISODate | None = Field(None, description="exclusive end of the range")
    limit: Limit = 50
    cursor: Cursor | None = None

    @model_validator(mode="after")
    def _range(self) -> ProductQuery:
        if (self.available_from is None) != (self.available_to is None):
            raise ValueError("available_from and available_to go together")
        if self.available_from and self.available_to and self.available_to <= self.available_from:
            raise ValueError("available_to must be after available_from")
        return self


class RentalCreate(BodyModel):
    """A booking of a product by a customer over [start_date, end_date)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"customer_id": 1, "product_id": 1, "start_date": "2031-01-01", "end_date": "2031-01-04"}]
        },
    )

    customer_id: Id
    product_id: Id
    start_date: ISODate
    end_date: ISODate = Field(description="exclusive: the day the product is due back")

    @field_validator("end_date")
    @classmethod
    def _after_start(cls, end: datetime.date, info: ValidationInfo) -> datetime.date:
        start = info.data.get("start_date")
        if start is not None and end <= start:
            raise ValueError("end_date must be after start_date (the end is exclusive)")
        if start is not None and (end - start).days > MAX_RENTAL_DAYS:
            raise ValueError(f"a rental lasts at most {MAX_RENTAL_DAYS} days")
        return end


class RentalPath(PathModel):
    """The rental named in the URL."""

    rental_id: UrlId


class RentalQuery(QueryModel):
    """Filters of the rental list."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Status | None = None
    customer_id: UrlId | None = None
    product_id: UrlId | None = None
    from_: ISODate | None = Field(None, alias="from", description="rentals overlapping [from, to)")
    to: ISODate | None = Field(None, description="exclusive end of the range")
    limit: Limit = 50
    cursor: Cursor | None = None

    @model_validator(mode="after")
    def _range(self) -> RentalQuery:
        if self.from_ and self.to and self.to <= self.from_:
            raise ValueError("to must be after from")
        return self
