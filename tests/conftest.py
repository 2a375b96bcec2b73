"""Suite-wide guard: no test may leave torch's global default dtype changed for the tests after it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_default_dtype():
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    if after is not before:
        torch.set_default_dtype(before)
        pytest.fail(f"the test changed torch's default dtype from {before} to {after}")
