/* alloc.c - the guest heap: a first-fit allocator over the PEB's heap region.
 *
 * Free blocks form a singly linked list sorted by address, so freeing can
 * merge a block with both neighbours. Every block starts with a 16-byte
 * header and is a multiple of 16 bytes, so payloads are 16-aligned (enough
 * for any C type, including SSE vectors). A used block's `next` holds a
 * marker that hl_free checks to catch bad and double frees. */
#include "hl_internal.h"

typedef struct hl_block {
  uint64_t size;         /* whole block, header included */
  struct hl_block *next; /* free: next free block by address; used: USED_MARK */
} hl_block;

#define ALIGN 16
#define HEADER ((uint64_t)sizeof(hl_block))
#define MIN_BLOCK (HEADER + ALIGN)
#define USED_MARK ((hl_block *)(uintptr_t)0x55534544424c4b21ULL) /* "!KLBDESU", not an address */

static hl_block *free_list;
static uintptr_t heap_start, heap_end;

void hl_heap_init(void *start, uint64_t size) {
  uintptr_t s = ((uintptr_t)start + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
  uintptr_t e = ((uintptr_t)start + size) & ~(uintptr_t)(ALIGN - 1);
  free_list = NULL;
  heap_start = heap_end = s;
  if (start == NULL || e < s + MIN_BLOCK) return; /* no usable heap: malloc returns NULL */
  heap_end = e;
  free_list = (hl_block *)s;
  free_list->size = e - s;
  free_list->next = NULL;
}

/* Block size for an n-byte request, or 0 if impossible. */
static uint64_t block_size(size_t n) {
  if (n > heap_end - heap_start) return 0;
  uint64_t need = (n + ALIGN - 1) / ALIGN * ALIGN + HEADER;
  return need < MIN_BLOCK ? MIN_BLOCK : need;
}

static hl_block *block_of(void *p) { return (hl_block *)p - 1; }

/* A pointer hl_malloc returned and that was not freed since. */
static hl_block *checked_block(void *p) {
  uintptr_t a = (uintptr_t)p;
  if ((a & (ALIGN - 1)) != 0 || a < heap_start + HEADER || a >= heap_end)
    hl_abort(HL_ERR_GENERIC, "heap: pointer not from hl_malloc");
  hl_block *b = block_of(p);
  if (b->next != USED_MARK || b->size < MIN_BLOCK || b->size % ALIGN != 0 || b->size > heap_end - (uintptr_t)b)
    hl_abort(HL_ERR_GENERIC, "heap: double free or corrupted block");
  return b;
}

/* Cuts the tail beyond `size` off a used block and frees it, if big enough. */
static void trim(hl_block *b, uint64_t size) {
  if (b->size - size < MIN_BLOCK) return;
  hl_block *tail = (hl_block *)((uintptr_t)b + size);
  tail->size = b->size - size;
  tail->next = USED_MARK;
  b->size = size;
  hl_free(tail + 1);
}

void *hl_malloc(size_t n) {
  uint64_t need = block_size(n);
  if (need == 0) return NULL;
  for (hl_block **link = &free_list; *link != NULL; link = &(*link)->next) {
    hl_block *b = *link;
    if (b->size < need) continue;
    if (b->size - need >= MIN_BLOCK) { /* split: the rest stays in the list */
      hl_block *rest = (hl_block *)((uintptr_t)b + need);
      rest->size = b->size - need;
      rest->next = b->next;
      *link = rest;
      b->size = need;
    } else {
      *link = b->next;
    }
    b->next = USED_MARK;
    return b + 1;
  }
  return NULL;
}

void *hl_calloc(size_t n, size_t size) {
  if (size != 0 && n > SIZE_MAX / size) return NULL;
  void *p = hl_malloc(n * size);
  if (p != NULL) memset(p, 0, n * size);
  return p;
}

void hl_free(void *p) {
  if (p == NULL) return;
  hl_block *b = checked_block(p);
  /* Find the free neighbours: prev < b < next. */
  hl_block *prev = NULL, *next = free_list;
  while (next != NULL && next < b) {
    prev = next;
    next = next->next;
  }
  if (next != NULL && (uintptr_t)b + b->size == (uintptr_t)next) { /* merge with next */
    b->size += next->size;
    b->next = next->next;
    next->next = NULL;
  } else {
    b->next = next;
  }
  if (prev != NULL && (uintptr_t)prev + prev->size == (uintptr_t)b) { /* merge into prev */
    prev->size += b->size;
    prev->next = b->next;
    b->next = NULL; /* no longer a header: a second free of p fails the check */
  } else if (prev != NULL) {
    prev->next = b;
  } else {
    free_list = b;
  }
}

/* Grows b in place by absorbing the free block right after it, if that is
 * enough to reach `need`. */
static bool grow_in_place(hl_block *b, uint64_t need) {
  uintptr_t end = (uintptr_t)b + b->size;
  for (hl_block **link = &free_list; *link != NULL; link = &(*link)->next) {
    hl_block *f = *link;
    if ((uintptr_t)f < end) continue;
    if ((uintptr_t)f != end || b->size + f->size < need) return false;
    *link = f->next;
    f->next = NULL;
    b->size += f->size;
    trim(b, need);
    return true;
  }
  return false;
}

void *hl_realloc(void *p, size_t n) {
  if (p == NULL) return hl_malloc(n);
  if (n == 0) {
    hl_free(p);
    return NULL;
  }
  hl_block *b = checked_block(p);
  uint64_t need = block_size(n);
  if (need == 0) return NULL;
  if (need <= b->size) {
    trim(b, need);
    return p;
  }
  if (grow_in_place(b, need)) return p;
  void *q = hl_malloc(n);
  if (q == NULL) return NULL;
  memcpy(q, p, b->size - HEADER);
  hl_free(p);
  return q;
}
