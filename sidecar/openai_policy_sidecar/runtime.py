"""What the process runs on (event loop, HTTP parser), and its tidy-up once it serves.

The fast paths are easy to lose without a sign: aiohttp falls back to its pure-Python parser
when its C extension is missing or AIOHTTP_NO_EXTENSIONS is set, and the sidecar runs on
asyncio's own loop when uvloop is absent. ``/metrics`` says which
(``openai_policy_sidecar_runtime_info``), and the tests check it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys

from aiohttp import http_parser


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def http_parser_name() -> str:
    """``c`` when aiohttp parses requests with its C extension (llhttp), else ``python``."""
    return "c" if http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser" else "python"


def settle_after_start() -> None:
    """Once everything the sidecar keeps for its life is loaded (policy, encodings, apps, pools).

    ``gc.freeze`` moves those objects out of the collector's reach: a full collection then scans
    what requests allocate, not the ~60,000 start-up objects again (a 15 ms pause each time, in
    the middle of streams). ``malloc_trim`` hands back to the kernel what loading freed (the
    tokenizer files' text and the intermediate tables), which glibc would otherwise keep.
    """
    gc.collect()
    gc.freeze()
    trim_malloc()


def trim_malloc() -> bool:
    """glibc's ``malloc_trim(0)``: freed heap back to the OS. False without glibc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
