"""Local object-store APIs for the store tests and the P2 benchmark: a GCS API (gcp-storage-emulator) and Azure
Blob Storage (Azurite, from npm), each a process of its own on 127.0.0.1 and a free port, in a temporary
directory, stopped by its PID; plus the Airflow connections that point at them.

Run as ``python -m tests.stores.servers gcs --port N --data DIR [--in-memory]`` to serve the GCS API. Two
additions to gcp-storage-emulator, both parts of Google's documented protocol that it lacks:

- ``DELETE`` on a resumable-upload session URI cancels the session (GCS answers 499). gcsfs sends it when a
  write is discarded; the store tests read the open sessions to prove that the provider cancels its own.
- ``POST /token``: an OAuth token endpoint, the ``token_uri`` of the test service-account key, so that the
  Google provider's connection gets an access token without reaching Google.

The emulator itself keeps every open session in ``<data>/.cloudstorage/.meta`` (``resumable``), which
:meth:`GcsServer.open_sessions` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / ".stores" / "node_modules" / ".bin" / "azurite-blob"
BUCKET = "sora2-test"
GCS_PROJECT = "sora2-test"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# What the provider's Google stack needs to talk to a local GCS API: gcsfs asks Google's tokeninfo endpoint for
# the expiry of a raw token unless told not to, and its "extended" filesystem probes the bucket over gRPC.
GCS_CLIENT_ENV = {"FETCH_RAW_TOKEN_EXPIRY": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)  # the poll interval of a deadline-bounded loop
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL its process group (it was started in a session of its own)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class GcsServer:
    """gcp-storage-emulator (with session cancel and a token endpoint) with the bucket ``sora2-test``."""

    def __init__(self, *, in_memory: bool = False, log_path: Path | None = None) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="sora2-gcs-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._connection: dict[str, Any] | None = None
        argv = [sys.executable, "-m", "tests.stores.servers", "gcs", "--port", str(self.port), "--data", str(self.data)]
        if in_memory:
            argv.append("--in-memory")
        out = log_path.open("w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_listening(self.proc, self.port, "the GCS emulator")

    def connection(self) -> dict[str, Any]:
        """A ``google_cloud_platform`` connection on this emulator (a throwaway service-account key whose
        ``token_uri`` is the emulator's token endpoint, and the extra ``gcs.endpoint``)."""
        if self._connection is None:
            self._connection = gcs_connection(self.url)
        return self._connection

    def open_sessions(self) -> list[str]:
        """Names of the objects with a resumable upload session still open."""
        meta = self.data / ".cloudstorage" / ".meta"
        try:
            sessions = json.loads(meta.read_text()).get("resumable") or {}
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being rewritten
            return []
        return sorted(obj.get("name", "") for obj in sessions.values())

    def stop(self) -> None:
        _stop(self.proc)
        import shutil

        shutil.rmtree(self.data, ignore_errors=True)


def _service_account_key(token_uri: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": GCS_PROJECT,
        "private_key_id": "emulator",
        "private_key": pem,
        "client_email": f"sora2@{GCS_PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }


def gcs_connection(url: str) -> dict[str, Any]:
    extra = {"keyfile_dict": _service_account_key(f"{url}/token"), "project": GCS_PROJECT, "gcs.endpoint": url}
    return {"conn_type": "google_cloud_platform", "extra": extra}


class AzuriteServer:
    """Azurite's Blob service (the npm package, installed by ``make test-stores`` under ``.stores/``) with the
    container ``sora2-test`` in the development account."""

    def __init__(self, *, log_path: Path | None = None) -> None:
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: `make test-stores` installs Azurite with npm")
        self.data = Path(tempfile.mkdtemp(prefix="sora2-azurite-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        argv = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.data),
                "--silent", "--disableTelemetry", "--skipApiVersionCheck"]
        out = log_path.open("w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_listening(self.proc, self.port, "Azurite")
        self.client().create_container(BUCKET)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.url};"
        )

    def connection(self) -> dict[str, Any]:
        """A ``wasb`` connection on Azurite; ``subscription_id``/``resource_group`` give the portal link."""
        extra = {"connection_string": self.connection_string, "subscription_id": "00000000-0000-0000-0000-000000000000",
                 "resource_group": "sora2-test-rg"}
        return {"conn_type": "wasb", "extra": extra}

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def uncommitted_blocks(self, blob: str) -> int:
        """Blocks staged for ``blob`` and not committed (0 when there are none, or no such blob)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            _, uncommitted = self.client().get_blob_client(BUCKET, blob).get_block_list("uncommitted")
        except ResourceNotFoundError:
            return 0
        return len(uncommitted)

    def stop(self) -> None:
        _stop(self.proc)
        import shutil

        shutil.rmtree(self.data, ignore_errors=True)


# --------------------------------------------------------------------------- the GCS API process


def _serve_gcs(port: int, data: str, in_memory: bool) -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects  # noqa: F401  (the handlers the routes point at)

    upload_route = rf"^{server.settings.UPLOAD_API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o$"

    def cancel_session(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        """Cancel a resumable upload (Google answers 499 Client Closed Request)."""
        upload_id = request.query.get("upload_id", [""])[0]
        with contextlib.suppress(Exception):  # an unknown or already finished session: nothing to cancel
            storage.delete_resumable_file_obj(upload_id)
            storage._write_config_to_file()
        with contextlib.suppress(Exception):  # the bytes received so far (absent when none arrived)
            storage._store.remove_file(storage._object_path("_resumable", storage.safe_id(upload_id)))
        response.status = SimpleNamespace(value=499, phrase="Client Closed Request")

    def token(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        response.json({"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"})

    routes = []
    for regex, handlers in server.HANDLERS:
        if regex == upload_route:
            handlers = {**handlers, server.DELETE: cancel_session}
        routes.append((regex, handlers))
    server.HANDLERS = (("^/token$", {server.POST: token}), *routes)
    emulator = server.create_server("127.0.0.1", port, in_memory=in_memory, default_bucket=BUCKET, data_dir=data)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    emulator.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", choices=["gcs"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--in-memory", action="store_true")
    args = parser.parse_args()
    _serve_gcs(args.port, args.data, args.in_memory)


if __name__ == "__main__":
    main()
