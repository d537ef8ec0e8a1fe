"""The lua guest's build (csrc/lua/build_lua.py): Lua's sources only from the pinned archive."""
from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "hlsandbox_build_lua", Path(__file__).resolve().parents[1] / "csrc" / "lua" / "build_lua.py")
build_lua = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_lua)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(build_lua, "CACHE", tmp_path / "cache")
    return tmp_path


def test_a_local_archive_with_the_wrong_hash_is_refused(empty_cache, monkeypatch):
    fake = empty_cache / build_lua.LUPA_SDIST
    fake.write_bytes(b"not lupa")
    monkeypatch.setenv("HLSANDBOX_LUA_SDIST", str(fake))
    with pytest.raises(build_lua.LuaSourceError, match="sha256 .* expected " + build_lua.LUPA_SHA256):
        build_lua.lua_source_dir()


def test_an_archive_without_the_sources_is_refused(empty_cache, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("lupa-2.6/README")
        tar.addfile(info, io.BytesIO(b""))
    fake = empty_cache / "fake.tar.gz"
    fake.write_bytes(buf.getvalue())
    monkeypatch.setattr(build_lua, "LUPA_SHA256", build_lua._sha256(fake))
    monkeypatch.setenv("HLSANDBOX_LUA_SDIST", str(fake))
    with pytest.raises(build_lua.LuaSourceError, match="does not contain"):
        build_lua.lua_source_dir()


def test_the_built_guest_has_no_lua_source_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    assert not list((root / "csrc").rglob("lvm.c")) and not list((root / "csrc").rglob("lua.h"))
