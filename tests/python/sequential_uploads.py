"""Uploads small files one after another with Python requests, as a legacy application does: over one
keep-alive session, or a new connection each time; to the gateway (multipart or raw PUT) or straight
to the emulator's direct upload. Times each upload on the client.

usage: sequential_uploads.py GATEWAY_URL EMULATOR_URL TOKEN COUNT SIZE[,SIZE...] RUN[,RUN...]
RUN: PATH:CONNECTION, PATH one of multipart, raw (through the gateway), direct (to the emulator);
     CONNECTION one of keepalive, new.
Prints a JSON list, one entry per (size, run): {"size", "path", "connection", "uploads": [{"ms",
"status", "request_id", "file_id", "sha1", "answer_sha1"}]}. Runs go in the order given, sizes outer.
"""
import hashlib
import json
import os
import sys
import time
import uuid

import requests


def upload(session, gateway, emulator, token, path, data):
    name = f"seq-{uuid.uuid4().hex}"
    if path == "multipart":
        return session.post(f"{gateway}/v1/folders/0/files", files={"file": (name, data)}, timeout=60)
    if path == "raw":
        return session.put(f"{gateway}/v1/folders/0/files/{name}", data=data, timeout=60)
    if path == "direct":
        attributes = json.dumps({"name": name, "parent": {"id": "0"}})
        return session.post(f"{emulator}/api/2.0/files/content", headers={"Authorization": f"Bearer {token}"},
                            files=[("attributes", (None, attributes)), ("file", (name, data))], timeout=60)
    raise SystemExit(f"unknown path {path}")


def main():
    gateway, emulator, token, count, sizes, runs = sys.argv[1:7]
    results = []
    for size in (int(s) for s in sizes.split(",")):
        data = os.urandom(size)
        sha1 = hashlib.sha1(data).hexdigest()
        for run in runs.split(","):
            path, connection = run.split(":")
            session = requests.Session()
            uploads = []
            for _ in range(int(count)):
                if connection == "new":
                    session.close()
                    session = requests.Session()
                started = time.monotonic()
                r = upload(session, gateway, emulator, token, path, data)
                ms = (time.monotonic() - started) * 1e3
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                # The gateway answers {"file": ..., "upload": ...}; Box's direct upload {"entries": [file]}.
                file = body.get("file") or (body.get("entries") or [{}])[0]
                uploads.append({"ms": ms, "status": r.status_code, "request_id": r.headers.get("x-request-id"),
                                "file_id": file.get("id"), "sha1": sha1, "answer_sha1": file.get("sha1")})
            session.close()
            results.append({"size": size, "path": path, "connection": connection, "uploads": uploads})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
