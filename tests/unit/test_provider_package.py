"""The shape of sweeper.provider: callback verification loads no HTTP client."""

from __future__ import annotations

import subprocess
import sys


def test_callbacks_import_no_http_client() -> None:
    code = "import sweeper.provider.callbacks, sys; print('httpx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
