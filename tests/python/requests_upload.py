"""Uploads a file to the gateway with Python requests, as a legacy application would.

usage: requests_upload.py MODE URL PATH FILENAME [KEY=VALUE ...]
MODE: multipart  - requests' own multipart body (with Content-Length)
      chunked    - the same multipart body sent from a generator: Transfer-Encoding: chunked,
                   no Content-Length, so the gateway cannot know the size up front
Prints {"status": ..., "body": ...} as JSON.
"""
import json
import sys

import requests
from requests_toolbelt import MultipartEncoder


def main():
    mode, url, path, filename = sys.argv[1:5]
    fields = dict(arg.split("=", 1) for arg in sys.argv[5:])
    with open(path, "rb") as f:
        if mode == "multipart":
            response = requests.post(url, data=fields, files={"file": (filename, f)}, timeout=600)
        elif mode == "chunked":
            encoder = MultipartEncoder(fields={**fields, "file": (filename, f, "application/octet-stream")})

            def body():
                while True:
                    chunk = encoder.read(64 * 1024)
                    if not chunk:
                        return
                    yield chunk

            response = requests.post(url, data=body(), headers={"Content-Type": encoder.content_type}, timeout=600)
        else:
            raise SystemExit(f"unknown mode {mode}")
    try:
        body = response.json()
    except ValueError:
        body = response.text
    print(json.dumps({"status": response.status_code, "body": body, "request_headers": dict(response.request.headers)}))


if __name__ == "__main__":
    main()
