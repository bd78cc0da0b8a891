"""Notifications: the outbox's messages rendered as email and delivered by SMTP, at least once.

The messages are written by the changes that cause them (models/outbox.py). `deliver_outbox`
(the deliver_outbox job) claims due messages, sends them through SMTP_URL with the standard
library's smtplib (STARTTLS for smtp://, TLS from the start for smtps://) and records each
outcome. Without SMTP_URL (development) a message is logged and marked delivered.

Guarantees, and their limits:
- At least once: a message is marked delivered only after the server accepted it; a
  failure is retried after OUTBOX_RETRY_SECONDS, doubling each attempt (at most an hour),
  and after OUTBOX_MAX_ATTEMPTS it is parked, counted in the backlog, for people to look at.
  A permanent refusal (an SMTP 5xx reply) parks it at once.
- One host at a time: a message is sent only under its claim (a lease of
  OUTBOX_LEASE_SECONDS, a timestamp on its row); a run stops sending and gives the rest of
  its batch back when the lease could run out during the next send.
- Duplicates: a host that dies (or loses the database) after the server accepted a
  message and before it recorded that, leaves the message to be sent again after the
  lease: that window, one send per crash, is the only source of a second copy. Every copy
  carries the same Message-ID (made from the row's id and creation time), so a receiving
  system can drop the repeat.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg2
from flask import current_app

from . import metrics
from .backoff import doubling_delay
from .config import Settings, redact_url
from .models import outbox as model
from .models.database import DatabaseUnavailable

logger = logging.getLogger(__name__)

# Messages claimed per statement; a run claims again until nothing is due.
BATCH_SIZE = 20
# At most this many batches per run, so a run ends within its job's timeout however long the queue.
MAX_BATCHES = 50
# The longest wait between two attempts of a message, however many failed.
MAX_RETRY_SECONDS = 3600.0
DEFAULT_PORTS = {"smtp": 587, "smtps": 465}


# -- the messages -------------------------------------------------------------------------


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _text(kind: str, facts: dict[str, Any]) -> tuple[str, str]:
    """Return the subject and body of a `kind` message about the rental `facts` (models.outbox's payload)."""
    product = f"{facts['product_name']} ({facts['product_sku']})"
    dates = f"from {facts['start_date']} to {facts['end_date']}"
    greeting = f"Hello {facts['customer_name']},\n\n"
    rental = f"\n\nRental number: {facts['rental_id']}\n"
    if kind == model.BOOKING_CONFIRMATION:
        return (
            f"Booking confirmed: {facts['product_name']} {dates}",
            f"{greeting}your booking of {product} {dates} is confirmed. Please return it by"
            f" {facts['end_date']}.\nTotal: {_money(facts['total_cents'])}{rental}",
        )
    if kind == model.CANCELLATION_NOTICE:
        return (
            f"Booking cancelled: {facts['product_name']} {dates}",
            f"{greeting}your booking of {product} {dates} has been cancelled; nothing is charged for it.{rental}",
        )
    if kind == model.OVERDUE_REMINDER:
        return (
            f"Reminder: {facts['product_name']} was due back on {facts['end_date']}",
            f"{greeting}{product}, rented {dates}, was due back on {facts['end_date']} and has not been"
            f" returned yet. Please bring it back as soon as you can.{rental}",
        )
    raise ValueError(f"unknown message kind {kind!r}")


def message_id(message: dict[str, Any], sender: str) -> str:
    """Return the Message-ID every copy of an outbox message carries (its row's id and creation time)."""
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    created = datetime.datetime.fromisoformat(message["created_at"])
    return f"<outbox.{message['id']}.{int(created.timestamp() * 1_000_000)}@{domain}>"


def render(message: dict[str, Any], sender: str) -> EmailMessage:
    """Return the email for a claimed outbox message (id, kind, recipient, payload, created_at)."""
    subject, body = _text(message["kind"], message["payload"])
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message["recipient"]
    mail["Subject"] = subject
    mail["Date"] = email.utils.format_datetime(datetime.datetime.fromisoformat(message["created_at"]))
    mail["Message-ID"] = message_id(message, sender)
    mail.set_content(body)
    return mail


# -- the mail server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """Where and how to send: SMTP_URL taken apart."""

    host: str
    port: int
    implicit_tls: bool
    user: str | None
    password: str | None
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Server | None:
        """Return the server of SMTP_URL, or None when it is unset (log only)."""
        if not settings.smtp_url:
            return None
        url = urlsplit(settings.smtp_url)
        return cls(
            host=url.hostname or "",
            port=url.port or DEFAULT_PORTS[url.scheme],
            implicit_tls=url.scheme == "smtps",
            user=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            timeout=settings.smtp_timeout_seconds,
        )

    def connect(self) -> smtplib.SMTP:
        """Open a session: TLS from the start (smtps) or upgraded with STARTTLS (smtp); log in when a user is given.

        STARTTLS is required for smtp:// with a user (never send a password in the clear);
        without one it is used when the server offers it.
        """
        context = ssl.create_default_context()
        if self.implicit_tls:
            session: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            session = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if not self.implicit_tls:
                session.ehlo()
                if self.user or session.has_extn("starttls"):
                    session.starttls(context=context)
                    session.ehlo()
            if self.user:
                session.login(self.user, self.password or "")
        except BaseException:
            session.close()
            raise
        return session


def _permanent(exc: Exception) -> bool:
    # 5xx replies say that trying again will not help; 4xx replies and lost connections might.
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def retry_delay(settings: Settings, attempt: int) -> float:
    """Return the seconds before the next attempt after failed attempt number `attempt` (1, 2, ...)."""
    return doubling_delay(settings.outbox_retry_seconds, MAX_RETRY_SECONDS, attempt)


# -- delivery -----------------------------------------------------------------------------


class _Run:
    """One delivery run: its settings, its open SMTP session (one per batch) and what it did."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = Server.from_settings(settings)
        self.summary = {"delivered": 0, "failed": 0, "parked": 0, "given_back": 0}

    def batch(self, claimed: list[dict[str, Any]]) -> None:
        # A send may start only while it can finish (SMTP_TIMEOUT_SECONDS per command,
        # a few commands) before the lease runs out.
        lease_ends = time.monotonic() + self.settings.outbox_lease_seconds
        margin = 2 * self.settings.smtp_timeout_seconds
        session: smtplib.SMTP | None = None
        try:
            for position, message in enumerate(claimed):
                if time.monotonic() + margin > lease_ends:
                    model.release(claimed[position:])
                    self.summary["given_back"] += len(claimed) - position
                    return
                if self.server is not None and session is None:
                    try:
                        session = self.server.connect()
                    except (smtplib.SMTPException, OSError) as exc:
                        # The server is down or refuses us (a wrong password is ours to fix):
                        # every message left is retried later, none parked before its time.
                        for left in claimed[position:]:
                            self._failed(left, exc, permanent=False)
                        return
                try:
                    self._send(session, message)
                except (smtplib.SMTPException, OSError) as exc:
                    self._failed(message, exc, permanent=_permanent(exc))
                    if session is not None and not isinstance(exc, smtplib.SMTPRecipientsRefused):
                        session = _close(session)  # its state is unknown: the next message opens another
                    continue
                model.delivered(message["id"], message["attempts"])
                self.summary["delivered"] += 1
        finally:
            if session is not None:
                _close(session, polite=True)

    def _send(self, session: smtplib.SMTP | None, message: dict[str, Any]) -> None:
        mail = render(message, self.settings.smtp_from)
        if session is None:
            logger.info(
                "SMTP_URL is unset: message %s (%s) to %s not sent, only logged: %s",
                message["id"],
                message["kind"],
                message["recipient"],
                mail["Subject"],
            )
            return
        session.send_message(mail)

    def _failed(self, message: dict[str, Any], exc: Exception, permanent: bool) -> None:
        attempt = message["attempts"]
        park = permanent or attempt >= self.settings.outbox_max_attempts
        error = f"{type(exc).__name__}: {exc}".strip()
        model.failed(message["id"], attempt, error, retry_delay(self.settings, attempt), park)
        self.summary["parked" if park else "failed"] += 1
        logger.warning(
            "message %s to %s failed (attempt %s of %s)%s: %s",
            message["id"],
            message["recipient"],
            attempt,
            self.settings.outbox_max_attempts,
            ", parked" if park else "",
            error,
        )


def _close(session: smtplib.SMTP, polite: bool = False) -> None:
    try:
        if polite:
            session.quit()
        else:
            session.close()
    except (smtplib.SMTPException, OSError):
        session.close()


def backlog(*, timeout: float | None = None) -> dict[str, Any] | None:
    """Return the outbox's backlog (pending, parked, oldest_pending_seconds) and publish it to the metrics.

    None when the database cannot be reached or no connection frees within `timeout` (the
    gauges then read NaN). For /metrics and /api/health/jobs.
    """
    try:
        figures = model.backlog(timeout=timeout)
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        logger.warning("cannot read the outbox's backlog: %s", exc)
        figures = None
    metrics.publish_outbox(figures)
    return figures


def deliver_outbox() -> dict[str, int]:
    """Send every due message of the outbox (the deliver_outbox job); return what happened to how many.

    Needs an app context. Raises DatabaseUnavailable when the database cannot be reached;
    SMTP failures are recorded on the messages, never raised.
    """
    settings: Settings = current_app.config["SETTINGS"]
    run = _Run(settings)
    run.summary["parked"] += model.park_exhausted(settings.outbox_max_attempts)
    for _ in range(MAX_BATCHES):
        claimed = model.claim(BATCH_SIZE, settings.outbox_lease_seconds, settings.outbox_max_attempts)
        if claimed:
            run.batch(claimed)
        if len(claimed) < BATCH_SIZE:
            break
    if any(run.summary.values()):
        logger.info(
            "outbox delivery through %s: %s",
            redact_url(settings.smtp_url) if settings.smtp_url else "the log",
            ", ".join(f"{value} {key}" for key, value in run.summary.items()),
        )
    return run.summary
