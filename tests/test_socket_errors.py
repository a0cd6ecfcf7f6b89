"""Errno names one way (issue 11, item 6): every refusal a socket, the stack,
ping or nc sees is an `emu.net.errors.SocketError`, an OSError carrying the
errno number, glibc's text and the name, never a string to parse."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

from emu.net import Namespace
from emu.net.errors import STRERROR, SocketError
from emu.net.tcp import TcpSocket
from emu.net.udp import UdpSocket, choose_ephemeral_port
from emu.sim import Scheduler
from emu.wire.addr import ip_from_str

ROOT = Path(__file__).resolve().parents[1] / "emu"
SCANNED = [ROOT / "net", ROOT / "flannel", ROOT / "api.py"]


def _sources() -> list[Path]:
    return sorted(file for place in SCANNED for file in ([place] if place.is_file() else place.rglob("*.py")))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
                found.append((path, node))
    return found


def test_nothing_builds_an_oserror_or_another_errno_carrier_by_hand():
    built = [f"{path.relative_to(ROOT)}:{call.lineno}" for path, call in _calls("OSError")]
    assert not built, f"raise SocketError(NAME) instead of OSError(...): {built}"
    assert not _calls("SendError"), "one exception class carries errnos: SocketError"


def test_every_errno_named_in_the_source_has_its_text():
    names = {call.args[0].value for _, call in _calls("SocketError")
             if call.args and isinstance(call.args[0], ast.Constant)}
    assert names and names <= set(STRERROR), names - set(STRERROR)
    for name, text in STRERROR.items():
        assert hasattr(errno, name), name
        assert SocketError(name).strerror == text


def test_a_socket_error_is_an_oserror_with_number_text_and_name():
    error = SocketError("EADDRINUSE", "port 5000 in box")
    assert isinstance(error, OSError)
    assert (error.errno, error.strerror, error.errno_name) == (errno.EADDRINUSE, "Address already in use",
                                                               "EADDRINUSE")
    assert str(error) == "EADDRINUSE: Address already in use (port 5000 in box)"
    with pytest.raises(ValueError, match="errno"):
        SocketError("ENOSUCHTHING")


def _box() -> Namespace:
    return Namespace(Scheduler(), "box", seed=3)


@pytest.mark.parametrize("make", [UdpSocket, TcpSocket])
def test_binding_a_taken_port_is_eaddrinuse(make):
    box = _box()
    make(box).bind(None, 5000)
    with pytest.raises(SocketError) as caught:
        make(box).bind(None, 5000)
    assert caught.value.errno == errno.EADDRINUSE


@pytest.mark.parametrize("make", [UdpSocket, TcpSocket])
def test_connecting_without_a_route_is_enetunreach(make):
    with pytest.raises(SocketError) as caught:
        make(_box()).connect((ip_from_str("10.9.9.9"), 80))
    assert caught.value.errno == errno.ENETUNREACH


def test_sending_without_a_route_is_enetunreach_from_the_stack():
    box = _box()
    with pytest.raises(SocketError) as caught:
        box.stack.send(ip_from_str("10.9.9.9"), 17, bytes(8))
    assert caught.value.errno_name == "ENETUNREACH"


def test_no_free_ephemeral_port_is_a_socket_error():
    box = _box()
    box.ip_local_port_range = (40000, 40000)
    with pytest.raises(SocketError, match="EADDRINUSE"):
        choose_ephemeral_port(box, {40000})
