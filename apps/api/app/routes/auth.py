"""Authentication: log in for a bearer token, and say who a token belongs to."""

from __future__ import annotations

from ..auth import authenticate_credentials, current_user, issue_token, require_staff
from ..models import users
from ..openapi import BEARER, api_blueprint
from ..ratelimit import login_attempt
from ..schemas import ErrorOut, LoginBody, LoginOut, UserOut
from .common import not_found

bp = api_blueprint("auth", __name__, "/api/auth", secured=False)


@bp.post("/login", responses={200: LoginOut, 401: ErrorOut, 403: ErrorOut, 429: ErrorOut})
def login(body: LoginBody):
    """Trade an email and password for a bearer token; 401 when either is wrong, 429 after too many failures."""
    with login_attempt(body.email):
        user = authenticate_credentials(body.email, body.password)
    token, expires_at = issue_token(user["id"], user["role"])
    return {"token": token, "token_type": "Bearer", "expires_at": expires_at, "user": user}


@bp.get("/me", responses={200: UserOut}, security=BEARER)
@require_staff
def me():
    """Return the user the bearer token belongs to."""
    user_id = current_user().id
    return users.get_user(user_id) or not_found("user", user_id)
