"""torch.nn.functional of the stand-in: each function queues one launch."""

from torch import _tensor


def linear(x, w, b=None):
    return _tensor()


def relu(x):
    return _tensor()


def dropout(x, p, training):
    return _tensor()
