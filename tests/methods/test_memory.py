"""Memory checks (m2ib.methods.memory): what a device can give, and the one-line refusal."""

from __future__ import annotations

import pytest
import torch

import m2ib.methods.memory as memory
from m2ib.errors import InputError


def test_memory_available_counts_the_page_cache_the_kernel_gives_back():
    """A fit that fits is not refused because the page cache holds memory: MemAvailable, not MemFree."""
    meminfo = "MemTotal:       24000000 kB\nMemFree:         2800000 kB\nMemAvailable:   10000000 kB\n"
    assert memory.meminfo_available(meminfo) == 10000000 * 1024
    assert memory.meminfo_available("MemFree: 1 kB\n") is None
    available = memory.memory_available(torch.device("cpu"))
    assert available is None or available > 0


def test_require_memory_refuses_on_one_line_only_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(memory, "memory_available", lambda device: 2 * memory.GIB)
    memory.require_memory(2 * memory.GIB, torch.device("cpu"), "this", "lower it")  # fits exactly
    with pytest.raises(InputError, match=r"^this needs about 3.0 GiB, more than the 2.0 GiB free on cpu: lower it$"):
        memory.require_memory(3 * memory.GIB, torch.device("cpu"), "this", "lower it")
    monkeypatch.setattr(memory, "memory_available", lambda device: None)  # cannot be asked: no refusal
    memory.require_memory(10**18, torch.device("cpu"), "this", "lower it")
