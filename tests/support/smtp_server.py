#!/usr/bin/env python3
"""A real SMTP server for the mail tests (aiosmtpd).

Listens on 127.0.0.1 on a free port and prints `PORT <n>` on stdout once it accepts connections;
exits when its stdin closes (so it never outlives the test process).
Every message it accepts is written to --out as `<n>.json` (written atomically): the envelope and
the message as Python's email parser sees it (decoded subject and headers, text and HTML parts),
so the tests check the message with an independent MIME parser.

    smtp_server.py --out DIR [--tls starttls|implicit|none] [--cert PEM --key PEM]
                   [--user NAME --password SECRET]

With --user, AUTH is required before MAIL (with STARTTLS, only offered after it).
Requires: pip install aiosmtpd==1.4.6
"""

import argparse
import asyncio
import email
import email.policy
import itertools
import json
import os
import socket
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tls", choices=["starttls", "implicit", "none"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    return p.parse_args()


class Handler:
    def __init__(self, out):
        self.out = out
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        headers = {}
        for name, value in msg.items():
            headers.setdefault(name.lower(), []).append(str(value))
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": headers,
            "subject": str(msg["subject"]),
            "content_type": msg.get_content_type(),
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
            "raw": raw.decode("utf-8", "replace"),
            "tls": session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None,
            "authenticated": bool(session.authenticated),
        }
        tmp = os.path.join(self.out, f".{n}.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.replace(tmp, os.path.join(self.out, f"{n}.json"))
        return "250 Message accepted for delivery"


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    context = None
    if args.tls != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    authenticator = None
    if args.user is not None:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == args.user
                and auth_data.password.decode() == args.password
            )
            # handled=False: aiosmtpd answers 535 itself on failure.
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

    handler = Handler(args.out)

    def factory():
        kwargs = dict(
            hostname="smtp.test",
            authenticator=authenticator,
            auth_required=authenticator is not None,
            # Over implicit TLS the whole connection is encrypted, which aiosmtpd does not see.
            auth_require_tls=args.tls == "starttls",
        )
        if args.tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        return SMTP(handler, **kwargs)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    ssl_arg = context if args.tls == "implicit" else None
    server = loop.run_until_complete(loop.create_server(factory, sock=sock, ssl=ssl_arg))
    def exit_when_parent_goes():
        sys.stdin.read()
        os._exit(0)

    # The test keeps our stdin open; when it ends (even by a crash), so do we.
    loop.run_in_executor(None, exit_when_parent_goes)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
