"""Reads a file's description, tags, shared link and metadata from the Box emulator with the official
Python SDK (box-sdk-gen), only its base URLs changed, then writes the same kinds of fields on another
file through the SDK's own calls.

Usage: sdk_fields.py BASE_URL DEV_TOKEN FILE_ID OTHER_FILE_ID
FILE_ID carries fields the gateway's pipeline applied (tests/api/emulator/sdk.rs). Prints one JSON
object with what the SDK saw and wrote, for the Rust test to check against the emulator's state.
"""
import json
import sys

from box_sdk_gen import BaseUrls, BoxClient, BoxDeveloperTokenAuth
from box_sdk_gen.managers.file_metadata import (
    CreateFileMetadataByIdScope,
    GetFileMetadataByIdScope,
    UpdateFileMetadataByIdRequestBody,
    UpdateFileMetadataByIdRequestBodyOpField,
    UpdateFileMetadataByIdScope,
)
from box_sdk_gen.managers.files import UpdateFileByIdSharedLink, UpdateFileByIdSharedLinkAccessField
from box_sdk_gen.managers.metadata_templates import GetMetadataTemplateScope


def main() -> None:
    base, dev_token, file_id, other_id = sys.argv[1:5]
    urls = BaseUrls(base_url=base, upload_url=base + "/api", oauth_2_url=base + "/oauth2")
    client = BoxClient(auth=BoxDeveloperTokenAuth(token=dev_token)).with_custom_base_urls(urls)

    # Read what the pipeline applied, where Box keeps it.
    read = client.files.get_file_by_id(
        file_id, fields=["description", "tags", "shared_link", "metadata.enterprise.invoiceData"]
    )
    instance = client.file_metadata.get_file_metadata_by_id(
        file_id, GetFileMetadataByIdScope.ENTERPRISE, "invoiceData"
    )
    listed = client.file_metadata.get_file_metadata(file_id)
    template = client.metadata_templates.get_metadata_template(GetMetadataTemplateScope.ENTERPRISE, "invoiceData")

    # Write through the SDK's own calls on another file.
    updated = client.files.update_file_by_id(
        other_id,
        description="Written by the SDK",
        tags=["sdk", "written"],
        shared_link=UpdateFileByIdSharedLink(access=UpdateFileByIdSharedLinkAccessField.OPEN),
        fields=["description", "tags", "shared_link"],
    )
    created = client.file_metadata.create_file_metadata_by_id(
        other_id, CreateFileMetadataByIdScope.ENTERPRISE, "invoiceData", {"amount": 10.5, "status": "open"}
    )
    patched = client.file_metadata.update_file_metadata_by_id(
        other_id,
        UpdateFileMetadataByIdScope.ENTERPRISE,
        "invoiceData",
        [
            UpdateFileMetadataByIdRequestBody(
                op=UpdateFileMetadataByIdRequestBodyOpField.REPLACE, path="/status", value="paid"
            )
        ],
    )

    print(json.dumps({
        "description": read.description,
        "tags": read.tags,
        "shared_link": {"access": read.shared_link.access.value, "url": read.shared_link.url,
                        "effective_access": read.shared_link.effective_access.value},
        "metadata_via_fields": read.metadata.extra_data["enterprise_12345"]["invoiceData"],
        "instance": {"scope": instance.scope, "template": instance.template, "parent": instance.parent,
                     "values": instance.extra_data},
        "listed": len(listed.entries),
        "template_fields": [f.key for f in template.fields],
        "written": {"description": updated.description, "tags": updated.tags,
                    "shared_link_url": updated.shared_link.url},
        "created_version": created.version,
        "patched": {"version": patched.version, "status": patched.extra_data["status"]},
    }))


if __name__ == "__main__":
    main()
