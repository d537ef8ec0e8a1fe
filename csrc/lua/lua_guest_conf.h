/* lua_guest_conf.h - force-included (-include) into every Lua source of the
 * `lua` guest: replaces what luaconf.h and lstate.c would take from the C
 * library's locale and clock, which the guest does not have. */
#if !defined(LUA_GUEST_CONF_H) && !defined(__ASSEMBLER__)
#define LUA_GUEST_CONF_H
unsigned int hl_lua_seed(void);
#define luai_makeseed(L) hl_lua_seed()
#define lua_getlocaledecpoint() '.'
#endif
