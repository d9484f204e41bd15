"""The token signing key pair: from the settings, or a dev pair generated in the data dir."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shop.settings import Settings, SettingsError

PRIVATE_FILE = "jwt-private.pem"
PUBLIC_FILE = "jwt-public.pem"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """PEM-encoded Ed25519 keys; `private_pem` is None where only verification is needed."""

    private_pem: bytes | None
    public_pem: bytes


def _pem_value(value: str) -> bytes:
    """A key given as PEM text (\\n escapes allowed) or as a path to a PEM file."""
    if "-----BEGIN" in value:
        return value.replace("\\n", "\n").encode()
    return Path(value).read_bytes()


def load_keys(settings: Settings, *, generate: bool = True) -> KeyPair:
    """The configured keys; else the dev pair in the data dir, generated once if `generate`."""
    if settings.jwt_public_key or settings.jwt_private_key:
        try:
            private = _pem_value(settings.jwt_private_key) if settings.jwt_private_key else None
            if settings.jwt_public_key:
                public = _pem_value(settings.jwt_public_key)
            elif private is not None:
                public = _public_of(private)
            else:  # pragma: no cover - excluded by the condition above
                raise SettingsError("SHOP_JWT_PUBLIC_KEY: missing")
            _check(private, public)
        except (OSError, ValueError, TypeError) as exc:
            raise SettingsError(f"SHOP_JWT_PRIVATE_KEY/SHOP_JWT_PUBLIC_KEY: {exc}") from None
        return KeyPair(private, public)
    private_path = settings.data_dir / PRIVATE_FILE
    public_path = settings.data_dir / PUBLIC_FILE
    if not private_path.exists():
        if not generate:
            raise SettingsError(f"SHOP_JWT_PUBLIC_KEY: not set and no dev key in {settings.data_dir}")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _create_once(private_path, pem)
    private = private_path.read_bytes()
    # The private file is the one source of truth: processes starting together on one data dir
    # all end up with the pair of whichever key was written first.
    try:
        public = _public_of(private)
    except ValueError as exc:
        raise SettingsError(f"SHOP_DATA_DIR: the dev key {private_path} is unusable: {exc}") from None
    with contextlib.suppress(OSError):  # a convenience copy for verify-only processes
        if not public_path.exists() or public_path.read_bytes() != public:
            tmp = _tmp_name(public_path)
            tmp.write_bytes(public)
            os.replace(tmp, public_path)
    return KeyPair(private, public)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _create_once(path: Path, data: bytes) -> None:
    """Write `path` (mode 0600, complete or not at all) unless it exists: the first writer wins."""
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if another process got there first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _public_of(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the private key must be an Ed25519 key (EdDSA)")
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check(private_pem: bytes | None, public_pem: bytes) -> None:
    public = serialization.load_pem_public_key(public_pem)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("the public key must be an Ed25519 key (EdDSA)")
    if private_pem is not None and _public_of(private_pem) != public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("the public key does not belong to the private key")
