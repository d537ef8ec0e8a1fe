/* luaguest.c - the bundled `lua` guest: Lua 5.4 inside the micro-VM.
 *
 * hyperlight_main() creates one Lua state with the base, string, table,
 * math, utf8 and coroutine libraries and a reduced `os` (time, clock,
 * difftime); `io`, `package`/`require`, `debug`, `dofile`, `loadfile`,
 * `string.dump` and binary chunks do not exist. The host (hlsandbox/lua.py)
 * calls Run for each script; with a restore after every call each run starts
 * from this state after init.
 *
 * Values cross the VM boundary in one small format (docs/lua.md,
 * "Conversions"), the same both ways:
 *   0 nil | 1 false | 2 true | 3 i64 | 4 f64 | 5 u32 len, bytes (string)
 *   | 6 u32 n, n values (list: a table with keys 1..n only)
 *   | 7 u32 n, n (key, value) pairs (any other table)
 * Run's result is: u8 status (0 ok, 1 runtime error, 2 syntax error,
 * 3 out of memory, 4 result not convertible), u32 len + what print wrote
 * (what was not flushed through LuaOut already), then for status 0 a u32
 * count and the values, otherwise u32 len + the message, u32 len + the
 * traceback. */
#include <stdint.h>
#include <string.h>

#include "hlguest.h"
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

/* The host's time when the current Run started (seconds since the epoch):
 * os.time() without a host call. */
static double run_started_at;

unsigned int hl_lua_seed(void) { return (unsigned int)(hl_seed() ^ (hl_seed() >> 32)); }

/* ---- memory: Lua's allocator, with the heap limit ----
 * Small blocks (up to 512 bytes, the bulk of Lua's objects) come from
 * per-size free lists refilled from 64 KiB chunks; bigger ones from the SDK
 * heap. `lua_limit` keeps a reserve of the heap for the guest itself, so an
 * out-of-memory is Lua's "not enough memory" error and the result can still
 * be sent. */

#define SMALL_MAX 512
#define GRAIN 16
#define NCLASS (SMALL_MAX / GRAIN)
#define CHUNK (64 * 1024)

static void *free_small[NCLASS + 1];
static char *bump, *bump_end;
static size_t lua_used, lua_limit;

static unsigned size_class(size_t n) { return (unsigned)((n + GRAIN - 1) / GRAIN); }

static void *small_get(unsigned c) {
  void *p = free_small[c];
  if (p) {
    free_small[c] = *(void **)p;
    return p;
  }
  size_t n = (size_t)c * GRAIN;
  if ((size_t)(bump_end - bump) < n) {
    char *chunk = hl_malloc(CHUNK);
    if (!chunk) {
      /* The heap is full: take a free block of a bigger class (its tail is
       * wasted until it is freed as the smaller class). */
      for (unsigned b = c + 1; b <= NCLASS; b++) {
        if (free_small[b]) {
          p = free_small[b];
          free_small[b] = *(void **)p;
          return p;
        }
      }
      return NULL;
    }
    /* The tail of the old chunk goes to the free lists it fits. */
    while (bump_end - bump >= GRAIN) {
      unsigned tc = size_class((size_t)(bump_end - bump) + 1) - 1;
      if (tc > NCLASS) tc = NCLASS;
      *(void **)bump = free_small[tc];
      free_small[tc] = bump;
      bump += (size_t)tc * GRAIN;
    }
    bump = chunk;
    bump_end = chunk + CHUNK;
  }
  p = bump;
  bump += n;
  return p;
}

static void small_put(void *p, unsigned c) {
  *(void **)p = free_small[c];
  free_small[c] = p;
}

static void *block_get(size_t n) { return n <= SMALL_MAX ? small_get(size_class(n)) : hl_malloc(n); }

static void block_put(void *p, size_t n) {
  if (n <= SMALL_MAX) small_put(p, size_class(n));
  else hl_free(p);
}

/* Invariant: a block Lua knows with a size above SMALL_MAX came from
 * hl_malloc/hl_realloc; a block known as small may be bigger than its class
 * (a shrink in place), which only wastes its tail. */
static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (ptr == NULL) osize = 0; /* then osize is the kind of object, not a size */
  if (nsize == 0) {
    if (ptr) {
      block_put(ptr, osize);
      lua_used -= osize;
    }
    return NULL;
  }
  if (nsize > osize && nsize - osize > lua_limit - lua_used) return NULL;
  void *q;
  if (ptr && nsize <= osize && (nsize > SMALL_MAX || osize <= SMALL_MAX)) {
    q = osize > SMALL_MAX ? hl_realloc(ptr, nsize) : ptr; /* shrink */
    if (!q) q = ptr;
  } else if (ptr && osize > SMALL_MAX && nsize > SMALL_MAX) {
    q = hl_realloc(ptr, nsize);
  } else if (ptr && osize <= SMALL_MAX && nsize <= SMALL_MAX && size_class(osize) == size_class(nsize)) {
    q = ptr;
  } else {
    q = block_get(nsize);
    if (!q) return NULL;
    if (ptr) {
      memcpy(q, ptr, osize < nsize ? osize : nsize);
      block_put(ptr, osize);
    }
  }
  if (!q) return NULL;
  lua_used = lua_used - osize + nsize;
  return q;
}

/* ---- byte buffers (guest-owned, outside Lua's limit) ---- */

typedef struct {
  uint8_t *p;
  uint32_t len, cap;
  int overflow;
} bbuf;

static void bb_put(bbuf *b, const void *s, size_t n) {
  if (b->overflow || n > b->cap - b->len) {
    b->overflow = 1;
    return;
  }
  memcpy(b->p + b->len, s, n);
  b->len += (uint32_t)n;
}
static void bb_u8(bbuf *b, uint8_t x) { bb_put(b, &x, 1); }
static void bb_u32(bbuf *b, uint32_t x) { bb_put(b, &x, 4); }
static void bb_lstr(bbuf *b, const char *s, size_t n) {
  bb_u32(b, (uint32_t)n);
  bb_put(b, s, n);
}

static bbuf result, toolbuf, out;
static uint32_t result_limit; /* what fits the host's output buffer, from Run */
static uint32_t result_alloc; /* the size of result.p */

enum { T_NIL, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT };
#define MAX_DEPTH 100

/* Encodes the value at idx; on a value that has no Python form, raises a Lua
 * error (the callers run in protected mode). */
static void encode(lua_State *L, bbuf *b, int idx, int depth) {
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
  case LUA_TNIL: bb_u8(b, T_NIL); return;
  case LUA_TBOOLEAN: bb_u8(b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); return;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      lua_Integer i = lua_tointeger(L, idx);
      bb_u8(b, T_INT);
      bb_put(b, &i, 8);
    } else {
      lua_Number d = lua_tonumber(L, idx);
      bb_u8(b, T_FLOAT);
      bb_put(b, &d, 8);
    }
    return;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    bb_u8(b, T_STR);
    bb_lstr(b, s, n);
    return;
  }
  case LUA_TTABLE: {
    if (depth >= MAX_DEPTH) luaL_error(L, "table nested deeper than %d levels (a cycle?)", MAX_DEPTH);
    luaL_checkstack(L, 4, "table too deep");
    lua_Unsigned n = lua_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      count++;
      lua_pop(L, 1);
    }
    /* A list when the keys are exactly 1..n: n keys, all of 1..n present. */
    int list = count > 0 && count == n;
    for (lua_Unsigned i = 1; list && i <= n; i++) {
      list = lua_rawgeti(L, idx, (lua_Integer)i) != LUA_TNIL;
      lua_pop(L, 1);
    }
    bb_u8(b, list ? T_LIST : T_DICT);
    bb_u32(b, (uint32_t)count);
    if (list) {
      for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        encode(L, b, -1, depth + 1);
        lua_pop(L, 1);
      }
    } else {
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        encode(L, b, -2, depth + 1);
        encode(L, b, -1, depth + 1);
        lua_pop(L, 1);
      }
    }
    return;
  }
  default:
    luaL_error(L, "cannot convert a %s to a Python value", luaL_typename(L, idx));
  }
}

typedef struct {
  const uint8_t *p, *end;
} rd;

static int rd_take(rd *r, void *dst, size_t n) {
  if ((size_t)(r->end - r->p) < n) return 0;
  memcpy(dst, r->p, n);
  r->p += n;
  return 1;
}

/* Pushes the value encoded at r (from the host: validated like all input). */
static void decode(lua_State *L, rd *r, int depth) {
  uint8_t tag;
  uint32_t n;
  if (depth > MAX_DEPTH + 1 || !rd_take(r, &tag, 1)) luaL_error(L, "malformed value from the host");
  luaL_checkstack(L, 3, "value too deep");
  switch (tag) {
  case T_NIL: lua_pushnil(L); return;
  case T_FALSE: lua_pushboolean(L, 0); return;
  case T_TRUE: lua_pushboolean(L, 1); return;
  case T_INT: {
    lua_Integer i;
    if (!rd_take(r, &i, 8)) break;
    lua_pushinteger(L, i);
    return;
  }
  case T_FLOAT: {
    lua_Number d;
    if (!rd_take(r, &d, 8)) break;
    lua_pushnumber(L, d);
    return;
  }
  case T_STR:
    if (!rd_take(r, &n, 4) || n > (size_t)(r->end - r->p)) break;
    lua_pushlstring(L, (const char *)r->p, n);
    r->p += n;
    return;
  case T_LIST:
  case T_DICT:
    if (!rd_take(r, &n, 4) || n > (size_t)(r->end - r->p)) break; /* each item takes >= 1 byte */
    lua_createtable(L, tag == T_LIST ? (int)n : 0, tag == T_DICT ? (int)n : 0);
    for (uint32_t i = 0; i < n; i++) {
      if (tag == T_LIST) {
        decode(L, r, depth + 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      } else {
        decode(L, r, depth + 1);
        decode(L, r, depth + 1);
        if (lua_isnil(L, -2)) luaL_error(L, "a table key from the host is nil");
        lua_rawset(L, -3);
      }
    }
    return;
  }
  luaL_error(L, "malformed value from the host");
}

/* ---- print: into `out`, flushed through the host when full ---- */

static void out_flush(lua_State *L) {
  if (out.len == 0) return;
  hl_value arg = hl_bytes(out.p, out.len), ret;
  uint32_t rc = hl_call_host("LuaOut", HL_VOID, 1, &arg, &ret);
  out.len = 0;
  if (rc != 0) luaL_error(L, "%s", ret.type == HL_STR ? ret.str : "print failed");
}

static void out_write(lua_State *L, const char *s, size_t n) {
  while (n > 0) {
    if (out.len == out.cap) out_flush(L);
    size_t k = out.cap - out.len < n ? out.cap - out.len : n;
    memcpy(out.p + out.len, s, k);
    out.len += (uint32_t)k;
    s += k;
    n -= k;
  }
}

static int l_print(lua_State *L) {
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (i > 1) out_write(L, "\t", 1);
    out_write(L, s, len);
    lua_pop(L, 1);
  }
  out_write(L, "\n", 1);
  return 0;
}

/* ---- tools: tools.NAME(...) calls the host's Python callable NAME ---- */

static int l_tool_call(lua_State *L) {
  int n = lua_gettop(L);
  toolbuf.len = 0;
  toolbuf.overflow = 0;
  bb_u8(&toolbuf, T_LIST);
  bb_u32(&toolbuf, (uint32_t)n);
  for (int i = 1; i <= n; i++) encode(L, &toolbuf, i, 0);
  if (toolbuf.overflow) return luaL_error(L, "arguments too large for a tool call");
  size_t namelen;
  const char *name = lua_tolstring(L, lua_upvalueindex(1), &namelen);
  hl_value args[2] = {hl_str(name), hl_bytes(toolbuf.p, toolbuf.len)}, ret;
  uint32_t rc = hl_call_host("LuaTool", HL_BYTES, 2, args, &ret);
  if (rc != 0) {
    lua_pushstring(L, ret.type == HL_STR ? ret.str : "tool call failed");
    return lua_error(L);
  }
  rd r = {ret.bytes, ret.bytes + ret.len};
  decode(L, &r, 0);
  if (r.p != r.end) return luaL_error(L, "malformed value from the host");
  return 1;
}

/* The tool names come from the host once, at init (LuaToolNames: names
 * separated by '\n'). */
static void open_tools(lua_State *L) {
  hl_value ret;
  lua_newtable(L);
  if (hl_call_host("LuaToolNames", HL_STR, 0, NULL, &ret) == 0 && ret.type == HL_STR) {
    const char *s = ret.str, *end = ret.str + ret.len;
    while (s < end) {
      const char *nl = memchr(s, '\n', (size_t)(end - s));
      if (!nl) nl = end;
      if (nl > s) {
        lua_pushlstring(L, s, (size_t)(nl - s));
        lua_pushvalue(L, -1);
        lua_pushcclosure(L, l_tool_call, 1);
        lua_rawset(L, -3);
      }
      s = nl + 1;
    }
  }
  lua_setglobal(L, "tools");
}

/* ---- os: the host's clock only ---- */

static int l_os_time(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) return luaL_error(L, "os.time(table) is not available in the sandbox");
  lua_pushinteger(L, (lua_Integer)run_started_at);
  return 1;
}

static int l_os_clock(lua_State *L) {
  hl_value ret;
  if (hl_call_host("LuaClock", HL_F64, 0, NULL, &ret) != 0 || ret.type != HL_F64)
    return luaL_error(L, "os.clock failed");
  lua_pushnumber(L, ret.f64);
  return 1;
}

static int l_os_difftime(lua_State *L) {
  lua_pushnumber(L, (lua_Number)luaL_checknumber(L, 1) - (lua_Number)luaL_optnumber(L, 2, 0));
  return 1;
}

/* load() with text chunks only: a binary chunk can break the VM's invariants. */
static int l_load_text(lua_State *L) {
  int n = lua_gettop(L);
  if (n < 1) return luaL_error(L, "bad argument #1 to 'load' (value expected)");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  if (n >= 2) lua_pushvalue(L, 2);
  else lua_pushnil(L);
  lua_pushliteral(L, "t");
  for (int i = 4; i <= n; i++) lua_pushvalue(L, i); /* env, only when given (nil is an env) */
  lua_call(L, n >= 4 ? n : 3, LUA_MULTRET);
  return lua_gettop(L) - n;
}

static lua_State *L0;

static void remove_field(lua_State *L, const char *table, const char *field) {
  if (lua_getglobal(L, table) == LUA_TTABLE) {
    lua_pushnil(L);
    lua_setfield(L, -2, field);
  }
  lua_pop(L, 1);
}

static int open_sandbox(lua_State *L) {
  static const luaL_Reg libs[] = {
      {LUA_GNAME, luaopen_base},           {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
      {LUA_STRLIBNAME, luaopen_string},    {LUA_MATHLIBNAME, luaopen_math},    {LUA_UTF8LIBNAME, luaopen_utf8},
      {NULL, NULL}};
  for (const luaL_Reg *lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  /* package.loaded stays reachable only through the registry. */
  lua_pushnil(L);
  lua_setglobal(L, "dofile");
  lua_pushnil(L);
  lua_setglobal(L, "loadfile");
  remove_field(L, "string", "dump");
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
  lua_getglobal(L, "load");
  lua_pushcclosure(L, l_load_text, 1);
  lua_setglobal(L, "load");
  static const luaL_Reg os_funcs[] = {
      {"time", l_os_time}, {"clock", l_os_clock}, {"difftime", l_os_difftime}, {NULL, NULL}};
  luaL_newlib(L, os_funcs);
  lua_setglobal(L, "os");
  open_tools(L);
  return 0;
}

/* ---- Run ---- */

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

typedef struct {
  const char *code;
  size_t len;
  int syntax; /* set when loading failed */
} run_args;

/* In protected mode: load, run, encode the values into `result` after the
 * header written by Run. */
static int run_protected(lua_State *L) {
  run_args *a = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (luaL_loadbufferx(L, a->code, a->len, "=script", "t") != LUA_OK) {
    a->syntax = 1;
    return lua_error(L);
  }
  lua_call(L, 0, LUA_MULTRET);
  int n = lua_gettop(L);
  bb_u32(&result, (uint32_t)n);
  for (int i = 1; i <= n; i++) encode(L, &result, i, 0);
  return 0;
}

static void put_header(uint8_t status) {
  result.len = 0;
  result.overflow = 0;
  result.cap = result_limit;
  bb_u8(&result, status);
  bb_lstr(&result, (const char *)out.p, out.len);
}

static hl_value fail_result(uint8_t status, const char *msg, size_t n, const char *tb, size_t tn) {
  put_header(status);
  bb_lstr(&result, msg, n);
  bb_lstr(&result, tb, tn);
  if (result.overflow) { /* drop what print wrote, then the traceback */
    out.len = 0;
    put_header(status);
    bb_lstr(&result, msg, n < 4096 ? n : 4096);
    bb_lstr(&result, "", 0);
  }
  return hl_bytes(result.p, result.len);
}

/* Run(code, seed, now, limit) -> bytes: runs one chunk. `seed` reseeds
 * math.random, `now` is the host's time for os.time(), `limit` the most
 * bytes the result may have (the host's output buffer). */
static hl_value Run(const hl_value *args) {
  lua_State *L = L0;
  run_args a = {(const char *)args[0].bytes, args[0].len, 0};
  run_started_at = args[2].f64;
  result_limit = args[3].u32 < result_alloc ? args[3].u32 : result_alloc;
  out.len = 0;
  lua_settop(L, 0);
  /* math.randomseed(seed): each run draws its own numbers. */
  if (lua_getglobal(L, "math") == LUA_TTABLE && lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION) {
    lua_pushinteger(L, (lua_Integer)args[1].u64);
    lua_pcall(L, 1, 0, 0);
  }
  lua_settop(L, 0);
  lua_pushcfunction(L, traceback);
  lua_pushcfunction(L, run_protected);
  lua_pushlightuserdata(L, &a);
  result.cap = result_limit;
  put_header(0);
  int st = lua_pcall(L, 1, 0, 1);
  if (st == LUA_OK && !result.overflow) {
    /* The header was written before print output of the run was known:
     * rewrite it in front of the values. */
    uint32_t vals_at = 1 + 4 + 0, vals_len = result.len - vals_at;
    uint32_t total = 1 + 4 + out.len + vals_len;
    if (total <= result.cap) {
      memmove(result.p + 1 + 4 + out.len, result.p + vals_at, vals_len);
      memcpy(result.p + 1, &out.len, 4);
      memcpy(result.p + 5, out.p, out.len);
      result.len = total;
      lua_settop(L, 0);
      return hl_bytes(result.p, result.len);
    }
    result.overflow = 1;
  }
  hl_value r;
  if (st == LUA_OK) {
    static const char m[] = "the script's return values are too large for the output buffer";
    r = fail_result(4, m, sizeof m - 1, "", 0);
  } else {
    size_t n = 0;
    const char *msg = lua_tolstring(L, -1, &n);
    if (!msg) msg = "(error object is not a string)", n = strlen(msg);
    uint8_t status = st == LUA_ERRMEM ? 3 : a.syntax ? 2 : 1;
    /* The message handler appended Lua's traceback to the message. */
    const char *tb = strstr(msg, "\nstack traceback:");
    size_t mn = tb ? (size_t)(tb - msg) : n;
    if (tb && status == 1) r = fail_result(status, msg, mn, tb + 1, n - mn - 1);
    else r = fail_result(status, msg, mn, "", 0);
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT, 0); /* after an out-of-memory, leave room for the next run */
  return r;
}

static hl_value Collect(const hl_value *args) {
  (void)args;
  lua_gc(L0, LUA_GCCOLLECT, 0);
  return hl_i64((int64_t)lua_used);
}

static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  hl_abort(1, msg ? msg : "lua panic");
}

static void Init(void);

void hyperlight_main(void) {
  static const hl_type run_params[] = {HL_BYTES, HL_U64, HL_F64, HL_U32};
  hl_register("Run", Run, HL_BYTES, 4, run_params);
  hl_register("Collect", Collect, HL_I64, 0, NULL);
  Init();
}

#define OUT_CAP (8 * 1024)

static uint8_t *alloc_or_abort(size_t n) {
  uint8_t *p = hl_malloc(n);
  if (!p) hl_abort(1, "lua guest: the heap is too small (configure a larger heap_size)");
  return p;
}

static void Init(void) {
  /* Probe the heap size: the largest block hl_malloc gives (binary search). */
  size_t lo = 0, hi = (size_t)1 << 36;
  while (hi - lo > 4096) {
    size_t mid = lo + (hi - lo) / 2;
    void *p = hl_malloc(mid);
    if (p) {
      hl_free(p);
      lo = mid;
    } else {
      hi = mid;
    }
  }
  /* The result and a tool call's arguments travel in the output buffer: no
   * need for more room than it has (LuaBufferSize: the host's output_data_size). */
  hl_value bs;
  size_t rcap = 64 * 1024;
  if (hl_call_host("LuaBufferSize", HL_U32, 0, NULL, &bs) == 0 && bs.type == HL_U32) rcap = bs.u32;
  if (rcap > lo / 8) rcap = lo / 8;
  out = (bbuf){alloc_or_abort(OUT_CAP), 0, OUT_CAP, 0};
  result = (bbuf){alloc_or_abort(rcap), 0, (uint32_t)rcap, 0};
  result_alloc = (uint32_t)rcap;
  toolbuf = (bbuf){alloc_or_abort(rcap), 0, (uint32_t)rcap, 0};
  size_t reserve = 64 * 1024 + lo / 32; /* chunk tails, hl_malloc headers, fragmentation */
  lua_limit = lo > 2 * rcap + reserve ? lo - 2 * rcap - reserve : 0;
  L0 = lua_newstate(lua_alloc, NULL);
  if (!L0) hl_abort(1, "lua guest: the heap is too small for a Lua state");
  lua_atpanic(L0, panic);
  lua_pushcfunction(L0, open_sandbox);
  if (lua_pcall(L0, 0, 0, 0) != LUA_OK) hl_abort(1, lua_tostring(L0, -1));
  lua_gc(L0, LUA_GCCOLLECT, 0);
}
