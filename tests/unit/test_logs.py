from __future__ import annotations

import io
import json
import logging

import structlog

from sweeper.logs import configure_logging


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_off_a_tty_with_secrets_masked_everywhere() -> None:
    stream = io.StringIO()
    configure_logging(secrets=["s3cr3t-value", "abandon abandon about"], stream=stream)
    structlog.get_logger("sweeper.test").info(
        "order", body="x s3cr3t-value y", nested={"k": ["s3cr3t-value"]}
    )
    logging.getLogger("httpx").warning("sent header %s", "s3cr3t-value")  # a stdlib library's logger
    try:
        raise RuntimeError("failed with abandon abandon about")
    except RuntimeError:
        structlog.get_logger("sweeper.test").exception("boom")
    text = stream.getvalue()
    assert "s3cr3t-value" not in text and "abandon abandon about" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert (
        lines[0]["event"] == "order"
        and lines[0]["body"] == "x *** y"
        and lines[0]["nested"] == {"k": ["***"]}
    )
    assert lines[1]["logger"] == "httpx" and lines[1]["event"] == "sent header ***"
    assert "***" in lines[2]["exception"]


def test_console_on_a_tty() -> None:
    stream = Tty()
    configure_logging(secrets=["s3cr3t-value"], stream=stream)
    structlog.get_logger("sweeper.test").info("hello", token="s3cr3t-value")
    text = stream.getvalue()
    assert "hello" in text and "s3cr3t-value" not in text
    assert not text.lstrip().startswith("{")


def teardown_module() -> None:
    configure_logging()
