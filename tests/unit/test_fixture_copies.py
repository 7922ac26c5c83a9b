"""The fixtures in tests/fixtures are byte-for-byte copies of the team's shared originals.

The copies make a clone anywhere self-contained; this test catches a copy that drifted from the
original when the shared folder sits beside the checkout (it skips elsewhere: the copy is then all
there is to compare against).
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO

COPIES = {
    "hd-tron-vectors.json": "fixtures/hd-tron-vectors.json",
    "provider.json": "fixtures/provider.json",
    "tron-trx-transfer.json": "fixtures/tron-trx-transfer.json",
    "tron-usdt-transfer.json": "fixtures/tron-usdt-transfer.json",
    "contract.md": "docs/contract.md",
}
SHARED = REPO.parent / "shared"


@pytest.mark.parametrize("name", sorted(COPIES))
def test_copy_matches_the_shared_original(name: str) -> None:
    copy = REPO / "tests" / "fixtures" / name
    assert copy.is_file(), f"tests/fixtures/{name} is missing"
    original = SHARED / COPIES[name]
    if not original.is_file():
        pytest.skip(f"{original} not beside this checkout")
    assert copy.read_bytes() == original.read_bytes(), f"tests/fixtures/{name} differs from {original}"


def test_every_copied_file_is_listed() -> None:
    present = {p.name for p in (REPO / "tests" / "fixtures").iterdir() if p.suffix in (".json", ".md")}
    assert present - {"README.md"} == set(COPIES)
