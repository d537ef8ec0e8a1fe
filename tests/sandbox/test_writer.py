"""The writer of guest prints: checked when the sandbox is made, text or binary, and a
writer that raises says so."""
from __future__ import annotations

import io

import pytest

import hlsandbox as hl

from helpers import make_sandbox

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("writer", [42, "stdout", object()])
def test_a_writer_that_cannot_write_is_refused_when_the_sandbox_is_made(writer):
    with pytest.raises(TypeError, match="writer"):
        hl.UninitializedSandbox(hl.guests.path("simpleguest"), writer=writer)


def test_a_binary_writer_receives_bytes(tmp_path):
    buf = io.BytesIO()
    with make_sandbox(writer=buf) as sb:
        sb.call("PrintOutput", "héllo\n")
    assert buf.getvalue() == "héllo\n".encode()
    with open(tmp_path / "out", "wb") as f:
        with make_sandbox(writer=f) as sb:
            sb.call("PrintOutput", "to a file\n")
    assert (tmp_path / "out").read_bytes() == b"to a file\n"


def test_a_text_writer_and_a_callable_receive_str():
    buf = io.StringIO()
    got = []
    with make_sandbox(writer=buf) as sb:
        sb.call("PrintOutput", "text\n")
    with make_sandbox(writer=got.append) as sb:
        sb.call("PrintOutput", "called\n")
    assert buf.getvalue() == "text\n" and got == ["called\n"]


def test_a_writer_that_raises_says_so_and_leaves_the_sandbox_usable():
    def broken(text: str) -> None:
        raise OSError(28, "No space left on device")

    with make_sandbox(writer=broken) as sb:
        with pytest.raises(hl.WriterError, match="writer .* raised OSError") as ei:
            sb.call("PrintOutput", "lost\n")
        assert isinstance(ei.value.__cause__, OSError)
        assert not sb.poisoned
        assert sb.call("Add", 2, 2) == 4
