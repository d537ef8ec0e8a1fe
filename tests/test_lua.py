"""hl.LuaSandbox: Lua 5.4 in a micro-VM (hlsandbox/lua.py, csrc/lua/luaguest.c), hostile scripts included."""
from __future__ import annotations

import pickle
import threading
import time

import pytest

import hlsandbox as hl
from hlsandbox.lua import _Decoder, _encode

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def lua():
    tools = {"add": lambda a, b: a + b, "echo": lambda *a: list(a), "boom": lambda: 1 / 0,
             "nothing": lambda: None, "bad": lambda: object()}
    with hl.LuaSandbox(tools=tools) as sb:
        yield sb


@pytest.fixture(scope="module")
def small():
    """A small heap, so memory bombs hit the limit fast."""
    with hl.LuaSandbox(heap_size="4Mi") as sb:
        yield sb


# -- values and output ----------------------------------------------------------------------------

def test_values_convert(lua):
    r = lua.run("return nil, true, false, 42, -7, 2.5, 'héllo', {1, 2, 3}, {a = 1, [2] = 'x'}, {}, 'a\\0b'")
    assert r.values == [None, True, False, 42, -7, 2.5, "héllo", [1, 2, 3], {"a": 1, 2: "x"}, {}, "a\0b"]
    assert isinstance(r.values[3], int) and isinstance(r.values[5], float)
    assert r.value is None and r.stdout == "" and r.elapsed > 0


def test_non_utf8_string_is_bytes_and_big_integers(lua):
    assert lua.run("return '\\xff\\xfe', math.maxinteger, math.mininteger, 2^63").values == \
        [b"\xff\xfe", 2**63 - 1, -2**63, 2.0**63]


def test_a_table_with_holes_is_a_dict(lua):
    assert lua.run("return {1, nil, 3, x = 1}").value == {1: 1, 3: 3, "x": 1}
    assert lua.run("local t = {1, 2, 3} t[2] = nil return t").value == {1: 1, 3: 3}


def test_nested_tables(lua):
    assert lua.run("return {list = {1, {2, {3}}}, map = {k = {v = true}}}").value == \
        {"list": [1, [2, [3]]], "map": {"k": {"v": True}}}


def test_print_goes_to_stdout(lua):
    r = lua.run("print('a', 1, nil, true, 1.5) print() return 'done'")
    assert r.stdout == "a\t1\tnil\ttrue\t1.5\n\n" and r.values == ["done"]


def test_long_output_is_flushed_through_the_host(lua):
    r = lua.run("for i = 1, 5000 do print(i) end")
    assert r.stdout == "".join(f"{i}\n" for i in range(1, 5001))


def test_output_limit():
    with hl.LuaSandbox(max_output=10_000) as sb:
        with pytest.raises(hl.LuaError, match="output limit"):
            sb.run("while true do print(string.rep('x', 1000)) end", timeout=10)
        assert sb.run("print('ok')").stdout == "ok\n"


def test_result_too_large_is_a_lua_error(lua):
    with pytest.raises(hl.LuaError, match="too large") as e:
        lua.run("return string.rep('x', 200000)")
    assert e.value.kind == "conversion"
    assert lua.run("return 1").value == 1


def test_unconvertible_values(lua):
    for code in ("return print", "return coroutine.create(print)", "local t = {} t.t = t return t"):
        with pytest.raises(hl.LuaError):
            lua.run(code)
    assert lua.run("return 1").value == 1


def test_strings_numbers_and_libraries_work(lua):
    r = lua.run("""
        return 'a' < 'b', tonumber('1.5x'), tonumber('1e400'), tonumber('0x10'), string.format('%5.2f|%d|%s', 3.14159, 7, 'x'),
               ('hello'):upper(), table.concat({1, 2, 3}, ','), utf8.char(233), math.floor(3.7), #'abc',
               select('#', string.find('hello world', 'o w')), coroutine.wrap(function() coroutine.yield(5) end)()
    """)
    assert r.values == [True, None, float("inf"), 16, " 3.14|7|x", "HELLO", "1,2,3", "é", 3, 3, 2, 5]


def test_sort_and_gsub(lua):
    code = "local t = {} for i = 1, 1000 do t[i] = (i * 7919) % 1000 end table.sort(t) return t[1], t[1000], ('abc'):gsub('%w', '%0%0')"
    assert lua.run(code).values == [0, 999, "aabbcc", 3]


def test_random_differs_between_fresh_runs(lua):
    draws = {lua.run("return math.random(1, 1 << 40)").value for _ in range(5)}
    assert len(draws) > 1


def test_os_time_and_clock_come_from_the_host(lua):
    now = time.time()
    t, c, d = lua.run("local c0 = os.clock() for i = 1, 1e5 do end return os.time(), os.clock() - c0, os.difftime(5, 2)").values
    assert abs(t - now) < 60 and c >= 0 and d == 3.0


# -- errors -----------------------------------------------------------------------------------------

def test_runtime_error_has_message_and_traceback(lua):
    with pytest.raises(hl.LuaError) as e:
        lua.run("print('before')\nlocal function f() error('boom') end\nf()")
    assert e.value.message == "script:2: boom" and e.value.kind == "runtime"
    assert "stack traceback" in e.value.traceback and "in local 'f'" in e.value.traceback
    assert e.value.stdout == "before\n"
    assert pickle.loads(pickle.dumps(e.value)).message == "script:2: boom"


def test_error_with_a_table_value(lua):
    with pytest.raises(hl.LuaError, match="error object is a table"):
        lua.run("error({code = 1})")


def test_syntax_error_says_so_with_the_line(lua):
    with pytest.raises(hl.LuaSyntaxError) as e:
        lua.run("local x = 1\nlocal y = = 2")
    assert str(e.value).startswith("syntax error: script:2:") and e.value.line == 2 and e.value.kind == "syntax"
    assert isinstance(e.value, hl.LuaError)


def test_script_too_large_for_the_input_buffer(lua):
    with pytest.raises(ValueError, match="input_data_size"):
        lua.run("-- " + "x" * 100_000)


# -- tools --------------------------------------------------------------------------------------------

def test_tools_convert_both_ways(lua):
    r = lua.run("return tools.add(2, 3), tools.echo(1, 'a', {k = 2}, {1, 2}, 2.5), tools.nothing(), type(tools.add)")
    assert r.values == [5, [1, "a", {"k": 2}, [1, 2], 2.5], None, "function"]
    # nil arguments arrive as None; a Lua table with a hole is a dict
    assert lua.run("return tools.echo(1, nil, 3)").value == {1: 1, 3: 3}


def test_a_tool_that_raises_is_a_lua_error_pcall_catches(lua):
    ok, msg = lua.run("return pcall(tools.boom)").values
    assert ok is False and "ZeroDivisionError" in msg
    with pytest.raises(hl.LuaError, match="ZeroDivisionError") as e:
        lua.run("tools.boom()")
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    with pytest.raises(hl.LuaError, match="cannot hold"):
        lua.run("return tools.bad()")


def test_tool_values_too_large_for_the_buffers_are_lua_errors():
    with hl.LuaSandbox(tools={"size": lambda s: len(s), "big": lambda: "y" * 200_000}) as sb:
        with pytest.raises(hl.LuaError, match="does not fit|too large"):
            sb.run("return tools.size(string.rep('x', 100000))")
        assert sb.run("return pcall(tools.big)").values[0] is False
        assert sb.run("return tools.size(string.rep('x', 60000))").value == 60_000


def test_unknown_tool_is_nil(lua):
    assert lua.run("return tools.nope").value is None
    with pytest.raises(hl.LuaError, match="nope"):
        lua.run("return tools.nope()")


def test_bad_tools_are_refused():
    with pytest.raises(ValueError):
        hl.LuaSandbox(tools={"not an identifier": print})
    with pytest.raises(ValueError):
        hl.LuaSandbox(tools={"x": 42})


# -- fresh and persistent state -----------------------------------------------------------------------

def test_fresh_runs_forget_globals(lua):
    lua.run("x = 41; string.upper = nil")
    assert lua.run("return x, type(string.upper)").values == [None, "function"]


def test_persistent_globals_until_reset():
    with hl.LuaSandbox(fresh=False) as sb:
        sb.run("x = 41")
        assert sb.run("x = x + 1 return x").value == 42
        sb.reset()
        assert sb.run("return x").value is None


def test_persistent_state_survives_errors_and_oom():
    with hl.LuaSandbox(fresh=False, heap_size="4Mi") as sb:
        sb.run("keep = 'me'")
        with pytest.raises(hl.LuaError, match="not enough memory"):
            sb.run("local t = {} while true do t[#t + 1] = {} end")
        with pytest.raises(hl.LuaError):
            sb.run("error('x')")
        assert sb.run("return keep").value == "me"


# -- time limits and kill ------------------------------------------------------------------------------

def test_infinite_loop_times_out_and_the_next_run_works(lua):
    with pytest.raises(hl.ExecutionTimeout):
        lua.run("while true do end", timeout=0.2)
    assert lua.run("return 1 + 1").value == 2


def test_kill_from_another_thread(lua):
    threading.Timer(0.2, lua.kill).start()
    with pytest.raises(hl.ExecutionCanceled):
        lua.run("local i = 0 while true do i = i + 1 end", timeout=30)
    assert lua.run("return 'alive'").value == "alive"


def test_timeout_resets_persistent_state():
    with hl.LuaSandbox(fresh=False) as sb:
        sb.run("x = 1")
        with pytest.raises(hl.ExecutionTimeout):
            sb.run("while true do end", timeout=0.2)
        assert sb.run("return x").value is None  # documented: back to the state after start-up


# -- hostile scripts -------------------------------------------------------------------------------------

HOSTILE_MEMORY = [
    "local t = {} for i = 1, 1e9 do t[i] = i end",
    "local s = 'x' while true do s = s .. s end",
    "local t = {} for i = 1, 1e9 do t[i] = string.rep('y', 1000) .. i end",
    "local t = {} setmetatable(t, {__index = function(t, k) t[k] = {} return t[k] end}) for i = 1, 1e9 do local _ = t[i] end",
    "local cos = {} for i = 1, 1e9 do cos[i] = coroutine.create(function() coroutine.yield() end) coroutine.resume(cos[i]) end",
    "return string.rep('x', 1 << 40)",
    "local t = {} t[1 << 40] = 1 for i = 1, 1e9 do t[i * 1.5] = i end",
]


@pytest.mark.parametrize("code", HOSTILE_MEMORY)
def test_memory_bombs_are_not_enough_memory(small, code):
    with pytest.raises(hl.LuaError) as e:
        small.run(code, timeout=60)
    assert "not enough memory" in str(e.value) or "too large" in str(e.value)
    assert small.run("return 1 + 1").value == 2


def test_string_rep_bombs(small):
    for code in ("return string.rep('x', 1e10)", "return string.rep('abc', math.maxinteger)",
                 "return string.rep('x', 1e7, string.rep('y', 1e7))"):
        with pytest.raises(hl.LuaError, match="too large|not enough memory"):
            small.run(code)
    assert small.run("return #string.rep('x', 1000)").value == 1000


@pytest.mark.parametrize("code,match", [
    ("local function f() return 1 + f() end return f()", "stack overflow|not enough memory"),
    ("local function f() return f() + 1 end return f()", "stack overflow|not enough memory"),
    ("local t = setmetatable({}, {}) getmetatable(t).__index = t return t.x", "loop|stack overflow"),
    ("local function f() return string.gsub('x', 'x', f) end return f()", "stack overflow"),
    ("local function f() return pcall(f) end return f()", None),
    ("local co co = coroutine.wrap(function() return co() end) return co()", "cannot resume|stack overflow"),
    ("local function f() local co = coroutine.wrap(f) return co() end return f()", "stack overflow|C stack"),
    ("return assert(load(string.rep('(', 10000) .. '1' .. string.rep(')', 10000)))()", "overflow|C levels|memory"),
    ("return " + "{" * 1000 + "}" * 1000, "overflow|C levels|too deep|memory|nested deeper"),
    ("local t = {} for i = 1, 300 do t = {t} end return t", "nested deeper"),
    ("local s = setmetatable({}, {__tostring = function(s) return tostring(s) end}) return tostring(s)", "stack overflow"),
    ("local t = setmetatable({}, {__gc = function() while true do end end}) t = nil collectgarbage()", "__gc|timeout"),
])
def test_deep_recursion_and_metatable_tricks(lua, code, match):
    try:
        lua.run(code, timeout=5)
    except hl.LuaError as e:
        if match:
            assert any(m in str(e) for m in match.split("|")), str(e)
    except hl.ExecutionTimeout:
        assert match and "timeout" in match
    assert lua.run("return 1 + 1").value == 2


def test_coroutine_bomb(small):
    with pytest.raises(hl.LuaError, match="not enough memory"):
        small.run("local t = {} while true do t[#t + 1] = coroutine.create(function() end) end", timeout=60)
    r = small.run("local n = 0 for i = 1, 1000 do local co = coroutine.wrap(function(a) n = n + coroutine.yield(a) end) co(i) co(1) end return n")
    assert r.value == 1000


def test_binary_chunks_are_refused(lua):
    ok, msg = lua.run("return load(string.char(27) .. 'Lua\\x54\\0garbage')").values
    assert ok is None and "binary chunk" in msg
    ok, msg = lua.run("return load(string.char(27) .. 'Lua\x54\0garbage', 'c', 'b')").values  # asking for 'b' is no help
    assert ok is None and "binary chunk" in msg
    with pytest.raises(hl.LuaSyntaxError):
        lua.run(b"\x1bLua\x54\x00")
    assert lua.run("return string.dump").value is None


def test_load_of_text_keeps_its_env_argument(lua):
    assert lua.run("return load('return x', 'c', 't', {x = 7})()").value == 7
    assert lua.run("x = 3 return load('return x')()").value == 3
    assert lua.run("return load(coroutine.wrap(function() coroutine.yield('return ') coroutine.yield('9') end))()").value == 9


def test_the_host_is_out_of_reach(lua):
    r = lua.run("""
        return io, package, debug, require, dofile, loadfile, os.execute, os.exit, os.getenv, os.remove,
               os.rename, os.tmpname, collectgarbage('count') > 0, string.dump
    """)
    assert r.values[:12] == [None] * 12 and r.values[12] is True and r.values[13] is None
    assert sorted(lua.run("local k = {} for n in pairs(os) do k[#k + 1] = n end return k").value) == \
        ["clock", "difftime", "time"]
    with pytest.raises(hl.LuaError):
        lua.run("return os.time({year = 2000, month = 1, day = 1})")


def test_getmetatable_of_strings_cannot_break_the_next_run(lua):
    lua.run("getmetatable('').__index = function() error('hijacked') end")
    assert lua.run("return ('x'):upper()").value == "X"


def test_oom_is_never_a_fault(small):
    for _ in range(3):
        with pytest.raises(hl.LuaError, match="not enough memory"):
            small.run("local t = {} while true do t[#t + 1] = string.rep('z', 4096) .. #t end", timeout=60)
    assert small.run("return 'ok'").value == "ok"


# -- the value format ----------------------------------------------------------------------------------

def test_encoder_decoder_round_trip():
    for v in [None, True, False, 0, -1, 2**63 - 1, 1.5, "x", "", [1, [2]], {"a": {"b": [None, 1]}}]:
        buf = bytearray()
        _encode(v, buf)
        assert _Decoder(bytes(buf)).value() == v
    with pytest.raises(ValueError):
        _encode(2**64, bytearray())
    with pytest.raises(TypeError):
        _encode(object(), bytearray())
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested"):
        _encode(loop, bytearray())


@pytest.mark.parametrize("data", [b"", b"\x05\xff\xff\xff\xff", b"\x06\xff\xff\xff\x7f", b"\x09", b"\x03\x00",
                                  b"\x07" + b"\x01\x00\x00\x00" * 1])
def test_decoder_refuses_malformed_data(data):
    with pytest.raises(hl.HyperlightError):
        _Decoder(data).value()


# -- the pool --------------------------------------------------------------------------------------------

def test_pool_serves_many_threads():
    with hl.LuaSandboxPool(size=2, tools={"double": lambda x: 2 * x}) as pool:
        futures = [pool.submit(f"x = {i} return tools.double(x)") for i in range(20)]
        assert [f.result(timeout=60).value for f in futures] == [2 * i for i in range(20)]
        assert pool.run("return x").value is None
        with pytest.raises(hl.ExecutionTimeout):
            pool.run("while true do end", timeout=0.2)
        assert pool.run("return 1").value == 1
    with pytest.raises(ValueError):
        hl.LuaSandboxPool(size=1, fresh=False)


def test_memory_used_grows_and_fresh_runs_give_it_back():
    with hl.LuaSandbox(fresh=False) as sb:
        before = sb.memory_used()
        sb.run("big = {} for i = 1, 10000 do big[i] = i end")
        assert sb.memory_used() > before + 100_000
        sb.reset()
        assert sb.memory_used() == before


def test_ctrl_c_in_a_tool_leaves_the_sandbox_usable():
    def interrupt():
        raise KeyboardInterrupt
    with hl.LuaSandbox(tools={"interrupt": interrupt}) as sb:
        with pytest.raises(KeyboardInterrupt):
            sb.run("tools.interrupt()")
        assert sb.run("return 5").value == 5


def test_a_tool_cannot_reenter_its_own_sandbox():
    box = {}
    with hl.LuaSandbox(tools={"again": lambda: box["sb"].run("return 1").value}) as sb:
        box["sb"] = sb
        with pytest.raises(hl.LuaError, match="same LuaSandbox"):
            sb.run("return tools.again()")
        assert sb.run("return 2").value == 2


def test_a_heap_too_small_for_lua_says_so():
    with pytest.raises(hl.HyperlightError, match="heap"):
        hl.LuaSandbox(heap_size="64Ki")
