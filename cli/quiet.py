"""Keeping TensorFlow's, CUDA's and absl's start-up noise out of the terminal (`-v` lets it through).

Loading TensorFlow prints a dozen lines that say nothing about the run ("oneDNN custom
operations are on", "Could not find cuda drivers", "failed call to cuInit", "This
TensorFlow binary is optimized to use ... AVX2"), from C++ before absl's logging is set
up, so no environment variable or Python logger silences them (TF_CPP_MIN_LOG_LEVEL=3
did not, measured with TensorFlow 2.21). They can only be dropped at the file
descriptor: `native_noise_filtered()` makes fd 2 a pipe and a thread copies every line
but those to the real stderr. Python's own warnings and the `tensorflow`/`absl` loggers
are turned down by `quiet_python_noise()`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# One line of absl/TensorFlow C++ logging ("I0000 00:00:1796125644.517759   20233 port.cc:153] ..."),
# except FATAL ones, and the fixed sentences that come with them.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)
NOISY_PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow_recommenders", "absl", "h5py")


def quiet_python_noise() -> None:
    """TensorFlow's Python warnings and its loggers' INFO/WARNING lines off (before it loads)."""
    # 2: C++ INFO and WARNING lines after absl's start-up (those before it: the filter below).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    pattern = "|".join(re.escape(p) for p in NOISY_PACKAGES)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")


def is_native_noise(line: bytes) -> bool:
    return NATIVE_NOISE.match(line.lstrip(b"\r")) is not None


@contextmanager
def native_noise_filtered() -> Iterator[None]:
    """While the block runs, fd 2 is a pipe whose lines, less `NATIVE_NOISE`, reach the
    real stderr. Child processes inherit the pipe; on exit fd 2 is the real stderr again
    and what is still in the pipe is copied out before the block returns."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    copier = threading.Thread(target=_copy_lines, args=(read_end, real), name="ebr-stderr-filter", daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last write end in this process closes: the copier sees EOF
        # Children that outlive the block (a Beam worker) may still hold the pipe open.
        copier.join(timeout=2.0)
        if not copier.is_alive():
            os.close(real)


def _copy_lines(read_end: int, real: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            # Lines end at "\n", and progress bars redraw at "\r": both are passed on at once.
            cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
            if not cut:
                continue
            out = b"".join(
                piece for piece in re.split(rb"(?<=[\r\n])", pending[:cut]) if piece and not is_native_noise(piece)
            )
            pending = pending[cut:]
            _write_all(real, out)
    if not is_native_noise(pending):
        _write_all(real, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
