"""Object storage behind one small interface, chosen by a type string: ``local`` (a folder) or ``s3``
(any S3 endpoint through the minio SDK). Keys are ``/``-separated; URIs are ``file://...`` or ``s3://bucket/key``.

``arrow_filesystem()`` gives a ``pyarrow.fs`` view of the same store, so that Spark and pandas code can read
and write Parquet without extra jars.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from driftloop.contracts.settings import Settings
from driftloop.errors import ConfigError, NotFoundError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(ABC):
    """Put, get and list objects by key."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` (replacing it atomically) and return the object's URI."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, recursively, in lexical order."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root path under which keys live."""

    def key_of(self, uri: str) -> str:
        root = self.uri("")
        if not uri.startswith(root):
            raise NotFoundError(f"{uri} is not in this object store ({root})")
        return uri[len(root) :]

    def put_file(self, key: str, path: Path) -> str:
        return self.put_bytes(key, Path(path).read_bytes())

    def upload_dir(self, local_dir: Path, prefix: str) -> builtins.list[str]:
        keys = []
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file() and not path.name.startswith((".", "_")):
                key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
                self.put_file(key, path)
                keys.append(key)
        return keys

    def download_prefix(self, prefix: str, local_dir: Path) -> builtins.list[Path]:
        paths = []
        for key in self.list(prefix):
            target = Path(local_dir) / key[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get_bytes(key))
            paths.append(target)
        return paths

    def local_path(self, key: str) -> Path | None:
        """A local path to the object if the store is a folder (lets Spark read in place), else None."""
        return None


class LocalObjectStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key {key!r} escapes the object store")
        return path

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: readers never see a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no object {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            yield prefix
            return
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                yield path.relative_to(self.root).as_posix()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return f"file://{self.root.as_posix()}/{key}"

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), self.root.as_posix()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class S3ObjectStore(ObjectStore):
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        secure: bool = False,
    ) -> None:
        from minio import Minio

        if not endpoint:
            raise ConfigError("object_store.type is 's3' but object_store.endpoint is empty: set host:port")
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self.secure = secure
        self._access_key = access_key
        self._secret_key = secret_key
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def put_bytes(self, key: str, data: bytes) -> str:
        self.client.put_object(self.bucket, key, io.BytesIO(data), length=len(data))
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchBucket"}:
                raise NotFoundError(f"no object {self.uri(key)}") from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error:
            return False

    def list(self, prefix: str) -> Iterator[str]:
        keys = [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        yield from sorted(k for k in keys if k is not None)

    def delete(self, key: str) -> None:
        for k in list(self.list(key)) or [key]:
            self.client.remove_object(self.bucket, k)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        scheme = "https" if self.secure else "http"
        fs = pafs.S3FileSystem(
            access_key=self._access_key,
            secret_key=self._secret_key,
            region=self.region,
            endpoint_override=f"{scheme}://{self.endpoint}",
            scheme=scheme,
        )
        return fs, self.bucket


def open_object_store(settings: Settings) -> ObjectStore:
    """The object store the settings describe (``object_store.type``: local or s3)."""
    cfg = settings.object_store
    if cfg.type == "local":
        return LocalObjectStore(settings.object_store_path)
    if cfg.type == "s3":
        return S3ObjectStore(
            endpoint=cfg.endpoint,
            bucket=cfg.bucket,
            access_key=cfg.access_key,
            secret_key=cfg.secret_key.get_secret_value(),
            region=cfg.region,
            secure=cfg.secure,
        )
    raise ConfigError(f"unknown object_store.type {cfg.type!r}: use 'local' or 's3'")
