/* lua_guest_conf.h - force-included (-include) into every Lua source of the
 * `lua` guest: seeds that Lua's core would take from time() and clock(),
 * which in a guest are host calls (an exit each), come from the host's
 * start-up seed instead; the decimal point is the C locale's. */
#if !defined(LUA_GUEST_CONF_H) && !defined(__ASSEMBLER__)
#define LUA_GUEST_CONF_H
unsigned int hl_lua_seed(void);
#define luai_makeseed(L) hl_lua_seed()
#define l_randomizePivot() hl_lua_seed()
#define lua_getlocaledecpoint() '.'
#endif
