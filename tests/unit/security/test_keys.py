"""load_keys: the dev pair in the data dir (generated once, private file 0600), or the configured
SHOP_JWT_PRIVATE_KEY / SHOP_JWT_PUBLIC_KEY, checked to be one Ed25519 pair."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.security.keys import PRIVATE_FILE, PUBLIC_FILE, load_keys
from shop.security.tokens import TokenIssuer, TokenVerifier
from shop.settings import Settings, SettingsError

USER = uuid.UUID("6a4d0c1e-4bd5-4f7e-8c39-2d1f0e9a8b7c")


def _pair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def _works(private: bytes | None, public: bytes) -> bool:
    assert private is not None
    token = TokenIssuer(private).issue(USER, "customer")
    return TokenVerifier(public).verify(token).user_id == USER


def test_a_dev_pair_is_generated_in_the_data_dir_with_a_private_file_only_the_owner_reads(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "fresh" / "data"  # created on demand

    keys = load_keys(Settings(data_dir=data_dir))

    private_file = data_dir / PRIVATE_FILE
    assert stat.S_IMODE(private_file.stat().st_mode) == 0o600
    assert private_file.read_bytes() == keys.private_pem
    assert (data_dir / PUBLIC_FILE).read_bytes() == keys.public_pem
    assert not list(data_dir.glob("*.tmp"))
    assert _works(keys.private_pem, keys.public_pem)


def test_the_dev_pair_is_reused_on_the_next_load(tmp_path: Path) -> None:
    first = load_keys(Settings(data_dir=tmp_path))

    second = load_keys(Settings(data_dir=tmp_path))

    assert second == first


def test_a_lost_public_file_is_derived_from_the_private_one(tmp_path: Path) -> None:
    first = load_keys(Settings(data_dir=tmp_path))
    (tmp_path / PUBLIC_FILE).unlink()

    again = load_keys(Settings(data_dir=tmp_path))

    assert again == first


def test_without_generation_and_without_a_key_the_error_names_the_public_key_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SHOP_JWT_PUBLIC_KEY"):
        load_keys(Settings(data_dir=tmp_path), generate=False)
    assert not (tmp_path / PRIVATE_FILE).exists()


def test_configured_pem_keys_are_used_and_nothing_is_written(tmp_path: Path) -> None:
    private, public = _pair()

    keys = load_keys(Settings(data_dir=tmp_path, jwt_private_key=private, jwt_public_key=public))

    assert keys.private_pem == private.encode()
    assert keys.public_pem == public.encode()
    assert list(tmp_path.iterdir()) == []


def test_configured_keys_may_use_escaped_newlines_or_be_paths_to_pem_files(tmp_path: Path) -> None:
    private, public = _pair()
    public_path = tmp_path / "public.pem"
    public_path.write_text(public)

    escaped = private.replace("\n", "\\n")

    keys = load_keys(Settings(data_dir=tmp_path, jwt_private_key=escaped, jwt_public_key=str(public_path)))

    assert _works(keys.private_pem, keys.public_pem)


def test_a_configured_private_key_alone_derives_its_public_key(tmp_path: Path) -> None:
    private, public = _pair()

    keys = load_keys(Settings(data_dir=tmp_path, jwt_private_key=private))

    assert keys.public_pem == public.encode()


def test_a_configured_public_key_alone_verifies_but_cannot_sign(tmp_path: Path) -> None:
    _, public = _pair()

    keys = load_keys(Settings(data_dir=tmp_path, jwt_public_key=public), generate=False)

    assert keys.private_pem is None
    assert keys.public_pem == public.encode()


def test_a_mismatched_pair_is_a_settings_error_naming_both_variables(tmp_path: Path) -> None:
    private, _ = _pair()
    _, other_public = _pair()

    with pytest.raises(SettingsError) as raised:
        load_keys(Settings(data_dir=tmp_path, jwt_private_key=private, jwt_public_key=other_public))

    assert "SHOP_JWT_PRIVATE_KEY" in str(raised.value)
    assert "SHOP_JWT_PUBLIC_KEY" in str(raised.value)
    assert "does not belong" in str(raised.value)


def test_a_non_ed25519_key_is_a_settings_error(tmp_path: Path) -> None:
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    with pytest.raises(SettingsError, match="Ed25519"):
        load_keys(Settings(data_dir=tmp_path, jwt_private_key=rsa_private.decode()))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n", id="bad-pem"),
        pytest.param("/no/such/key.pem", id="missing-file"),
    ],
)
def test_an_unreadable_configured_key_is_a_settings_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="SHOP_JWT_"):
        load_keys(Settings(data_dir=tmp_path, jwt_public_key=value), generate=False)


def test_a_stale_public_file_is_replaced_by_the_public_half_of_the_private_key(tmp_path: Path) -> None:
    first = load_keys(Settings(data_dir=tmp_path))
    _, foreign_public = _pair()
    (tmp_path / PUBLIC_FILE).write_text(foreign_public)

    again = load_keys(Settings(data_dir=tmp_path))

    assert again == first
    assert (tmp_path / PUBLIC_FILE).read_bytes() == first.public_pem


def test_a_corrupt_dev_private_key_is_a_settings_error_naming_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / PRIVATE_FILE).write_text("not a key")

    with pytest.raises(SettingsError, match="SHOP_DATA_DIR"):
        load_keys(Settings(data_dir=tmp_path))


_LOAD_WHEN_TOLD = """
import sys
from pathlib import Path
from shop.security.keys import load_keys
from shop.settings import Settings
print("ready", flush=True)
sys.stdin.readline()
keys = load_keys(Settings(data_dir=Path(sys.argv[1])))
print(keys.private_pem.hex(), keys.public_pem.hex(), flush=True)
"""


def test_processes_starting_together_on_one_data_dir_agree_on_one_key_pair(tmp_path: Path) -> None:
    import subprocess
    import sys

    data_dir = tmp_path / "shared"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD_WHEN_TOLD, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # release them all at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            private_hex, public_hex = out.split()
            results.append((bytes.fromhex(private_hex), bytes.fromhex(public_hex)))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)

    on_disk = load_keys(Settings(data_dir=data_dir), generate=False)
    assert set(results) == {(on_disk.private_pem, on_disk.public_pem)}
    assert _works(on_disk.private_pem, on_disk.public_pem)
    assert stat.S_IMODE((data_dir / PRIVATE_FILE).stat().st_mode) == 0o600
