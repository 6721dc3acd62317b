"""Fixtures of the store tests (marker ``stores``, run by ``make test-stores``): S3 (moto), GCS
(gcp-storage-emulator) and Azure Blob Storage (Azurite), each on 127.0.0.1, and a ``store`` fixture that runs
a test once per store with that store's Airflow connection defined by ``AIRFLOW_CONN_*``."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stores.servers import BUCKET, GCS_CLIENT_ENV, AzuriteServer, GcsServer

os.environ.update(GCS_CLIENT_ENV)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.stores)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    server = GcsServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    server = AzuriteServer()
    yield server
    server.stop()


class Store:
    """One object store seen two ways: through Airflow (``uri``) and through its own client (to check it)."""

    conn_id: str
    scheme: str

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def uri(self, name: str) -> str:
        return f"{self.scheme}://{self.conn_id}@{BUCKET}/{self.key(name)}"

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or None when there is no object at the key."""
        raise NotImplementedError

    def listed(self, name: str) -> bool:
        """Whether a listing of the key's folder shows the object."""
        raise NotImplementedError

    def listed_prefix(self, prefix: str) -> list[str]:
        """Names of the objects whose key starts with the test's ``prefix/`` + ``prefix``."""
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def pending(self, name: str) -> int:
        """What is held for an unfinished write of the key: S3 multipart uploads, GCS resumable sessions,
        Azure uncommitted blocks."""
        raise NotImplementedError

    def console(self, name: str) -> str:
        raise NotImplementedError


class S3Store(Store):
    conn_id, scheme = "aws_default", "s3"

    def __init__(self, name: str, prefix: str, endpoint: str) -> None:
        super().__init__(name, prefix)
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=BUCKET, Key=self.key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def listed(self, name: str) -> bool:
        found = self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.key(name)).get("Contents", [])
        return any(obj["Key"] == self.key(name) for obj in found)

    def listed_prefix(self, prefix: str) -> list[str]:
        found = self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.key(prefix)).get("Contents", [])
        return [obj["Key"] for obj in found]

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=self.key(name), Body=data)

    def pending(self, name: str) -> int:
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET, Prefix=self.key(name)).get("Uploads", [])
        return len(uploads)

    def console(self, name: str) -> str:
        return f"https://s3.console.aws.amazon.com/s3/object/{BUCKET}?prefix={self.key(name)}"


class GcsStore(Store):
    conn_id, scheme = "google_cloud_default", "gs"

    def __init__(self, name: str, prefix: str, server: GcsServer) -> None:
        super().__init__(name, prefix)
        self.server = server

    def _get(self, path: str, **params: Any) -> Any:
        import requests

        return requests.get(f"{self.server.url}{path}", params=params, timeout=30)

    def read(self, name: str) -> bytes | None:
        from urllib.parse import quote

        answer = self._get(f"/download/storage/v1/b/{BUCKET}/o/{quote(self.key(name), safe='')}", alt="media")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.content

    def listed(self, name: str) -> bool:
        return self.key(name) in self.listed_prefix(name)

    def listed_prefix(self, prefix: str) -> list[str]:
        answer = self._get(f"/storage/v1/b/{BUCKET}/o", prefix=self.key(prefix))
        answer.raise_for_status()
        return [item["name"] for item in answer.json().get("items", [])]

    def put(self, name: str, data: bytes) -> None:
        import requests

        url = f"{self.server.url}/upload/storage/v1/b/{BUCKET}/o"
        answer = requests.post(url, params={"uploadType": "media", "name": self.key(name)}, data=data, timeout=30)
        answer.raise_for_status()

    def pending(self, name: str) -> int:
        return self.server.open_sessions().count(self.key(name))

    def console(self, name: str) -> str:
        return f"https://console.cloud.google.com/storage/browser/_details/{BUCKET}/{self.key(name)}"


class AzureStore(Store):
    conn_id, scheme = "wasb_default", "abfs"

    def __init__(self, name: str, prefix: str, server: AzuriteServer) -> None:
        super().__init__(name, prefix)
        self.server = server
        self.container = server.client().get_container_client(BUCKET)

    def read(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(self.key(name)).readall()
        except ResourceNotFoundError:
            return None

    def listed(self, name: str) -> bool:
        return self.key(name) in self.listed_prefix(name)

    def listed_prefix(self, prefix: str) -> list[str]:
        return [blob.name for blob in self.container.list_blobs(name_starts_with=self.key(prefix))]

    def put(self, name: str, data: bytes) -> None:
        self.container.upload_blob(self.key(name), data, overwrite=True)

    def pending(self, name: str) -> int:
        return self.server.uncommitted_blocks(self.key(name))

    def console(self, name: str) -> str:
        from urllib.parse import quote

        conn = self.server.connection()["extra"]
        account_id = (
            f"/subscriptions/{conn['subscription_id']}/resourceGroups/{conn['resource_group']}"
            "/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
        )
        return (
            "https://portal.azure.com/#view/Microsoft_Azure_Storage/BlobPropertiesBladeV2/storageAccountId/"
            f"{quote(account_id, safe='')}/path/{quote(f'{BUCKET}/{self.key(name)}', safe='')}"
            "/isDeleted~/false/tabToload~/0"
        )


STORES = ["s3", "gcs", "azure"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The test's store, its connection defined by environment variable, under a prefix of its own."""
    prefix = f"{request.node.originalname}-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        endpoint = request.getfixturevalue("aws_conn")
        return S3Store("s3", prefix, endpoint)
    if request.param == "gcs":
        server = request.getfixturevalue("gcs_server")
        monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(server.connection()))
        return GcsStore("gcs", prefix, server)
    server = request.getfixturevalue("azurite_server")
    monkeypatch.setenv("AIRFLOW_CONN_WASB_DEFAULT", json.dumps(server.connection()))
    return AzureStore("azure", prefix, server)
