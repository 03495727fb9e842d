"""The embedding service lets PyTorch's OpenMP threads sleep after each encode (OMP_WAIT_POLICY=PASSIVE),
set before torch is loaded, unless the environment says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, sys; import embedding.__main__; print(os.environ.get('OMP_WAIT_POLICY')); print('torch' in sys.modules)"
)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_wait_policy_is_set_before_torch_loads(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    policy, torch_loaded = out.stdout.split()
    assert policy == expected
    # libgomp reads the variable when torch loads it: importing the service's entry point must not have.
    assert torch_loaded == "False"
