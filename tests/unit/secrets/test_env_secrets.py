"""EnvSecrets: environment variables, mounted files (plain and Kubernetes' `..data` layout),
rotation of a file seen without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tai_common.core import FailedPrecondition, InvalidArgument, NotFound
from tai_common.env import EnvSecrets, env_prefix


async def test_reads_a_secret_from_environment_variables() -> None:
    source = EnvSecrets(
        environ={
            "TAI_SECRET_DB__PASSWORD": "env-pw-1",
            "TAI_SECRET_DB__USER": "tai",
            "TAI_SECRET_DB_REPLICA__PASSWORD": "other",  # another secret: db-replica
            "TAI_SECRET_DB__": "no key",
            "UNRELATED": "x",
        }
    )

    secret = await source.get("db")

    assert secret.name == "db"
    assert secret.version == 1
    assert secret.keys() == ["password", "user"]
    assert secret.reveal("password") == "env-pw-1"


def test_names_map_to_variable_prefixes() -> None:
    assert env_prefix("jwt-signing") == "TAI_SECRET_JWT_SIGNING__"
    assert env_prefix("jwt/signing.v2") == "TAI_SECRET_JWT_SIGNING_V2__"


async def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAI_SECRET_UNIT_TEST_ONLY__TOKEN", "from-os-environ")
    secret = await EnvSecrets.from_url("env://").get("unit-test-only")
    assert secret.reveal("token") == "from-os-environ"


async def test_reads_a_secret_from_a_mounted_directory(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "password").write_text("file-pw-1\n")  # as `echo` writes it
    (tmp_path / "db" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    source = EnvSecrets.from_url(f"env://?dir={tmp_path}")

    secret = await source.get("db")

    assert secret.keys() == ["ca.pem", "password"]
    assert secret.reveal("password") == "file-pw-1"
    assert secret.reveal("ca.pem") == "-----BEGIN CERTIFICATE-----\nMIIB"


async def test_a_rotated_file_is_seen_with_a_new_version(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    password = tmp_path / "db" / "password"
    password.write_text("before")
    source = EnvSecrets(tmp_path, environ={})

    first = await source.get("db")
    again = await source.get("db")
    password.write_text("after")
    rotated = await source.get("db")

    assert (first.version, again.version, rotated.version) == (1, 1, 2)
    assert rotated.reveal("password") == "after"


def _kubernetes_volume(root: Path, name: str, generation: str, values: dict[str, str]) -> None:
    """The layout the kubelet writes: `<name>/..<timestamp>/<key>` files, a `..data` symlink to
    the current timestamp folder, and `<key>` symlinks through `..data`."""
    folder = root / name
    folder.mkdir(exist_ok=True)
    snapshot = folder / f"..{generation}"
    snapshot.mkdir()
    for key, value in values.items():
        (snapshot / key).write_text(value)
        link = folder / key
        if not link.is_symlink():
            link.symlink_to(Path("..data") / key)
    # The kubelet's atomic swap: a new symlink renamed over the old one.
    staging = folder / "..data_tmp"
    staging.symlink_to(snapshot.name)
    os.replace(staging, folder / "..data")


async def test_a_kubernetes_secret_volume_and_its_atomic_rotation(tmp_path: Path) -> None:
    _kubernetes_volume(tmp_path, "jwt", "2024_01_01", {"private": "key-1", "kid": "k1"})
    source = EnvSecrets(tmp_path, environ={})

    before = await source.get("jwt")
    assert before.keys() == ["kid", "private"]  # the `..` bookkeeping entries are not keys
    assert (before.reveal("kid"), before.reveal("private")) == ("k1", "key-1")

    _kubernetes_volume(tmp_path, "jwt", "2024_02_01", {"private": "key-2", "kid": "k2"})
    after = await source.get("jwt")

    assert after.version == before.version + 1
    assert (after.reveal("kid"), after.reveal("private")) == ("k2", "key-2")


async def test_a_directory_wins_over_variables_so_a_rotation_is_never_shadowed(
    tmp_path: Path,
) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "password").write_text("from-file")
    source = EnvSecrets(tmp_path, environ={"TAI_SECRET_DB__PASSWORD": "stale-from-env"})

    secret = await source.get("db")

    assert secret.keys() == ["password"]
    assert secret.reveal("password") == "from-file"


async def test_variables_are_used_when_the_secret_has_no_directory(tmp_path: Path) -> None:
    source = EnvSecrets(tmp_path, environ={"TAI_SECRET_API__KEY": "from-env"})
    assert (await source.get("api")).reveal("key") == "from-env"


async def test_a_missing_secret_is_not_found(tmp_path: Path) -> None:
    source = EnvSecrets(tmp_path, environ={})
    with pytest.raises(NotFound) as missing:
        await source.get("absent")
    assert missing.value.resource_id == "absent"


@pytest.mark.parametrize("name", ["", "../etc", "a/../b", ".hidden", "a//b", "a b", "/abs"])
async def test_names_that_could_escape_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        await EnvSecrets(tmp_path, environ={}).get(name)


async def test_a_nested_name_reads_a_nested_folder(tmp_path: Path) -> None:
    (tmp_path / "jwt" / "signing").mkdir(parents=True)
    (tmp_path / "jwt" / "signing" / "kid").write_text("k7")
    assert (await EnvSecrets(tmp_path, environ={}).get("jwt/signing")).reveal("kid") == "k7"


async def test_a_binary_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "blob").write_bytes(b"\xff\xfesecret-bytes")
    with pytest.raises(FailedPrecondition) as refused:
        await EnvSecrets(tmp_path, environ={}).get("bin")
    assert "not UTF-8" in str(refused.value)
    assert refused.value.__context__ is None  # the decode error (which quotes a byte) is gone


@pytest.mark.parametrize("url", ["env:///var/secrets", "file://x", "env://host", "vault://x"])
def test_urls_other_than_env_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="env"):
        EnvSecrets.from_url(url)


def test_the_source_repr_shows_no_value() -> None:
    source = EnvSecrets(Path("/mnt"), environ={"TAI_SECRET_DB__PASSWORD": "hidden-1"})
    assert "hidden-1" not in repr(source)
