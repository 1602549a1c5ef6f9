"""A stand-in for PyTorch, just large enough to run tools/benches/peers/torch_peer.py on a machine
without a GPU (tools/tests/torch_peer.rs): tensors hold nothing, and a CUDA event pair reports a
time that grows with the launches queued between them, with a varying overhead so that the
repetitions of one figure differ. FAKE_TORCH_NO_GPU=1 makes torch.cuda.is_available() false."""

import contextlib
import os
import types

__version__ = "0.0-fake"
bfloat16, float16, float32, uint8 = "bfloat16", "float16", "float32", "uint8"
version = types.SimpleNamespace(cuda="13.0")
no_grad = contextlib.nullcontext

# Launches queued so far, and event records so far (for the varying overhead).
_queued = 0
_records = 0


class Tensor:
    """Any tensor: every operation the peer uses queues one launch and gives another tensor."""

    def _op(self, *_):
        global _queued
        _queued += 1
        return Tensor()

    __mul__ = __rmul__ = __add__ = __radd__ = __sub__ = __rsub__ = _op

    def to(self, dtype):
        return self._op()

    def copy_(self, other):
        self._op()
        return self

    def requires_grad_(self, flag):
        return self


def _tensor(*_, **__):
    return Tensor()._op()


rand = randint = empty_like = mm = _tensor


class Generator:
    def __init__(self, device):
        self.device = device

    def manual_seed(self, seed):
        self.seed = seed


def compile(fn, **options):
    return fn


class _Event:
    def __init__(self, enable_timing):
        assert enable_timing, "the peer times with events"
        self.at = None

    def record(self):
        global _records
        _records += 1
        # 10 us per launch, plus 0 to 6 us of overhead that varies from record to record.
        self.at = _queued * 10.0 + (_records * 7 % 13) * 0.5

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.at - self.at) / 1000.0  # milliseconds, as CUDA events report


cuda = types.SimpleNamespace(
    is_available=lambda: os.environ.get("FAKE_TORCH_NO_GPU") != "1",
    set_device=lambda device: None,
    Event=_Event,
    get_device_properties=lambda device: types.SimpleNamespace(
        name="Fake GPU", L2_cache_size=50 << 20),
    mem_get_info=lambda: (80 << 30, 80 << 30),
    empty_cache=lambda: None,
)
backends = types.SimpleNamespace(
    cuda=types.SimpleNamespace(matmul=types.SimpleNamespace()),
    cudnn=types.SimpleNamespace(),
)
autograd = types.SimpleNamespace(grad=lambda outputs, inputs, grad_outputs: _tensor())

from . import nn  # noqa: E402  (nn.functional uses Tensor, defined above)
