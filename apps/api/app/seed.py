"""Deterministic demo data: customers, products and rentals, loaded with COPY in one transaction.

The same seed and the same `today` always give the same rows. Rentals are laid out per
product one after another with gaps, so reserved and active ones never overlap (the
exclusion constraint holds); about nine in ten lie in the past (returned, some cancelled,
a few still out: overdue), the rest are current (active) or ahead (reserved). Rows go in
in start-date order, as a real history would: ids and the table's layout follow time.
"""

from __future__ import annotations

import datetime
import heapq
import io
import logging
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .auth import hash_password
from .models import users
from .models.database import execute_query_one, fetch_all, fetch_one, transaction

logger = logging.getLogger(__name__)

# COPY sends rentals in batches of this many rows, so memory stays flat at any size.
BATCH_ROWS = 200_000
# Any fixed number: two seeds at once queue instead of colliding.
LOCK_ID = 7_261_942_018
DEMO_ADMIN_EMAIL = "admin@example.com"
DEMO_COUNTS = {"customers": 200, "products": 60, "rentals": 3000}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Ada Alan Amara Ana Andre Anna Ben Bruno Carla Chen Chloe Daniel Diego Elena Emma Eva Farah Felix "
    "Grace Hana Hugo Ines Ivan Jamal James Jana Jonas Julia Kai Kenji Lara Leo Lina Lucas Maya Mei Mia "
    "Nadia Noah Nora Olga Omar Paula Priya Rafael Rosa Sam Sara Sofia Tariq Theo Uma Victor Wen Yara "
    "Yusuf Zoe"
)
LAST_NAMES = _words(
    "Adams Ahmed Almeida Andersen Bauer Becker Brown Castro Chen Costa Dubois Evans Fischer Garcia Gomez "
    "Hansen Ito Jansen Johnson Kim Kowalski Lee Lopez Martin Meyer Moreau Muller Nakamura Nguyen Novak "
    "Okafor Olsen Patel Perez Petrov Rossi Santos Schmidt Silva Singh Smith Suzuki Tanaka Taylor Thomas "
    "Wagner Walker Weber Wilson Wright Yilmaz Young Zhang"
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
NOTES = (
    "Prefers morning pickup.",
    "Regular customer; knows the equipment well.",
    "Ask for ID at pickup.",
    "Deposit returned late once.",
    "Corporate account; invoice monthly.",
)
# category: (sku prefix, lowest and highest daily rate in cents, deposit as days of rent, models)
CATALOGUE = {
    "cameras": (
        "CAM",
        2500,
        12000,
        10,
        ("Canon EOS R6", "Sony A7 IV", "Nikon Z6 II", "Fujifilm X-T5", "GoPro Hero 12"),
    ),
    "lenses": ("LNS", 1500, 8000, 10, ("24-70mm f/2.8", "70-200mm f/2.8", "50mm f/1.4", "16-35mm f/4", "85mm f/1.8")),
    "audio": ("AUD", 1000, 6000, 5, ("Shure SM7B", "Rode NTG5", "Zoom H6 Recorder", "JBL PA Speaker", "DJ Controller")),
    "lighting": ("LGT", 800, 5000, 5, ("Aputure 300d", "LED Panel Kit", "Softbox Pair", "Light Stand Set", "RGB Tube")),
    "bikes": ("BIK", 1500, 6000, 8, ("City Bike", "Mountain Bike", "E-Bike", "Road Bike", "Cargo Bike")),
    "camping": ("CMP", 500, 3500, 4, ("4-Person Tent", "Sleeping Bag", "Camping Stove", "Cool Box", "Trekking Poles")),
    "tools": ("TLS", 700, 4500, 6, ("Hammer Drill", "Circular Saw", "Tile Cutter", "Pressure Washer", "Ladder 6m")),
    "party": (
        "PTY",
        600,
        9000,
        3,
        ("Gazebo 3x6m", "Folding Tables x10", "Chairs x20", "Popcorn Machine", "Fog Machine"),
    ),
    "drones": ("DRN", 4000, 15000, 12, ("DJI Mini 4 Pro", "DJI Air 3", "DJI Mavic 3", "FPV Kit", "Inspire 2")),
}
# Rental lengths in days and the gaps between a product's rentals, weighted by repetition.
LENGTHS = (1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 7, 7, 7, 10, 14, 14, 21, 28)
GAPS = (0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 9, 12, 15, 20, 30)
# The share of each product's rentals that lie before today.
PAST_SHARE = 0.9
CUSTOMER_HISTORY_DAYS = 730
SEEDED_TABLES = ("customers", "products", "rentals")
CUSTOMER_COLUMNS = "id, full_name, email, phone, notes, created_at, updated_at"
PRODUCT_COLUMNS = "id, sku, name, category, daily_rate_cents, deposit_cents, active, created_at, updated_at"
RENTAL_COLUMNS = (
    "id, customer_id, product_id, start_date, end_date, status, daily_rate_cents, total_cents,"
    " created_by, created_at, updated_at, returned_at"
)


class SeedError(RuntimeError):
    """The database cannot be seeded as asked (it already holds data, or a count is wrong)."""


@dataclass(frozen=True)
class SeedResult:
    """What a seed inserted and how long it took."""

    customers: int
    products: int
    rentals: int
    seconds: float


class _DayTable:
    """ISO texts of days and times around `today`, built once: formatting dates per row is slow."""

    def __init__(self, today: datetime.date, days_back: int, days_ahead: int) -> None:
        self.first = today.toordinal() - days_back
        self.days = [datetime.date.fromordinal(self.first + i).isoformat() for i in range(days_back + days_ahead + 1)]
        self.times = [f"{h:02d}:{m:02d}:00+00" for h in range(8, 20) for m in range(0, 60, 5)]

    def day(self, ordinal: int) -> str:
        """Return the ISO text of the day with this ordinal."""
        return self.days[ordinal - self.first]


def _customer_rows(rng: random.Random, count: int, today: datetime.date) -> list[str]:
    table = _DayTable(today, CUSTOMER_HISTORY_DAYS, 0)
    today_ord = today.toordinal()
    rows = []
    for cid in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first.lower()}.{last.lower()}{cid}@{rng.choice(EMAIL_DOMAINS)}" if rng.random() < 0.85 else r"\N"
        phone = f"+1-555-{rng.randrange(100, 1000)}-{rng.randrange(10000):04d}" if rng.random() < 0.9 else r"\N"
        notes = rng.choice(NOTES) if rng.random() < 0.1 else r"\N"
        created = f"{table.day(today_ord - rng.randrange(CUSTOMER_HISTORY_DAYS))} {rng.choice(table.times)}"
        rows.append(f"{cid}\t{first} {last}\t{email}\t{phone}\t{notes}\t{created}\t{created}\n")
    return rows


def _product_rows(rng: random.Random, count: int, today: datetime.date) -> tuple[list[str], list[int]]:
    categories = list(CATALOGUE)
    created = f"{(today - datetime.timedelta(days=CUSTOMER_HISTORY_DAYS)).isoformat()} 09:00:00+00"
    rows, rates = [], []
    for pid in range(1, count + 1):
        category = categories[(pid - 1) % len(categories)]
        prefix, low, high, deposit_days, models = CATALOGUE[category]
        rate = rng.randrange(low // 100, high // 100 + 1) * 100 - 1
        active = "f" if rng.random() < 0.05 else "t"
        name = f"{rng.choice(models)} #{pid}"
        sku = f"{prefix}-{pid:06d}"
        deposit = rate * deposit_days
        rows.append(f"{pid}\t{sku}\t{name}\t{category}\t{rate}\t{deposit}\t{active}\t{created}\t{created}\n")
        rates.append(rate)
    return rows, rates


def _timeline(pid: int, lengths: list[int], gaps: list[int], first_day: int) -> Iterator[tuple[int, int, int]]:
    """Yield (start day ordinal, length, product id) of one product's rentals, back to back with gaps."""
    day = first_day
    for length, gap in zip(lengths, gaps, strict=True):
        yield day, length, pid
        day += length + gap


def _rental_rows(
    rng: random.Random, customers: int, rates: list[int], total: int, today: datetime.date
) -> Iterator[str]:
    """Yield rental COPY lines in start-date order, ids from 1, as a real history would have them.

    Each product gets its share of rentals laid out one after another; merging the
    products' timelines by start date gives ids and a table layout that follow time.
    """
    products = len(rates)
    per_product, extra = divmod(total, products)
    longest = (max(LENGTHS) + max(GAPS)) * (per_product + 1)
    table = _DayTable(today, longest + 60, longest + 60)
    today_ord = today.toordinal()
    times = table.times
    n_times = len(times)
    rand = rng.random
    timelines = []
    for pid in range(1, products + 1):
        k = per_product + (1 if pid <= extra else 0)
        if k == 0:
            continue
        lengths = [LENGTHS[int(rand() * len(LENGTHS))] for _ in range(k)]
        gaps = [GAPS[int(rand() * len(GAPS))] for _ in range(k)]
        pivot = min(int(k * PAST_SHARE), k - 1)
        before_pivot = sum(lengths[:pivot]) + sum(gaps[:pivot])
        # Today falls inside the pivot rental or the gap after it.
        first_day = today_ord - before_pivot - int(rand() * (lengths[pivot] + gaps[pivot]))
        timelines.append(_timeline(pid, lengths, gaps, first_day))
    for rid, (s, length, pid) in enumerate(heapq.merge(*timelines), start=1):
        rate = rates[pid - 1]
        e = s + length
        u = rand()
        returned_at = r"\N"
        if e <= today_ord:
            if u < 0.06:
                status = "cancelled"
            elif u < 0.16 and e > today_ord - 10:
                status = "active"  # not back yet: overdue
            else:
                status = "returned"
                returned_at = f"{table.day(e - (1 if u > 0.7 else 0))} {times[int(rand() * n_times)]}"
        elif s <= today_ord:
            status = "cancelled" if u < 0.04 else ("reserved" if s == today_ord and u < 0.5 else "active")
        else:
            status = "cancelled" if u < 0.08 else "reserved"
        booked = min(s - int(rand() * 30), today_ord)
        created_at = f"{table.day(booked)} {times[int(rand() * n_times)]}"
        updated_at = returned_at if status == "returned" else created_at
        customer = 1 + int(customers * rand() ** 1.3)
        yield (
            f"{rid}\t{customer}\t{pid}\t{table.day(s)}\t{table.day(e)}\t{status}\t{rate}\t{rate * length}"
            f"\t\\N\t{created_at}\t{updated_at}\t{returned_at}\n"
        )


def _copy(cur, table: str, columns: str, lines: Iterator[str]) -> int:
    """COPY lines into table in batches; return how many rows were sent."""
    sent = 0
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= BATCH_ROWS:
            cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN (FREEZE)", io.StringIO("".join(batch)))
            sent += len(batch)
            batch.clear()
    if batch:
        cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN (FREEZE)", io.StringIO("".join(batch)))
        sent += len(batch)
    return sent


def _set_aside(cur, tables: tuple[str, ...]) -> list[str]:
    """Drop the tables' secondary indexes and constraints; return the statements that restore them.

    Everything but primary keys and CHECK/NOT NULL goes: foreign keys, unique and exclusion
    constraints, plain indexes. The definitions come from the catalog, so they always match
    the migrations; the restore list builds indexes first and checks foreign keys last.
    """
    cur.execute(
        "SELECT format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname) AS drop,"
        " format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,"
        " pg_get_constraintdef(c.oid)) AS restore, c.contype = 'f' AS last"
        " FROM pg_constraint c WHERE c.conrelid = ANY(%s::regclass[]) AND c.contype IN ('f', 'u', 'x')"
        " UNION ALL"
        " SELECT format('DROP INDEX %%s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid), false"
        " FROM pg_index i WHERE i.indrelid = ANY(%s::regclass[])"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        " ORDER BY last DESC",
        (list(tables), list(tables)),
    )
    statements = fetch_all(cur)
    # Foreign keys first: a unique index may not go while a foreign key leans on it.
    for row in statements:
        cur.execute(row["drop"])
    return [row["restore"] for row in reversed(statements)]


def _check_empty(cur) -> None:
    cur.execute(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM customers LIMIT 1) c)"
        " + (SELECT count(*) FROM (SELECT 1 FROM products LIMIT 1) p)"
        " + (SELECT count(*) FROM (SELECT 1 FROM rentals LIMIT 1) r) AS n"
    )
    if fetch_one(cur)["n"]:
        raise SeedError(
            "customers, products or rentals already hold rows; seed fills an empty database "
            "(use --truncate to empty those three tables first)"
        )


def seed(
    customers: int,
    products: int,
    rentals: int,
    *,
    seed: int = 42,
    today: datetime.date | None = None,
    truncate: bool = False,
) -> SeedResult:
    """Fill empty customers, products and rentals tables with generated rows; return the counts.

    Runs in one transaction (all or nothing) under an advisory lock, and ends with ANALYZE.
    Raises SeedError when the tables already hold rows (unless `truncate`, which empties
    them first) or a count is impossible. Users are never touched.
    """
    if customers < 1 or products < 1 or rentals < 0:
        raise SeedError("seed needs at least one customer and one product, and no negative count")
    today = today or datetime.date.today()
    rng = random.Random(seed)  # noqa: S311  # demo data, reproducible on purpose
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with transaction() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        cur.execute("SET LOCAL statement_timeout = 0")
        # The rentals' timelines are built in memory before their COPY starts (about a minute
        # at 10M rows): the session waits for them inside the transaction.
        cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        if not truncate:
            _check_empty(cur)
        # Truncating in this transaction lets COPY FREEZE write rows already frozen and
        # all-visible: no VACUUM is needed before index-only scans work.
        # The messages and reminders about the rentals go with them.
        cur.execute("TRUNCATE outbox, overdue_reminders, rentals, products, customers RESTART IDENTITY")
        # Building indexes and checking foreign keys once after the load is several times
        # faster than row by row; the tables are empty and locked until COMMIT, so it is safe.
        restore = _set_aside(cur, SEEDED_TABLES)
        _copy(cur, "customers", CUSTOMER_COLUMNS, iter(_customer_rows(rng, customers, today)))
        product_lines, rates = _product_rows(rng, products, today)
        _copy(cur, "products", PRODUCT_COLUMNS, iter(product_lines))
        sent = _copy(cur, "rentals", RENTAL_COLUMNS, _rental_rows(rng, customers, rates, rentals, today))
        timings["copy"] = time.perf_counter() - started
        for statement in restore:
            cur.execute(statement)
        timings["indexes"] = time.perf_counter() - started
        for table in SEEDED_TABLES:
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        cur.execute(f"ANALYZE {', '.join(SEEDED_TABLES)}")
    seconds = time.perf_counter() - started
    logger.info("seed timings %s", {k: round(v, 2) for k, v in timings.items()})
    logger.info(
        "seeded %s customers, %s products, %s rentals in %.1f s (seed %s)", customers, products, sent, seconds, seed
    )
    return SeedResult(customers, products, sent, seconds)


def seed_demo_if_empty(seed_value: int = 42) -> dict[str, str] | None:
    """Seed a small demo set and create a demo admin when the database holds no user and no data.

    Returns {"email", "password"} of the demo admin when it created one, else None. The
    password is random; the caller shows it once (make run prints it).
    """
    row = execute_query_one(
        "SELECT NOT EXISTS (SELECT 1 FROM users) AND NOT EXISTS (SELECT 1 FROM customers)"
        " AND NOT EXISTS (SELECT 1 FROM products) AND NOT EXISTS (SELECT 1 FROM rentals) AS empty"
    )
    if not row["empty"]:
        return None
    password = secrets.token_urlsafe(12)
    with transaction() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        cur.execute("SELECT EXISTS (SELECT 1 FROM users) AS taken")
        if fetch_one(cur)["taken"]:
            return None
        cur.execute(
            "INSERT INTO users (email, password_hash, full_name, role) VALUES (%s, %s, %s, 'admin')",
            (users.normalize_email(DEMO_ADMIN_EMAIL), hash_password(password), "Demo Admin"),
        )
    seed(**DEMO_COUNTS, seed=seed_value)
    return {"email": DEMO_ADMIN_EMAIL, "password": password}
