"""ntpy's ctypes ``struct timex`` and constants against the real C header (needs gcc).

A tiny C program prints sizeof/offsetof of every field and the ADJ_/STA_/TIME_ values;
nothing in it calls adjtimex.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
from clockfakes import IS_LP64, TIMEX_LP64, TIMEX_LP64_SIZE

from ntpy.clock import timex as tx

FIELDS = [name for name, _ in tx.Timex._fields_ if not name.startswith("_")]
CONSTANTS = [
    name
    for name in dir(tx)
    if name.startswith(("ADJ_", "STA_", "TIME_")) and isinstance(getattr(tx, name), int)
]

C_SOURCE = """
#include <stdio.h>
#include <stddef.h>
#include <sys/timex.h>
#define F(f) printf("field %s %zu %zu\\n", #f, offsetof(struct timex, f), \\
                    sizeof(((struct timex *)0)->f))
#define C(c) printf("const %s %ld\\n", #c, (long)(c))
int main(void) {
    printf("size %zu\\n", sizeof(struct timex));
    FIELDS
    CONSTS
    return 0;
}
"""


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, ...]]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to read <sys/timex.h> with")
    src = C_SOURCE.replace("FIELDS", " ".join(f"F({f});" for f in FIELDS)).replace(
        "CONSTS", " ".join(f"C({c});" for c in CONSTANTS)
    )
    work: Path = tmp_path_factory.mktemp("timex")
    (work / "t.c").write_text(src)
    subprocess.run([gcc, "-o", str(work / "t"), str(work / "t.c")], check=True, timeout=60)
    out = subprocess.run([str(work / "t")], check=True, capture_output=True, text=True).stdout
    facts: dict[str, tuple[int, ...]] = {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            facts["size"] = (int(rest[0]),)
        else:
            facts[f"{kind}:{rest[0]}"] = tuple(int(v) for v in rest[1:])
    return facts


def test_sizeof_matches_header(header_facts: dict[str, tuple[int, ...]]) -> None:
    assert ctypes.sizeof(tx.Timex) == header_facts["size"][0]


@pytest.mark.parametrize("field", FIELDS)
def test_field_offset_and_size_match_header(
    field: str, header_facts: dict[str, tuple[int, ...]]
) -> None:
    descr = getattr(tx.Timex, field)
    assert (descr.offset, descr.size) == header_facts[f"field:{field}"]


@pytest.mark.parametrize("name", CONSTANTS)
def test_constant_matches_header(name: str, header_facts: dict[str, tuple[int, ...]]) -> None:
    assert getattr(tx, name) == header_facts[f"const:{name}"][0]


@pytest.mark.skipif(not IS_LP64, reason="LP64 table")
def test_fake_libc_decoder_agrees_with_ctypes_layout() -> None:
    # The fake libc decodes with its own hand-written table; make sure it is the layout.
    assert ctypes.sizeof(tx.Timex) == TIMEX_LP64_SIZE
    for name, (off, _) in TIMEX_LP64.items():
        if name in ("tv_sec", "tv_usec"):
            assert tx.Timex.time.offset + getattr(tx.Timeval, name).offset == off
        else:
            assert getattr(tx.Timex, name).offset == off


def test_conversions() -> None:
    assert tx.ppb_to_timex_freq(1000.0) == 65536
    assert tx.timex_freq_to_ppb(-65536) == -1000.0
    assert tx.ns_to_setoffset_time(-1) == (-1, 999_999_999)
    with pytest.raises(ValueError):
        tx.ppb_to_timex_freq(float("nan"))
