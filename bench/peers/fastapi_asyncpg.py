"""FastAPI + asyncpg, served by gunicorn's uvicorn worker (uvloop, httptools): the stack that the
documents this project answers recommend "for performance".

One asyncpg pool per worker process, min = max = BENCH_POOL_SIZE (10), opened by the app's
lifespan in the worker (after the fork) and closed when the worker stops; the route reads one
customer with `pool.fetchrow` and returns it as FastAPI returns a dict.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException

from .common import customer_sql, database_url

SQL = customer_sql("$1")
SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open this worker's pool for the app's life."""
    app.state.pool = await asyncpg.create_pool(database_url(), min_size=SIZE, max_size=SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/api/customers/{customer_id}")
async def get_customer(customer_id: int) -> dict:
    """Return one customer, or 404."""
    row = await app.state.pool.fetchrow(SQL, customer_id)
    if row is None:
        raise HTTPException(status_code=404)
    return dict(row)
