"""A real SMTP server for the tests: aiosmtpd on a free 127.0.0.1 port, in a thread of the test process.

It keeps every message it accepted (parsed), can be stopped and started again on the same
port (the mail server down for a while), and answers 451 (try again later) to the
recipients listed in `refuse`.
"""

from __future__ import annotations

import email
import email.policy
import threading
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from devtools.embedded_pg import free_port


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.server.refuse:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.server.lock:
            self.server.received.append((list(envelope.rcpt_tos), message))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on a fixed free port: `received` lists (recipients, message) in arrival order."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.received: list[tuple[list[str], EmailMessage]] = []
        self.refuse: set[str] = set()
        self._controller: Controller | None = None

    def start(self) -> None:
        """Listen on the port (again); returns once the server answers."""
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        """Stop listening: connections are refused until start()."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[EmailMessage]:
        """Return the messages received so far."""
        with self.lock:
            return [message for _, message in self.received]
