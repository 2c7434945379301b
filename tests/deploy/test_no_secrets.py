"""Nothing under deploy/ holds a credential: the database URL lives in a Secret created out of band.
Placeholders such as ${DB_PASSWORD} or <password> are fine; the scanner is checked on samples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY

# Not a credential: a shell variable, a <placeholder>, or a switch (automountServiceAccountToken: false).
HARMLESS = re.compile(r"\$\{?\w+\}?|<[^>]*>|true|false", re.IGNORECASE)
PATTERNS = {
    "URL with a password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@]+:([^\s/@]+)@", re.IGNORECASE),
    "assigned secret": re.compile(
        r"\b\w*?(?:password|passwd|secret_key|secret|token|api_?key)\s*[:=]\s*[\"']?([^\s\"',]+)", re.IGNORECASE
    ),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----()"),
    "Secret object": re.compile(r"^kind:\s*Secret\s*$()", re.MULTILINE),
}


def leaks(text: str) -> list[str]:
    """What in ``text`` looks like a credential, placeholders aside."""
    found = []
    for what, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            if not (match.group(1) and HARMLESS.fullmatch(match.group(1))):
                found.append(f"{what}: {match.group(0)!r}")
    return found


def text_files(folder: Path) -> list[Path]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return [path for path in files if b"\0" not in path.read_bytes()[:1024]]


def test_deploy_holds_no_credentials():
    problems = {str(p.relative_to(DEPLOY)): found for p in text_files(DEPLOY) if (found := leaks(p.read_text()))}
    assert not problems, problems


@pytest.mark.parametrize(
    "sample",
    [
        "postgres://app:hunter2@db.internal:5432/app",
        "password: hunter2",
        "DB_PASSWORD='s3cr3t'",
        "-----BEGIN RSA PRIVATE KEY-----",
        "kind: Secret",
    ],
)
def test_the_scanner_finds_credentials(sample):
    assert leaks(sample)


@pytest.mark.parametrize(
    "sample",
    [
        "postgres://app:${DB_PASSWORD}@db.internal:5432/app",
        "postgres://app:<password>@db.internal:5432/app",
        "secretKeyRef:",
        "postgres://db.internal:5432/app",
        "automountServiceAccountToken: false",
    ],
)
def test_the_scanner_lets_placeholders_through(sample):
    assert not leaks(sample)
