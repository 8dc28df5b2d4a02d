"""keep_freed_memory: buffers allocated again after being freed stop page-faulting (glibc, Linux)."""

import subprocess
import sys

import pytest

from longformer.pipeline.allocator import LIBC

REPEATS = 16
PAGES = 64 * 2**20 // 4096  # in the 64 MiB tensor below

# Prints the minor page faults of allocating, filling and freeing a 64 MiB tensor REPEATS times, after as many times
# before: kept, freed memory settles into reuse after the heap has grown a few times (small allocations land in the
# freed block), how many depending on what the process allocated before.
COUNT_FAULTS = f"""
import resource, sys, torch
from longformer.pipeline.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range({REPEATS}):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({REPEATS}):
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", COUNT_FAULTS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(LIBC is None, reason="needs glibc")
def test_freed_memory_is_reused_without_page_faults():
    assert page_faults("default") > (REPEATS - 1) * PAGES  # a fresh mmap every time: all its pages fault again
    assert page_faults("keep") < PAGES  # the same heap memory every time
