/* An i686 guest using the runtime's string and formatting functions
 * (tests/sdk/test_i686_format.py): it prints the results and ends init. */
#include "hl32.h"

static const char *unsupported = "[%f]"; /* not a literal: no format check */

void guest32_main(void) {
  char b[256];
  snprintf(b, sizeof b, "[%d|%5u|%-4x|%08X|%lld|%llu|%s|%.2s|%c|%%|%#x|%p|%zu|%*d|%-3d|%ld]\n", -42, 7u, 255u,
           0xBEEFu, -1234567890123LL, 18446744073709551615ULL, "str", "abc", 'Z', 0xab, (void *)0x1000,
           (size_t)9, 4, 5, 6, -2147483647L - 1);
  hl32_print(b);
  char small[8];
  int n = snprintf(small, sizeof small, "%s", "truncated output");
  printf("small=%s n=%d\n", small, n);
  snprintf(b, sizeof b, unsupported, 1);
  printf("unsupported=%s\n", b);
  char s[32];
  strcpy(s, "hello");
  strcat(s, ", world");
  printf("cmp=%d,%d,%d strstr=%s strchr=%s strrchr=%s len=%u\n", strcmp("a", "b") < 0, strncmp("abc", "abd", 2),
         strcmp("b", "a") > 0, strstr(s, "wor"), strchr(s, ','), strrchr(s, 'o'), (unsigned)strlen(s));
  puts("done");
  hl32_halt_init();
}
