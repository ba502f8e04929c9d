"""Uploads a file with the tus Python client (tuspy), as a resumable-upload application would.

usage: tus_upload.py BASES PATH CHUNK_SIZE [--metadata JSON] [--checksum] [--key KEY]
                     [--stop-at OFFSET] [--url PATH] [--retries N] [--retry-delay SECS]
BASES: comma-separated gateway base URLs (replicas); each chunk goes to the next one in turn.
--stop-at: stop once the upload reaches OFFSET (to resume it later with --url).
--url: the upload's path (/v1/tus/ID), to resume it: tuspy asks HEAD for the offset first.
--retries, --retry-delay: tuspy's own retry logic (after a failed PATCH: wait, HEAD, send again from
its offset); off by default.
Prints {"url", "offset", "file_id", "chunks"} as JSON.
"""
import argparse
import json

from tusclient import client


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bases")
    p.add_argument("path")
    p.add_argument("chunk_size", type=int)
    p.add_argument("--metadata", default="{}")
    p.add_argument("--checksum", action="store_true")
    p.add_argument("--key")
    p.add_argument("--stop-at", type=int)
    p.add_argument("--url")
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--retry-delay", type=float, default=1)
    a = p.parse_args()
    bases = a.bases.split(",")
    headers = {"X-API-Key": a.key} if a.key else {}
    tus = client.TusClient(bases[0] + "/v1/tus/", headers=headers)
    up = tus.uploader(
        a.path,
        chunk_size=a.chunk_size,
        metadata=json.loads(a.metadata),
        upload_checksum=a.checksum,
        url=bases[0] + a.url if a.url else None,
        retries=a.retries,
        retry_delay=a.retry_delay,
    )
    if not up.url:
        up.set_url(up.create_url())
        up.offset = 0
    path = "/v1/tus/" + up.url.rsplit("/", 1)[1]
    stop = a.stop_at or up.get_file_size()
    chunks, file_id = 0, None
    while up.offset < stop:
        # The next replica takes the next chunk.
        up.url = bases[chunks % len(bases)] + path
        up.upload_chunk()
        chunks += 1
        file_id = up.request.response_headers.get("upload-box-file-id") or file_id
    print(json.dumps({"url": path, "offset": up.offset, "file_id": file_id, "chunks": chunks}))


if __name__ == "__main__":
    main()
