"""The one place that touches the ``iroh`` bindings' sharp edges (uniffi-generated, ctypes).

* :func:`load` imports the optional ``iroh`` package (extra ``switchy-p2p[iroh]``) or raises
  :class:`~switchy.stack.errors.FeatureNotSupported` naming the extra;
* :func:`register_loop` hands the running event loop to the bindings
  (``uniffi_set_event_loop``): callbacks from Rust threads need it, and it must follow the
  loop when a process runs several loops one after the other (tests);
  :func:`release_loop` hands it back once our endpoints are closed (the setting is global
  and would otherwise pin later users of the bindings to a finished loop);
* :func:`map_error` turns an ``IrohError`` (whose ``str()`` is empty) into our error
  hierarchy with its kind and message;
* :func:`write_all` sends bytes without the bindings' byte-at-a-time copy: their
  ``bytes`` lowering (``_UniffiRustBufferBuilder.write``) stores every byte through a
  Python loop (about 7 MB/s per core here), so a stream could never go faster than that.
  We build the same uniffi buffer (4-byte big-endian length, then the bytes) with one
  ``ctypes.memmove`` and call the same FFI function.  The generated module is not changed
  on disk; the fast path is only taken when every private name it needs exists and
  :func:`fast_write_available` says so (else the library's own ``write_all``);
* :func:`track` / :func:`close_all` keep every endpoint we bound, so node close and
  interpreter exit close them (an endpoint left alive at exit is what the issue warns
  about).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import struct
import weakref
from typing import TYPE_CHECKING, Any, Final

from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    FeatureNotSupported,
    InvalidConfiguration,
    InvalidPeerId,
    NegotiationFailed,
    NetworkError,
    P2PError,
    P2PTimeout,
    StreamReset,
)

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "EXIT_CLOSE_TIMEOUT",
    "close_all",
    "fast_write_available",
    "iroh_available",
    "load",
    "map_error",
    "register_loop",
    "release_loop",
    "track",
    "write_all",
]

log = logging.getLogger(__name__)

#: Longest the interpreter-exit hook waits for the endpoints still open to close (seconds).
EXIT_CLOSE_TIMEOUT: Final = 2.0

_module: ModuleType | None = None
_registered: asyncio.AbstractEventLoop | None = None
_endpoints: weakref.WeakSet[Any] = weakref.WeakSet()
_fast: bool | None = None


def load() -> ModuleType:
    """The ``iroh`` bindings; :class:`FeatureNotSupported` (naming the extra) without them."""
    global _module
    if _module is None:
        try:
            import iroh  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError as exc:
            raise FeatureNotSupported(
                f"the iroh transport needs the 'iroh' package: pip install "
                f"'switchy-p2p[iroh]' ({exc})"
            ) from None
        _module = iroh
        atexit.register(_close_at_exit)
    return _module


def iroh_available() -> bool:
    """Whether the ``iroh`` bindings import here."""
    try:
        load()
    except FeatureNotSupported:
        return False
    return True


def register_loop() -> None:
    """Hand the running loop to the bindings (again, if it changed since the last call)."""
    global _registered
    loop = asyncio.get_running_loop()
    if _registered is not loop:
        load().iroh_ffi.uniffi_set_event_loop(loop)
        _registered = loop


def release_loop() -> None:
    """Undo :func:`register_loop` once no endpoint we bound is open, so that later uses of
    the bindings (another loop, the ``iroh`` package used directly) get their running loop."""
    global _registered
    if _registered is not None and all(ep.is_closed() for ep in list(_endpoints)):
        load().iroh_ffi.uniffi_set_event_loop(None)
        _registered = None


def map_error(exc: BaseException, doing: str) -> P2PError:
    """Our error for ``exc`` (an ``IrohError`` or the bindings' ``InternalError``).

    The kind picks the class (CONNECT/BIND: ConnectionFailed, TIMEOUT: P2PTimeout, STREAM:
    StreamReset, CONNECTION/CLOSED: ConnectionClosed, ALPN: NegotiationFailed, KEY_PARSING:
    InvalidPeerId, INVALID_INPUT: InvalidConfiguration); the message is ``doing``, the kind
    and iroh's own message.  The original stays ``__cause__``.
    """
    if isinstance(exc, P2PError):
        return exc
    iroh = load()
    kind_name = "INTERNAL"
    message = str(exc)
    if isinstance(exc, iroh.IrohError):
        try:
            kind_name = exc.kind().name
            message = exc.message()
        except Exception:  # the error object itself failed to answer: keep what we have
            message = message or type(exc).__name__
    text = f"{doing}: iroh {kind_name.lower()} error: {message or 'no message'}"
    cls: type[P2PError] = {
        "INVALID_INPUT": InvalidConfiguration,
        "BIND": ConnectionFailed,
        "CONNECT": ConnectionFailed,
        "CONNECTION": ConnectionClosed,
        "CLOSED": ConnectionClosed,
        "STREAM": StreamReset,
        "ALPN": NegotiationFailed,
        "KEY_PARSING": InvalidPeerId,
        "TICKET_PARSING": InvalidConfiguration,
        "TIMEOUT": P2PTimeout,
        "RELAY": ConnectionFailed,
        "CALLBACK": NetworkError,
        "DATAGRAM": NetworkError,
        "INTERNAL": NetworkError,
    }.get(kind_name, NetworkError)
    if kind_name == "CONNECT" and "crypto" in message.lower():
        cls = AuthenticationFailed
    err = cls(text)
    err.__cause__ = exc
    #: the iroh kind's name, for callers that branch on it
    err.iroh_kind = kind_name  # type: ignore[attr-defined]
    return err


# --- fast outgoing bytes ----------------------------------------------------------------------

_FAST_NAMES: Final = (
    "_UniffiRustBuffer",
    "_UniffiLib",
    "_uniffi_rust_call_async",
    "_UniffiFfiConverterTypeIrohError__as_error",
)


def fast_write_available() -> bool:
    """Whether :func:`write_all` can lower bytes itself (the private names it uses exist)."""
    global _fast
    if _fast is None:
        ffi = load().iroh_ffi
        lib = getattr(ffi, "_UniffiLib", None)
        _fast = all(hasattr(ffi, n) for n in _FAST_NAMES) and all(
            hasattr(lib, n)
            for n in (
                "uniffi_iroh_ffi_fn_method_sendstream_write_all",
                "ffi_iroh_ffi_rust_future_poll_void",
                "ffi_iroh_ffi_rust_future_complete_void",
                "ffi_iroh_ffi_rust_future_free_void",
            )
        )
    return _fast


def lower_bytes(data: bytes) -> Any:
    """The uniffi buffer of ``data`` (i32 big-endian length + bytes) made with one memmove."""
    ffi = load().iroh_ffi
    n = len(data)
    rbuf = ffi._UniffiRustBuffer.alloc(n + 4)
    base = ctypes.cast(rbuf.data, ctypes.c_void_p).value
    assert base is not None
    ctypes.memmove(base, struct.pack(">i", n), 4)
    if n:
        ctypes.memmove(base + 4, data, n)
    rbuf.len = n + 4
    return rbuf


async def write_all(send: Any, data: bytes) -> None:
    """``send.write_all(data)`` without the per-byte copy (see the module docstring)."""
    if not fast_write_available():
        await send.write_all(data)
        return
    ffi = load().iroh_ffi
    lib = ffi._UniffiLib
    handle = send._uniffi_clone_handle()
    await ffi._uniffi_rust_call_async(
        lib.uniffi_iroh_ffi_fn_method_sendstream_write_all(handle, lower_bytes(data)),
        lib.ffi_iroh_ffi_rust_future_poll_void,
        lib.ffi_iroh_ffi_rust_future_complete_void,
        lib.ffi_iroh_ffi_rust_future_free_void,
        lambda _val: None,
        ffi._UniffiFfiConverterTypeIrohError__as_error,
    )


# --- endpoints' lifetime ------------------------------------------------------------------------


def track(endpoint: Any) -> None:
    """Remember ``endpoint`` so :func:`close_all` (and interpreter exit) closes it."""
    _endpoints.add(endpoint)


async def close_all() -> None:
    """Close every endpoint still open (what the interpreter-exit hook runs)."""
    for ep in list(_endpoints):
        with contextlib.suppress(Exception):
            if not ep.is_closed():
                await ep.close()


def _close_at_exit() -> None:
    if not any(not ep.is_closed() for ep in list(_endpoints)):
        return

    async def run() -> None:
        register_loop()
        async with asyncio.timeout(EXIT_CLOSE_TIMEOUT):
            await close_all()

    try:
        asyncio.run(run())
    except Exception as exc:  # at exit: report, never raise
        log.warning("closing iroh endpoints at exit failed: %r", exc)
    release_loop()
