"""Secret: values redacted everywhere except `reveal`."""

from __future__ import annotations

import logging

import pytest
from tai_common.core import NotFound
from tai_common.ports import Secret


def test_values_are_redacted_in_repr_str_and_formatting() -> None:
    secret = Secret.of("db", 3, {"password": "hunter2-plain"})
    for text in (repr(secret), str(secret), f"{secret}", f"{secret.data}", str(secret.data)):
        assert "hunter2-plain" not in text
    assert "db" in repr(secret)


def test_a_logged_secret_shows_no_value(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret.of("db", 3, {"password": "hunter2-plain"})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("loaded %s / %r", secret, secret)
    assert "hunter2-plain" not in caplog.text


def test_reveal_and_a_missing_key() -> None:
    secret = Secret.of("db", 1, {"password": "pw"})
    assert secret.reveal("password") == "pw"
    with pytest.raises(NotFound, match="db:user"):
        secret.reveal("user")


def test_data_is_read_only_and_secrets_compare_by_content() -> None:
    values = {"password": "pw"}
    secret = Secret.of("db", 1, values)
    values["password"] = "changed"
    assert secret.reveal("password") == "pw"
    with pytest.raises(TypeError):
        secret.data["password"] = secret.data["password"]  # type: ignore[index]
    assert secret == Secret.of("db", 1, {"password": "pw"})
    assert secret != Secret.of("db", 1, {"password": "other"})
