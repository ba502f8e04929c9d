"""A webhook receiver, as an application's author would write one with the `standardwebhooks` package.

usage: webhook_receiver.py PORT LOG --secret WHSEC [--secret WHSEC ...] [--status CODE] [--accept any]
Listens on 127.0.0.1:PORT, checks every POST's signature with each secret on its own (the
`standardwebhooks` library: webhook-id, webhook-timestamp, webhook-signature), and appends one JSON
line per request to LOG: {"id", "verified": [bool per secret], "event"}. Answers --status (204 by
default) when every secret verifies (with --accept any: when one does), 401 otherwise. Prints
"listening" once it accepts connections.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("log")
    p.add_argument("--secret", action="append", required=True)
    p.add_argument("--status", type=int, default=204)
    p.add_argument("--accept", choices=["all", "any"], default="all")
    a = p.parse_args()
    hooks = [Webhook(s) for s in a.secret]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = []
            event = None
            for hook in hooks:
                try:
                    event = hook.verify(body, headers)
                    verified.append(True)
                except WebhookVerificationError:
                    verified.append(False)
            with open(a.log, "a") as f:
                f.write(json.dumps({"id": headers.get("webhook-id"), "verified": verified,
                                    "event": event if event is not None else json.loads(body)}) + "\n")
            accepted = any(verified) if a.accept == "any" else all(verified)
            self.send_response(a.status if accepted else 401)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("listening", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
