"""A real SMTP server for the tests: aiosmtpd on a free 127.0.0.1 port, in a thread of the test process.

It keeps every message it accepted (parsed), can be stopped and started again on the same
port (the mail server down for a while), and answers 451 (try again later) to the
recipients listed in `refuse`. With `tls` (a self-signed certificate for 127.0.0.1 made by
`self_signed`) it requires STARTTLS and a login with `user` / `password` before mail.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key into `folder`; return (certificate, key)."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class SmtpServer:
    """aiosmtpd on a fixed free port: `received` lists (recipients, message) in arrival order."""

    user = "mailer"
    password = "mail-secret"

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        credentials = f"{self.user}:{self.password}@" if tls else ""
        self.url = f"smtp://{credentials}127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.received: list[tuple[list[str], EmailMessage]] = []
        self.refuse: set[str] = set()
        self.logins: list[str] = []
        self._controller: Controller | None = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            self.user.encode(),
            self.password.encode(),
        )
        if ok:
            self.logins.append(self.user)
        return AuthResult(success=ok)

    def start(self) -> None:
        """Listen on the port (again); returns once the server answers."""
        options = {}
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
            options = {
                "tls_context": context,
                "require_starttls": True,
                "auth_required": True,
                "authenticator": self._authenticate,
            }
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **options)
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
