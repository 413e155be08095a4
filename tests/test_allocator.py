"""The CPU-training allocator hint: shown on glibc's malloc, silent once tcmalloc or jemalloc is preloaded."""

import sys

import pytest

from shitu.train.allocator import allocator_hint, preloaded_allocator

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is a Linux loader feature")


def test_preloaded_allocator_reads_ld_preload():
    assert preloaded_allocator({}) is None
    assert preloaded_allocator({"LD_PRELOAD": "/usr/lib/libfoo.so"}) is None
    library = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    assert preloaded_allocator({"LD_PRELOAD": f"/usr/lib/libfoo.so:{library}"}) == library
    assert preloaded_allocator({"LD_PRELOAD": "libjemalloc.so.2"}) == "libjemalloc.so.2"


@linux_only
def test_hint_only_without_a_preloaded_allocator():
    assert allocator_hint({"LD_PRELOAD": "/opt/libtcmalloc.so.4"}) is None
    hint = allocator_hint({})
    assert "tcmalloc" in hint and "LD_PRELOAD=" in hint and "bench/train_speed.py" in hint
