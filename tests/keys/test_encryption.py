"""Key material at rest: sealed per key, bound to its row, wrapped by the local key or KMS."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from pydantic import SecretStr

from shared.config import Settings
from shared.crypto.envelope import (
    DecryptionFailed,
    KmsKeyProvider,
    LocalKeyProvider,
    SecretSealer,
    secret_context,
)
from shared.db.database import Database
from shared.keys.service import KeyLifecycleService, Owner
from shared.runtime import Runtime

SECRET = "sk-or-v1-" + "9" * 64


async def test_a_sealed_secret_moved_to_another_users_row_does_not_open(
    keys: KeyLifecycleService, database: Database
) -> None:
    alice = await keys.create_key(Owner.user("alice"), actor="t")
    bob = await keys.create_key(Owner.user("bob"), actor="t")

    # WHEN someone with database access copies Alice's sealed secret onto Bob's row
    async with database.connection() as conn:
        await conn.execute(
            "update api_keys b set secret_ciphertext = a.secret_ciphertext,"
            " secret_nonce = a.secret_nonce, wrapped_data_key = a.wrapped_data_key"
            " from api_keys a where a.id = %s and b.id = %s",
            (alice.key.id, bob.key.id),
        )

    # THEN reading Bob's key fails instead of handing out Alice's secret
    with pytest.raises(DecryptionFailed):
        keys.open_secret(await keys.get_key(bob.key.id))
    assert keys.open_secret(await keys.get_key(alice.key.id)) == alice.secret


async def test_nothing_stored_contains_the_secret(
    keys: KeyLifecycleService, database: Database
) -> None:
    issued = await keys.create_key(Owner.user("carol"), actor="t")
    assert issued.secret is not None
    async with database.connection() as conn:
        cursor = await conn.execute(
            "select string_agg(t::text, ' ') as everything from ( select * from api_keys) t"
        )
        keys_text = (await cursor.fetchone() or {}).get("everything")
        cursor = await conn.execute(
            "select string_agg(a::text, ' ') as everything from audit_log a"
        )
        audit_text = (await cursor.fetchone() or {}).get("everything")
    body = issued.secret.removeprefix("sk-or-v1-")
    assert body not in str(keys_text)
    assert body not in str(audit_text)
    assert "sk-or-v1-" not in str(audit_text)


def test_tampered_ciphertext_does_not_open() -> None:
    sealer = SecretSealer(LocalKeyProvider(os.urandom(32)))
    context = secret_context("user:x", uuid.uuid4())
    sealed = sealer.seal(SECRET, context)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(DecryptionFailed):
        sealer.open(
            type(sealed)(flipped, sealed.nonce, sealed.wrapped_data_key, sealed.provider), context
        )


def test_master_key_rotation_rewraps_without_touching_the_secret() -> None:
    old_provider, new_provider = LocalKeyProvider(os.urandom(32)), LocalKeyProvider(os.urandom(32))
    context = secret_context("system:main", uuid.uuid4())
    sealed = SecretSealer(old_provider).seal(SECRET, context)

    rotated = SecretSealer(new_provider, previous=[old_provider])
    rewrapped = rotated.rewrap(sealed, context)

    assert rewrapped.provider == new_provider.name
    assert rewrapped.ciphertext == sealed.ciphertext
    assert SecretSealer(new_provider).open(rewrapped, context) == SECRET
    with pytest.raises(DecryptionFailed):
        SecretSealer(new_provider).open(sealed, context)


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with mock_aws():
        client = boto3.client("kms", region_name="eu-west-1")
        key_id = client.create_key(Description="openrouter-agent test")["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName="alias/openrouter-agent", TargetKeyId=key_id)
        yield client, "alias/openrouter-agent"


def test_the_kms_provider_round_trips_and_binds_the_context(kms: tuple[object, str]) -> None:
    client, alias = kms
    sealer = SecretSealer(KmsKeyProvider(alias, client))
    context = secret_context("user:dora", uuid.uuid4())

    sealed = sealer.seal(SECRET, context)

    assert sealed.provider == f"kms:{alias}"
    assert SECRET.encode() not in sealed.wrapped_data_key + sealed.ciphertext
    assert sealer.open(sealed, context) == SECRET
    with pytest.raises(DecryptionFailed):
        sealer.open(sealed, secret_context("user:eve", uuid.uuid4()))


def test_secrets_sealed_locally_can_move_to_kms(kms: tuple[object, str]) -> None:
    client, alias = kms
    local = LocalKeyProvider(os.urandom(32))
    context = secret_context("user:fay", uuid.uuid4())
    sealed = SecretSealer(local).seal(SECRET, context)

    moved = SecretSealer(KmsKeyProvider(alias, client), previous=[local]).rewrap(sealed, context)

    assert moved.provider == f"kms:{alias}"
    assert SecretSealer(KmsKeyProvider(alias, client)).open(moved, context) == SECRET


def test_a_master_key_is_never_shown() -> None:
    material = os.urandom(32)
    assert base64.b64encode(material).decode() not in repr(LocalKeyProvider(material))


async def test_rewrap_moves_every_data_key_to_the_new_master_key(
    keys: KeyLifecycleService,
    settings: Settings,
    database: Database,
    database_dsn: str,
) -> None:
    # GIVEN keys sealed under the first master key
    first = await keys.create_key(Owner.user("g"), actor="t")
    await keys.create_key(Owner.system("h"), actor="t")
    old_master = (settings.local_data_dir / "master.key").read_text().strip()
    new_master = base64.b64encode(os.urandom(32)).decode()

    def runtime_with(current: str, previous: list[str]) -> Runtime:
        return Runtime(
            settings.model_copy(
                update={
                    "encryption_master_key": SecretStr(current),
                    "encryption_previous_master_keys": [SecretStr(p) for p in previous],
                }
            ),
            database=Database(database_dsn),
        )

    # WHEN the master key is rotated and the data keys re-wrapped
    rotating = runtime_with(new_master, [old_master])
    assert await KeyLifecycleService(rotating).rewrap_all(actor="ops") == 2
    assert await KeyLifecycleService(rotating).rewrap_all(actor="ops") == 0

    # THEN the new master key alone opens them, and the old one no longer does
    new_only, old_only = runtime_with(new_master, []), runtime_with(old_master, [])
    with_new = KeyLifecycleService(new_only)
    assert with_new.open_secret(await with_new.get_key(first.key.id)) == first.secret
    with_old = KeyLifecycleService(old_only)
    with pytest.raises(DecryptionFailed):
        with_old.open_secret(await with_old.get_key(first.key.id))
    for runtime in (rotating, new_only, old_only):
        await runtime.database().close()
