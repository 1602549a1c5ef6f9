"""torch.nn of the stand-in (tools/tests/fake_torch/torch/__init__.py)."""

from . import functional  # noqa: F401
