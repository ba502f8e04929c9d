"""Drives the Box emulator with the official Python SDK (box-sdk-gen), only its base URLs changed.

Usage: sdk_roundtrip.py BASE_URL DEV_TOKEN CLIENT_ID CLIENT_SECRET
Prints one JSON object with what was uploaded, for the Rust test to check against the emulator's state.
Every check here compares SHA-1s the SDK saw with SHA-1s computed locally.
"""
import hashlib
import io
import json
import os
import sys

from box_sdk_gen import (
    BaseUrls,
    BoxCCGAuth,
    BoxClient,
    BoxDeveloperTokenAuth,
    CCGConfig,
    CreateFolderParent,
    UploadFileAttributes,
    UploadFileAttributesParentField,
)

BIG_SIZE = 20_000_000 + 1_234_567  # just above Box's chunked minimum: 3 parts of 8 MiB


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def main() -> None:
    base, dev_token, client_id, client_secret = sys.argv[1:5]
    urls = BaseUrls(base_url=base, upload_url=base + "/api", oauth_2_url=base + "/oauth2")
    client = BoxClient(auth=BoxDeveloperTokenAuth(token=dev_token)).with_custom_base_urls(urls)

    folder = client.folders.create_folder("sdk-roundtrip", CreateFolderParent(id="0"))

    big = os.urandom(BIG_SIZE)
    big_file = client.chunked_uploads.upload_big_file(io.BytesIO(big), "big.bin", len(big), folder.id)
    assert big_file.sha_1 == sha1(big), (big_file.sha_1, sha1(big))
    assert big_file.size == len(big)

    small = os.urandom(100_000)
    uploaded = client.uploads.upload_file(
        UploadFileAttributes(name="small.bin", parent=UploadFileAttributesParentField(id=folder.id)),
        io.BytesIO(small),
        content_md_5=sha1(small),
    )
    small_file = uploaded.entries[0]
    assert small_file.sha_1 == sha1(small)

    downloaded = client.downloads.download_file(big_file.id).read()
    assert sha1(downloaded) == sha1(big)

    listing = client.folders.get_folder_by_id(folder.id)
    names = sorted(e.name for e in listing.item_collection.entries)
    assert names == ["big.bin", "small.bin"], names

    # One client-credentials grant through the SDK's own token code.
    ccg = BoxCCGAuth(config=CCGConfig(client_id=client_id, client_secret=client_secret, enterprise_id="12345"))
    ccg_client = BoxClient(auth=ccg).with_custom_base_urls(urls)
    root = ccg_client.folders.get_folder_by_id("0")
    assert any(e.id == folder.id for e in root.item_collection.entries)

    print(json.dumps({
        "folder_id": folder.id,
        "big_id": big_file.id,
        "big_sha1": sha1(big),
        "big_size": len(big),
        "small_id": small_file.id,
        "small_sha1": sha1(small),
    }))


if __name__ == "__main__":
    main()
