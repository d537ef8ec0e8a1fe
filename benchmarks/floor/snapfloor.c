/* snapfloor.c - the raw-KVM cost floors of hlsandbox's snapshot operations.
 *
 * A companion of floor.c (same guest setup, same output format, same checks),
 * for the patterns benchmarks/test_bench_snapshots.py and compare_snapshots.py
 * measure: a call followed by a restore that copies back what the guest wrote
 * (found by KVM dirty logging), taking a snapshot (copying resident guest
 * memory into a memfd), and creating a VM from a memory image up to its first
 * exit. Nothing here is Python or hlsandbox: only KVM ioctls, memcpy and the
 * system calls any host needs for the same work.
 *
 * Usage: snapfloor ITERATIONS SPEC [SPEC ...]
 *   Each SPEC is `kind[:key=value]...`; sizes take K, M or G suffixes.
 *   Common keys: heap (heap bytes, default 1M; the guest memory is laid out
 *   like an hlsandbox sandbox's around it), iters (overrides ITERATIONS),
 *   label (the figure name printed, default the kind).
 *
 *   call_restore   One guest call followed by one restore, ITERATIONS times.
 *                  The host writes a 64-byte message into the input buffer and
 *                  rax into kvm_run->s.regs (SYNC_REGS) and runs the vCPU; the
 *                  guest copies the message to its output buffer, writes a
 *                  global and its stack, writes one word in each of n
 *                  consecutive heap pages, and does `out 108`. The host reads
 *                  the 64 bytes back. The restore then copies back, from a
 *                  snapshot image (a read-only mapping of a memfd, as
 *                  hlsandbox's), every heap page the guest wrote plus the
 *                  regions hlsandbox copies whole on every restore (8 KiB of
 *                  globals, the 2 x 16 KiB I/O buffers, the top 16 KiB of the
 *                  stack: 56 KiB), and stages the snapshot's general registers
 *                  in kvm_run->s.regs for the next KVM_RUN (no vCPU ioctl).
 *       n=N        heap pages the guest writes (default 0)
 *       log=MODE   how the restore finds them: ring (default; the KVM dirty
 *                  ring, enabled before the vCPU exists, harvested entry by
 *                  entry, then KVM_RESET_DIRTY_RINGS), bitmap
 *                  (KVM_GET_DIRTY_LOG on the logged slot), none (no logging,
 *                  one slot; the restore copies the n pages it knows the
 *                  guest wrote)
 *       copy=0     do not copy the 56 KiB of always-copied regions
 *       copy_bytes=B  copy B bytes of always-copied regions instead of 56 KiB
 *                  (the stack-top range grows or shrinks; B >= 40 KiB), to
 *                  match what a given hlsandbox layout copies
 *       sregs=1    also stage the segment/control registers (KVM_SYNC_X86_SREGS),
 *                  as hlsandbox's fast restore does
 *       tramp=1    enter through a restore trampoline (fxrstor64 + jmp, plus
 *                  vzeroall on kvm-pvm), as hlsandbox's fast restore does
 *     Prints LABEL (call + restore), LABEL.run (the call: message in, KVM_RUN,
 *     message out) and LABEL.restore (from the exit to the staged registers).
 *
 *   snapshot_create  Takes a snapshot: memfd_create, ftruncate to the memory
 *                  size, mincore over the guest memory, pwrite of each run of
 *                  resident pages, a read-only private mapping of the memfd
 *                  (what restores copy from), the vCPU state (KVM_GET_REGS,
 *                  KVM_GET_SREGS, KVM_GET_XSAVE) and, with the dirty ring, a
 *                  harvest that resets dirty tracking. Unmapping and closing
 *                  the snapshot are not timed.
 *       resident=R the host touches heap pages until R pages of guest memory
 *                  are resident (default: only what the guest setup touched)
 *       log=ring|none  (default ring: the three slots of call_restore)
 *     Prints LABEL.
 *
 *   vm_create      Creates a VM from a memory image and runs it to the first
 *                  exit, then tears it down. The image (the guest's page
 *                  tables, system pages and code) is in a memfd, written once.
 *                  Timed: mmap of the memfd (MAP_PRIVATE, copy-on-write, as a
 *                  sandbox from a snapshot), KVM_CREATE_VM, the memory
 *                  slot(s), KVM_CREATE_VCPU, mmap of kvm_run, KVM_SET_CPUID2
 *                  (the supported table, fetched once), KVM_SET_SREGS,
 *                  KVM_SET_REGS, the message into the input buffer and KVM_RUN
 *                  until the guest's `out 108`. Then, timed separately,
 *                  teardown: munmap kvm_run (and the ring), close the vCPU and
 *                  VM fds, munmap guest memory. /dev/kvm stays open.
 *       slots=3    three slots as hlsandbox (default 1)
 *       ring=1     enable the dirty ring, log the middle slot (needs slots=3)
 *       state=1    also KVM_SET_XSAVE and KVM_SET_MSRS, as hlsandbox's
 *                  load_state does
 *       par=1      register the slots on a second thread while the main thread
 *                  creates the vCPU, sets its CPUID and maps kvm_run and the
 *                  ring, as hlsandbox does (needs slots=3)
 *       cpuid=0    on kvm-pvm, no KVM_SET_CPUID2, as hlsandbox for amd64 guests
 *                  (a CPL3 guest's cpuid returns the host's there)
 *     Prints LABEL and LABEL.teardown.
 *
 * Output, one line a figure: `name median_us p10_us p90_us iterations`, and
 * `#info key value` lines (memory sizes, resident pages, bytes copied, kvm-pvm).
 * Exit status 0, or 2 with a message on stderr on any KVM error, unexpected
 * exit, or a guest/restore result that is wrong (every iteration is checked,
 * outside the timed window).
 *
 * Build: gcc -O2 -pthread -o snapfloor snapfloor.c (no dependencies beyond linux/kvm.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ull
#define PORT_CALL_FUNCTION 101
#define PORT_HALT 108
#define PORT_FAULT 110

/* ---- guest physical (= virtual) layout ----
 * Fixed low pages, so the guest code can use absolute addresses; then the
 * page tables (their number depends on the memory size), the heap (the slot
 * that logs dirty pages), a guard page and a 256 KiB stack whose top 16 KiB
 * are a slot of their own, like hlsandbox's (mem/layout.py: slots()). */
#define GPA_PML4 0x1000ull
#define GPA_PDPT 0x2000ull
#define GPA_GDT 0x3000ull
#define GPA_IDT 0x3800ull
#define GPA_TSS 0x4000ull /* 3 pages: TSS + 8 KiB I/O bitmap + terminator */
#define TSS_IOMAP 0x68
#define TSS_LIMIT (TSS_IOMAP + 8192)
#define GPA_STACK0 0x7000ull
#define GPA_STUBS 0x8000ull
#define GPA_TRAMP 0x9000ull /* restore trampoline, user RX */
#define TRAMP_TARGET 0x100
#define TRAMP_FXSAVE 0x200
#define GPA_CODE 0xa000ull
#define GPA_DATA 0xb000ull /* the guest's globals: 2 pages, as simpleguest's writable image */
#define DATA_SIZE 0x2000ull
#define GPA_IN 0x10000ull /* 16 KiB input buffer */
#define GPA_OUT 0x14000ull /* 16 KiB output buffer */
#define BUF_SIZE 0x4000ull
#define GPA_PD 0x18000ull /* page directories, then page tables */
#define STACK_SIZE (256ull << 10)
#define STACK_COPY (16ull << 10)
#define MSG_SIZE 64

#define PTE_P 1ull
#define PTE_W 2ull
#define PTE_U 4ull
#define PTE_NX (1ull << 63)

#define XSTR(x) STR(x)
#define STR(x) #x
/* The guest: one call per KVM_RUN. Copies the message IN -> OUT, adds rax
 * (from SYNC_REGS) to OUT[0], writes rax to a global and to its stack, then
 * writes rax into the first word of n consecutive pages from addr (n = IN[1],
 * addr = IN[2]), then `out 108`. Position independent (absolute immediates). */
__asm__(".pushsection .rodata\n"
        ".globl snap_guest_start, snap_guest_end\n"
        "snap_guest_start:\n"
        "1:  mov $" XSTR(GPA_IN) ", %esi\n"
        "    mov $" XSTR(GPA_OUT) ", %edi\n"
        "    mov $8, %ecx\n"
        "    rep movsq\n"
        "    add %rax, " XSTR(GPA_OUT) "\n"
        "    mov %rax, " XSTR(GPA_DATA) "\n"
        "    push %rax\n"
        "    pop %rcx\n"
        "    mov " XSTR(GPA_IN) "+8, %rbx\n"
        "    mov " XSTR(GPA_IN) "+16, %rdx\n"
        "    test %rbx, %rbx\n"
        "    jz 3f\n"
        "2:  mov %rax, (%rdx)\n"
        "    add $4096, %rdx\n"
        "    dec %rbx\n"
        "    jnz 2b\n"
        "3:  out %al, $" XSTR(PORT_HALT) "\n"
        "    jmp 1b\n"
        "snap_guest_end:\n"
        ".popsection\n");
extern const uint8_t snap_guest_start[], snap_guest_end[];

#define FLOOR_NAME "snapfloor"
#include "floor_common.h"

static uint64_t *alloc_samples(int n) {
  uint64_t *p = calloc(n > 0 ? n : 1, sizeof *p);
  if (!p) fail("out of memory");
  return p;
}

/* ---- layout ---- */
struct layout {
  uint64_t heap_size, npd, npt, pt_gpa, heap_gpa, guard_gpa, stack_gpa, stack_top, total;
};
static struct layout make_layout(uint64_t heap_size) {
  struct layout L = {.heap_size = heap_size};
  uint64_t npt = 1;
  for (;;) { /* the page tables' size depends on the total, which includes them */
    uint64_t npd = (npt + 511) / 512;
    L.pt_gpa = GPA_PD + npd * PAGE;
    L.heap_gpa = L.pt_gpa + npt * PAGE;
    L.guard_gpa = L.heap_gpa + heap_size;
    L.stack_gpa = L.guard_gpa + PAGE;
    L.stack_top = L.stack_gpa + STACK_SIZE;
    L.total = L.stack_top;
    uint64_t need = (L.total + (2ull << 20) - 1) >> 21;
    if (need <= npt) {
      L.npd = npd;
      L.npt = npt;
      break;
    }
    npt = need;
  }
  if (L.npd > 512) fail("memory too large for one PDPT");
  return L;
}

static void put64(uint8_t *p, uint64_t x) { memcpy(p, &x, 8); }
static void put16(uint8_t *p, uint16_t x) { memcpy(p, &x, 2); }

/* Writes page tables, GDT, IDT, TSS, fault stubs, the trampoline and the code
 * into zeroed memory `mem` laid out as L. */
static void build_image(uint8_t *mem, const struct layout *L, int clear_avx) {
  uint64_t *pml4 = (uint64_t *)(mem + GPA_PML4), *pdpt = (uint64_t *)(mem + GPA_PDPT);
  pml4[0] = GPA_PDPT | PTE_P | PTE_W | PTE_U;
  for (uint64_t d = 0; d < L->npd; d++) pdpt[d] = (GPA_PD + d * PAGE) | PTE_P | PTE_W | PTE_U;
  uint64_t *pd = (uint64_t *)(mem + GPA_PD);
  for (uint64_t t = 0; t < L->npt; t++) pd[t] = (L->pt_gpa + t * PAGE) | PTE_P | PTE_W | PTE_U;
  uint64_t *pt = (uint64_t *)(mem + L->pt_gpa);
  const uint64_t user_rw = PTE_P | PTE_W | PTE_U | PTE_NX, sup_rw = PTE_P | PTE_W | PTE_NX;
#define MAP(gpa, flags) (pt[(gpa) >> 12] = (gpa) | (flags))
  MAP(GPA_GDT, sup_rw);
  for (uint64_t p = GPA_TSS; p < GPA_TSS + 3 * PAGE; p += PAGE) MAP(p, sup_rw);
  MAP(GPA_STACK0, sup_rw);
  MAP(GPA_STUBS, PTE_P);
  MAP(GPA_TRAMP, PTE_P | PTE_U);
  MAP(GPA_CODE, PTE_P | PTE_U);
  for (uint64_t p = GPA_DATA; p < GPA_DATA + DATA_SIZE; p += PAGE) MAP(p, user_rw);
  for (uint64_t p = GPA_IN; p < GPA_OUT + BUF_SIZE; p += PAGE) MAP(p, user_rw);
  for (uint64_t p = L->heap_gpa; p < L->guard_gpa; p += PAGE) MAP(p, user_rw);
  for (uint64_t p = L->stack_gpa; p < L->stack_top; p += PAGE) MAP(p, user_rw);
#undef MAP

  uint64_t *gdt = (uint64_t *)(mem + GPA_GDT);
  gdt[1] = 0x00AF9A000000FFFFull;
  gdt[2] = 0x00CF92000000FFFFull;
  gdt[3] = 0x00CFF2000000FFFFull;
  gdt[4] = 0x00AFFA000000FFFFull;
  gdt[5] = (uint64_t)(TSS_LIMIT & 0xffff) | ((GPA_TSS & 0xffffff) << 16) | (0x8Bull << 40) |
           ((uint64_t)((TSS_LIMIT >> 16) & 0xf) << 48) | (((GPA_TSS >> 24) & 0xff) << 56);
  gdt[6] = GPA_TSS >> 32;

  uint8_t *tss = mem + GPA_TSS;
  put64(tss + 4, GPA_STACK0 + PAGE);
  put64(tss + 0x24, GPA_STACK0 + PAGE);
  put16(tss + 0x66, TSS_IOMAP);
  memset(tss + TSS_IOMAP, 0xff, 8192 + 1);
  tss[TSS_IOMAP + PORT_CALL_FUNCTION / 8] &= ~(1u << (PORT_CALL_FUNCTION % 8));
  tss[TSS_IOMAP + PORT_HALT / 8] &= ~(1u << (PORT_HALT % 8));

  for (int vec = 0; vec < 32; vec++) {
    uint64_t h = GPA_STUBS + vec * 16;
    uint8_t stub[] = {0xb0, (uint8_t)vec, 0xe6, PORT_FAULT, 0xeb, 0xfe};
    memcpy(mem + h, stub, sizeof stub);
    uint8_t *e = mem + GPA_IDT + vec * 16;
    put16(e, h & 0xffff);
    put16(e + 2, 0x08);
    e[4] = vec == 8 ? 1 : 0;
    e[5] = 0x8E;
    put16(e + 6, (h >> 16) & 0xffff);
    put64(e + 8, h >> 32);
  }

  /* The restore trampoline, as hlsandbox's mem/trampoline.py builds it:
   * [vzeroall;] fxrstor64 [rip+FXSAVE]; jmp qword [rip+TARGET]. */
  uint8_t *tr = mem + GPA_TRAMP;
  int at = 0;
  if (clear_avx) {
    tr[at++] = 0xc5, tr[at++] = 0xfc, tr[at++] = 0x77;
  }
  int32_t disp = TRAMP_FXSAVE - (at + 8);
  tr[at++] = 0x48, tr[at++] = 0x0f, tr[at++] = 0xae, tr[at++] = 0x0d;
  memcpy(tr + at, &disp, 4), at += 4;
  disp = TRAMP_TARGET - (at + 6);
  tr[at++] = 0xff, tr[at++] = 0x25;
  memcpy(tr + at, &disp, 4), at += 4;

  size_t code_len = snap_guest_end - snap_guest_start;
  if (code_len > PAGE) fail("guest code too large");
  memcpy(mem + GPA_CODE, snap_guest_start, code_len);
}

/* ---- KVM ---- */
static int g_kvm = -1, g_run_size;
static struct kvm_cpuid2 *g_cpuid;
static int g_pvm;

static void kvm_open(void) {
  g_kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (g_kvm < 0) fail("open /dev/kvm: %s", strerror(errno));
  if (ioctl(g_kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) fail("unexpected KVM API version");
  int sync = ioctl(g_kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
  if (sync < 0 || !(sync & KVM_SYNC_X86_REGS) || !(sync & KVM_SYNC_X86_SREGS))
    fail("KVM_CAP_SYNC_REGS lacks regs/sregs (%d)", sync);
  g_run_size = ioctl(g_kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  CHECK(g_run_size, "KVM_GET_VCPU_MMAP_SIZE");
  for (int nent = 64; nent <= 4096; nent *= 2) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + nent * sizeof(struct kvm_cpuid_entry2));
    if (!c) fail("out of memory");
    c->nent = nent;
    if (ioctl(g_kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
      g_cpuid = c;
      break;
    }
    free(c);
    if (errno != E2BIG) fail("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
  }
  if (!g_cpuid) fail("KVM_GET_SUPPORTED_CPUID: table too large");
  g_pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
}

enum logmode { LOG_NONE, LOG_RING, LOG_BITMAP };
#define RING_ENTRIES 4096 /* as hlsandbox: 64 KiB a vCPU */

struct vm {
  struct layout L;
  int vm, cpu;
  struct kvm_run *run;
  uint8_t *mem;
  enum logmode log;
  int nslots;
  struct kvm_dirty_gfn *ring;
  uint32_t ring_fetch;
  uint64_t *bitmap, slot_pages;
  uint64_t *dirty;
  size_t n_dirty, cap_dirty;
};

static void add_slot(struct vm *v, int slot, uint64_t gpa, uint64_t size, int logged) {
  struct kvm_userspace_memory_region r = {.slot = slot,
                                          .flags = logged ? KVM_MEM_LOG_DIRTY_PAGES : 0,
                                          .guest_phys_addr = gpa,
                                          .memory_size = size,
                                          .userspace_addr = (uint64_t)(v->mem + gpa)};
  CHECK(ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r), "KVM_SET_USER_MEMORY_REGION");
}

/* The slots over v->mem. nslots 1: one slot; 3: [0, heap) + [heap, stack top -
 * 16 KiB) + the top 16 KiB, the middle one logging dirty pages when log != LOG_NONE. */
static void add_slots(struct vm *v) {
  const struct layout *L = &v->L;
  if (v->nslots == 1) {
    add_slot(v, 0, 0, L->total, 0);
  } else {
    uint64_t split = L->stack_top - STACK_COPY;
    add_slot(v, 0, 0, L->heap_gpa, 0);
    add_slot(v, 1, L->heap_gpa, split - L->heap_gpa, v->log != LOG_NONE);
    add_slot(v, 2, split, STACK_COPY, 0);
    v->slot_pages = (split - L->heap_gpa) / PAGE;
  }
}

/* par=1: a second thread registers the slots while the main thread creates the
 * vCPU, sets its CPUID and maps kvm_run and the ring, as hlsandbox's VM set-up
 * does (vm_setup.h). */
static struct {
  struct vm *v;
  uint32_t go, done; /* futex words */
} g_par;
static void futex_wait(uint32_t *w, uint32_t val) { syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, 0, 0, 0); }
static void futex_wake(uint32_t *w) { syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0); }
static void *par_helper(void *arg) {
  (void)arg;
  for (;;) {
    while (!__atomic_load_n(&g_par.go, __ATOMIC_ACQUIRE)) futex_wait(&g_par.go, 0);
    g_par.go = 0;
    add_slots(g_par.v);
    __atomic_store_n(&g_par.done, 1, __ATOMIC_RELEASE);
    futex_wake(&g_par.done);
  }
  return 0;
}

/* Creates the VM, slots and vCPU over v->mem (already mapped and built); with par, on
 * two threads (the helper thread is started on first use); without cpuid, on kvm-pvm,
 * no CPUID table (a CPL3 guest's cpuid returns the host's there). */
static void vm_setup_par(struct vm *v, int par, int cpuid) {
  static pthread_t helper;
  v->vm = ioctl(g_kvm, KVM_CREATE_VM, 0);
  CHECK(v->vm, "KVM_CREATE_VM");
  if (v->log == LOG_RING) {
    int max = ioctl(v->vm, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
    if (max < RING_ENTRIES * (int)sizeof(struct kvm_dirty_gfn)) fail("KVM dirty ring unavailable (max %d)", max);
    struct kvm_enable_cap cap = {.cap = KVM_CAP_DIRTY_LOG_RING};
    cap.args[0] = RING_ENTRIES * sizeof(struct kvm_dirty_gfn);
    CHECK(ioctl(v->vm, KVM_ENABLE_CAP, &cap), "KVM_ENABLE_CAP(DIRTY_LOG_RING)");
  }
  if (par) {
    if (!helper && pthread_create(&helper, 0, par_helper, 0)) fail("pthread_create failed");
    g_par.v = v;
    g_par.done = 0;
    __atomic_store_n(&g_par.go, 1, __ATOMIC_RELEASE);
    futex_wake(&g_par.go);
  } else {
    add_slots(v);
  }
  v->cpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
  CHECK(v->cpu, "KVM_CREATE_VCPU");
  if (cpuid || !g_pvm) CHECK(ioctl(v->cpu, KVM_SET_CPUID2, g_cpuid), "KVM_SET_CPUID2");
  v->run = mmap(0, g_run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->cpu, 0);
  if (v->run == MAP_FAILED) fail("mmap kvm_run: %s", strerror(errno));
  if (v->log == LOG_RING) {
    v->ring = mmap(0, RING_ENTRIES * sizeof(struct kvm_dirty_gfn), PROT_READ | PROT_WRITE, MAP_SHARED, v->cpu,
                   KVM_DIRTY_LOG_PAGE_OFFSET * PAGE);
    if (v->ring == MAP_FAILED) fail("mmap dirty ring: %s", strerror(errno));
  }
  if (par) {
    while (!__atomic_load_n(&g_par.done, __ATOMIC_ACQUIRE)) futex_wait(&g_par.done, 0);
  }
}
static void vm_setup(struct vm *v) { vm_setup_par(v, 0, 1); }

static void initial_sregs(struct kvm_sregs *s) {
  s->cr0 = 0x80010033;
  s->cr3 = GPA_PML4;
  s->cr4 = 0x620;
  s->efer = 0xD01;
  s->cs = (struct kvm_segment){.limit = 0xffffffff, .selector = 0x23, .type = 11, .present = 1, .dpl = 3,
                               .s = 1, .l = 1, .g = 1};
  s->ss = (struct kvm_segment){.limit = 0xffffffff, .selector = 0x1b, .type = 3, .present = 1, .dpl = 3,
                               .db = 1, .s = 1, .g = 1};
  s->ds = s->es = s->fs = s->gs = s->ss;
  s->tr = (struct kvm_segment){.base = GPA_TSS, .limit = TSS_LIMIT, .selector = 0x28, .type = 11, .present = 1};
  s->gdt.base = GPA_GDT;
  s->gdt.limit = 7 * 8 - 1;
  s->idt.base = GPA_IDT;
  s->idt.limit = 32 * 16 - 1;
}
static struct kvm_regs initial_regs(const struct layout *L) {
  struct kvm_regs g = {0};
  g.rip = GPA_CODE;
  g.rsp = L->stack_top;
  g.rflags = 0x2;
  return g;
}

static void vm_teardown(struct vm *v) {
  if (v->ring) munmap(v->ring, RING_ENTRIES * sizeof(struct kvm_dirty_gfn));
  munmap(v->run, g_run_size);
  close(v->cpu);
  close(v->vm);
  munmap(v->mem, v->L.total);
  v->ring = NULL;
}

static const char *exit_name(uint32_t r) {
  static char b[32];
  switch (r) {
  case KVM_EXIT_IO: return "IO";
  case KVM_EXIT_MMIO: return "MMIO";
  case KVM_EXIT_HLT: return "HLT";
  case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
  case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
  case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
  case KVM_EXIT_DIRTY_RING_FULL: return "DIRTY_RING_FULL";
  }
  snprintf(b, sizeof b, "exit#%u", r);
  return b;
}

static void dirty_add(struct vm *v, uint64_t page) {
  if (v->n_dirty == v->cap_dirty) {
    v->cap_dirty = v->cap_dirty ? v->cap_dirty * 2 : 4096;
    v->dirty = realloc(v->dirty, v->cap_dirty * sizeof *v->dirty);
    if (!v->dirty) fail("out of memory");
  }
  v->dirty[v->n_dirty++] = page;
}

/* Moves the pages logged as written into v->dirty and re-arms logging. */
static inline void harvest(struct vm *v) {
  if (v->log == LOG_RING) {
    int n = 0;
    for (;;) {
      struct kvm_dirty_gfn *e = &v->ring[v->ring_fetch % RING_ENTRIES];
      if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)) break;
      if ((e->slot & 0xffff) != 1 || e->offset >= v->slot_pages)
        fail("dirty ring entry outside the logged slot (slot %u offset %llu)", e->slot,
             (unsigned long long)e->offset);
      dirty_add(v, e->offset);
      __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
      v->ring_fetch++;
      n++;
    }
    if (n) CHECK(ioctl(v->vm, KVM_RESET_DIRTY_RINGS, 0), "KVM_RESET_DIRTY_RINGS");
  } else if (v->log == LOG_BITMAP) {
    struct kvm_dirty_log d = {.slot = 1, .dirty_bitmap = v->bitmap};
    CHECK(ioctl(v->vm, KVM_GET_DIRTY_LOG, &d), "KVM_GET_DIRTY_LOG");
    uint64_t words = (v->slot_pages + 63) / 64;
    for (uint64_t w = 0; w < words; w++)
      for (uint64_t bits = v->bitmap[w]; bits; bits &= bits - 1) dirty_add(v, w * 64 + __builtin_ctzll(bits));
  }
}

static void unexpected_exit(struct vm *v, const char *fig) {
  struct kvm_run *r = v->run;
  struct kvm_regs g;
  int have = ioctl(v->cpu, KVM_GET_REGS, &g) == 0;
  if (r->exit_reason == KVM_EXIT_IO && r->io.port == PORT_FAULT && have) {
    unsigned vec = *((uint8_t *)r + r->io.data_offset);
    struct kvm_sregs s;
    unsigned long long cr2 = ioctl(v->cpu, KVM_GET_SREGS, &s) == 0 ? s.cr2 : 0;
    fail("%s: guest CPU exception vector %u (rsp %#llx, cr2 %#llx)", fig, vec, (unsigned long long)g.rsp, cr2);
  }
  char detail[120] = "";
  if (r->exit_reason == KVM_EXIT_IO)
    snprintf(detail, sizeof detail, " port %u dir %s size %u count %u", r->io.port, r->io.direction ? "out" : "in",
             r->io.size, r->io.count);
  else if (r->exit_reason == KVM_EXIT_INTERNAL_ERROR)
    snprintf(detail, sizeof detail, " suberror %u", r->internal.suberror);
  fail("%s: unexpected exit %s%s (expected out to port %d); rip %#llx", fig, exit_name(r->exit_reason), detail,
       PORT_HALT, have ? (unsigned long long)g.rip : 0ull);
}

/* KVM_RUN until the guest's `out 108`; a full dirty ring is harvested and the
 * guest resumed (that time counts as the call's). */
static inline void run_to_halt(struct vm *v, const char *fig) {
  for (;;) {
    int rc = ioctl(v->cpu, KVM_RUN, 0);
    if (rc < 0) {
      if (errno == EINTR && !g_alarm) continue;
      if (errno == EINTR) fail("%s: guest did not exit within the watchdog time", fig);
      CHECK(rc, "KVM_RUN");
    }
    struct kvm_run *r = v->run;
    if (r->exit_reason == KVM_EXIT_DIRTY_RING_FULL) {
      harvest(v);
      continue;
    }
    if (__builtin_expect(r->exit_reason != KVM_EXIT_IO || r->io.port != PORT_HALT ||
                             r->io.direction != KVM_EXIT_IO_OUT || r->io.size != 1 || r->io.count != 1,
                         0))
      unexpected_exit(v, fig);
    return;
  }
}

/* ---- the snapshot: resident pages into a memfd (what Snapshot.capture does) ---- */
struct image {
  int fd;
  uint8_t *map; /* read-only private mapping: what restores copy from */
  uint64_t size, pages_written;
};

static struct image capture(const uint8_t *mem, uint64_t size, unsigned char *vec) {
  struct image im = {.size = size};
  im.fd = memfd_create("snapfloor-snapshot", MFD_CLOEXEC);
  CHECK(im.fd, "memfd_create");
  CHECK(ftruncate(im.fd, (off_t)size), "ftruncate");
  CHECK(mincore((void *)mem, size, vec), "mincore");
  uint64_t npages = size / PAGE;
  for (uint64_t a = 0; a < npages;) {
    if (!(vec[a] & 1)) {
      a++;
      continue;
    }
    uint64_t b = a;
    while (b < npages && (vec[b] & 1)) b++;
    uint64_t off = a * PAGE, len = (b - a) * PAGE;
    while (len) {
      ssize_t w = pwrite(im.fd, mem + off, len, (off_t)off);
      CHECK(w, "pwrite");
      off += w, len -= w;
    }
    im.pages_written += b - a;
    a = b;
  }
  im.map = mmap(0, size, PROT_READ, MAP_PRIVATE, im.fd, 0);
  if (im.map == MAP_FAILED) fail("mmap snapshot: %s", strerror(errno));
  return im;
}
static void image_free(struct image *im) {
  munmap(im->map, im->size);
  close(im->fd);
}

/* ---- specs ---- */
struct spec {
  char kind[32], label[96];
  uint64_t heap, n, resident, copy_bytes;
  int iters, copy, sregs, tramp, slots, ring, state, par, cpuid;
  enum logmode log;
};

static uint64_t parse_size(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (errno || end == s) fail("bad %s '%s'", what, s);
  switch (*end) {
  case 'K': case 'k': x <<= 10, end++; break;
  case 'M': case 'm': x <<= 20, end++; break;
  case 'G': case 'g': x <<= 30, end++; break;
  }
  if (*end) fail("bad %s '%s'", what, s);
  return x;
}

static struct spec parse_spec(const char *text, int iterations) {
  struct spec sp = {.heap = 1 << 20, .iters = iterations, .copy = 1, .log = LOG_RING, .slots = 1, .cpuid = 1};
  char *copy = strdup(text), *save = NULL;
  char *kind = strtok_r(copy, ":", &save);
  if (!kind || strlen(kind) >= sizeof sp.kind) fail("bad spec '%s'", text);
  strcpy(sp.kind, kind);
  snprintf(sp.label, sizeof sp.label, "%s", kind);
  if (strcmp(kind, "call_restore") && strcmp(kind, "snapshot_create") && strcmp(kind, "vm_create"))
    fail("unknown kind '%s' (call_restore, snapshot_create, vm_create)", kind);
  for (char *kv; (kv = strtok_r(NULL, ":", &save));) {
    char *eq = strchr(kv, '=');
    if (!eq) fail("bad key=value '%s' in '%s'", kv, text);
    *eq = 0;
    const char *k = kv, *val = eq + 1;
    if (!strcmp(k, "label")) snprintf(sp.label, sizeof sp.label, "%s", val);
    else if (!strcmp(k, "heap")) sp.heap = parse_size(val, "heap");
    else if (!strcmp(k, "n")) sp.n = parse_size(val, "n");
    else if (!strcmp(k, "resident")) sp.resident = parse_size(val, "resident");
    else if (!strcmp(k, "iters")) sp.iters = (int)parse_size(val, "iters");
    else if (!strcmp(k, "copy")) sp.copy = (int)parse_size(val, "copy");
    else if (!strcmp(k, "copy_bytes")) sp.copy_bytes = parse_size(val, "copy_bytes");
    else if (!strcmp(k, "sregs")) sp.sregs = (int)parse_size(val, "sregs");
    else if (!strcmp(k, "tramp")) sp.tramp = (int)parse_size(val, "tramp");
    else if (!strcmp(k, "slots")) sp.slots = (int)parse_size(val, "slots");
    else if (!strcmp(k, "ring")) sp.ring = (int)parse_size(val, "ring");
    else if (!strcmp(k, "state")) sp.state = (int)parse_size(val, "state");
    else if (!strcmp(k, "par")) sp.par = (int)parse_size(val, "par");
    else if (!strcmp(k, "cpuid")) sp.cpuid = (int)parse_size(val, "cpuid");
    else if (!strcmp(k, "log")) {
      if (!strcmp(val, "ring")) sp.log = LOG_RING;
      else if (!strcmp(val, "bitmap")) sp.log = LOG_BITMAP;
      else if (!strcmp(val, "none")) sp.log = LOG_NONE;
      else fail("bad log '%s' (ring, bitmap, none)", val);
    } else fail("unknown key '%s' in '%s'", k, text);
  }
  free(copy);
  if (sp.iters < 1) fail("iterations must be positive in '%s'", text);
  if (sp.heap < PAGE || sp.heap % PAGE) fail("heap must be a positive multiple of 4096 in '%s'", text);
  if (sp.n * PAGE + (64 << 10) > sp.heap) fail("n=%llu pages do not fit the heap after its first 64 KiB",
                                                (unsigned long long)sp.n);
  if (sp.copy_bytes && (sp.copy_bytes < DATA_SIZE + 2 * BUF_SIZE || sp.copy_bytes > DATA_SIZE + 2 * BUF_SIZE + STACK_SIZE ||
                        sp.copy_bytes % PAGE))
    fail("copy_bytes must be a multiple of 4096 in [40K, 296K] in '%s'", text);
  if (!strcmp(sp.kind, "vm_create")) {
    if (sp.slots != 1 && sp.slots != 3) fail("slots must be 1 or 3");
    if (sp.ring && sp.slots != 3) fail("ring=1 needs slots=3");
    if (sp.par && sp.slots != 3) fail("par=1 needs slots=3");
  }
  return sp;
}

/* Maps and builds guest memory for a spec: anonymous, lazily backed. */
static uint8_t *map_guest(const struct layout *L) {
  uint8_t *mem = mmap(0, L->total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) fail("mmap guest memory: %s", strerror(errno));
  return mem;
}

static void make_msg(uint64_t msg[8], uint64_t seed, uint64_t n, uint64_t addr) {
  for (int k = 0; k < 8; k++) msg[k] = seed * 0x9E3779B97F4A7C15ull + k;
  msg[1] = n;
  msg[2] = addr;
}

static const int WARMUP = 30;

/* The regions every restore copies whole, as hlsandbox's: globals, both I/O
 * buffers, the top of the stack. */
struct range { uint64_t gpa, size; };
static int copied_ranges(const struct layout *L, uint64_t copy_bytes, struct range out[3]) {
  uint64_t top = copy_bytes ? copy_bytes - DATA_SIZE - 2 * BUF_SIZE : STACK_COPY;
  out[0] = (struct range){GPA_DATA, DATA_SIZE};
  out[1] = (struct range){GPA_IN, 2 * BUF_SIZE};
  out[2] = (struct range){L->stack_top - top, top};
  return top ? 3 : 2;
}

static void bench_call_restore(const struct spec *sp) {
  const char *fig = sp->label;
  struct vm v = {0};
  v.L = make_layout(sp->heap);
  v.log = sp->log;
  v.nslots = sp->log == LOG_NONE ? 1 : 3;
  v.mem = map_guest(&v.L);
  build_image(v.mem, &v.L, g_pvm);
  if (v.log == LOG_BITMAP) {
    v.bitmap = calloc((v.L.total / PAGE + 63) / 64 + 1, 8);
    if (!v.bitmap) fail("out of memory");
  }
  vm_setup(&v);
  struct kvm_sregs sregs;
  CHECK(ioctl(v.cpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
  initial_sregs(&sregs);
  CHECK(ioctl(v.cpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
  struct kvm_regs regs = initial_regs(&v.L);
  CHECK(ioctl(v.cpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
  struct kvm_xsave *xs = calloc(1, sizeof *xs);
  if (!xs) fail("out of memory");
  CHECK(ioctl(v.cpu, KVM_GET_XSAVE, xs), "KVM_GET_XSAVE");

  /* Take the snapshot the restores go back to. */
  unsigned char *vec = malloc(v.L.total / PAGE);
  if (!vec) fail("out of memory");
  struct image im = capture(v.mem, v.L.total, vec);
  harvest(&v);
  v.n_dirty = 0;
  struct range ranges[3];
  int nranges = sp->copy ? copied_ranges(&v.L, sp->copy_bytes, ranges) : 0;
  uint64_t copied_bytes = 0;
  for (int i = 0; i < nranges; i++) copied_bytes += ranges[i].size;
  struct kvm_regs staged = regs;
  if (sp->tramp) staged.rip = GPA_TRAMP;

  uint64_t heap_addr = v.L.heap_gpa + (64 << 10); /* like the Python side: clear of allocator metadata */
  uint64_t *t_all = alloc_samples(sp->iters), *t_run = alloc_samples(sp->iters), *t_res = alloc_samples(sp->iters);
  uint64_t msg[8], back[8];
  /* Stage the snapshot's registers for the first call, as a restore would. */
  v.run->s.regs.regs = staged;
  v.run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
  if (sp->tramp) {
    uint64_t target = regs.rip;
    memcpy(v.mem + GPA_TRAMP + TRAMP_TARGET, &target, 8);
    memcpy(v.mem + GPA_TRAMP + TRAMP_FXSAVE, xs->region, 512);
  }
  g_alarm = 0;
  alarm(20 + sp->iters / 200);
  for (int i = -WARMUP; i < sp->iters; i++) {
    uint64_t rax = (uint64_t)i * 3 + 1;
    make_msg(msg, (uint64_t)i, sp->n, heap_addr);
    uint64_t t0 = now_ns();
    /* the call */
    memcpy(v.mem + GPA_IN, msg, MSG_SIZE);
    v.run->s.regs.regs.rax = rax; /* the restore staged the rest (kvm_dirty_regs is set) */
    v.run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
    run_to_halt(&v, fig);
    memcpy(back, v.mem + GPA_OUT, MSG_SIZE);
    uint64_t t1 = now_ns();
    /* the restore */
    size_t nd;
    if (v.log == LOG_NONE) {
      for (uint64_t p = 0; p < sp->n; p++) {
        uint64_t off = heap_addr + p * PAGE;
        memcpy(v.mem + off, im.map + off, PAGE);
      }
      nd = sp->n;
    } else {
      harvest(&v);
      nd = v.n_dirty;
      for (size_t k = 0; k < nd; k++) {
        uint64_t off = v.L.heap_gpa + v.dirty[k] * PAGE;
        memcpy(v.mem + off, im.map + off, PAGE);
      }
      v.n_dirty = 0;
    }
    for (int r = 0; r < nranges; r++) memcpy(v.mem + ranges[r].gpa, im.map + ranges[r].gpa, ranges[r].size);
    if (sp->tramp) {
      uint64_t target = regs.rip;
      memcpy(v.mem + GPA_TRAMP + TRAMP_TARGET, &target, 8);
      memcpy(v.mem + GPA_TRAMP + TRAMP_FXSAVE, xs->region, 512);
    }
    v.run->s.regs.regs = staged;
    v.run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
    if (sp->sregs) {
      v.run->s.regs.sregs = sregs;
      v.run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
    }
    uint64_t t2 = now_ns();
    /* checks, untimed */
    if (back[0] != msg[0] + rax || memcmp(back + 1, msg + 1, MSG_SIZE - 8))
      fail("%s: call %d: wrong result in guest output", fig, i);
    if (nd != sp->n)
      fail("%s: call %d: the restore found %zu dirty pages, the guest wrote %llu", fig, i, nd,
           (unsigned long long)sp->n);
    for (uint64_t p = 0; p < sp->n; p++)
      if (*(uint64_t *)(v.mem + heap_addr + p * PAGE) != 0) fail("%s: call %d: heap page %llu not restored", fig, i,
                                                                  (unsigned long long)p);
    if (sp->copy && *(uint64_t *)(v.mem + GPA_DATA) != 0) fail("%s: call %d: globals not restored", fig, i);
    if (i >= 0) {
      t_all[i] = t2 - t0;
      t_run[i] = t1 - t0;
      t_res[i] = t2 - t1;
    }
  }
  alarm(0);
  printf("#info %s.memory_bytes %llu\n#info %s.copied_bytes %llu\n#info %s.dirty_pages %llu\n", fig,
         (unsigned long long)v.L.total, fig, (unsigned long long)copied_bytes, fig, (unsigned long long)sp->n);
  report(fig, "", t_all, sp->iters);
  report(fig, ".run", t_run, sp->iters);
  report(fig, ".restore", t_res, sp->iters);
  free(t_all), free(t_run), free(t_res), free(vec), free(xs), free(v.bitmap), free(v.dirty);
  image_free(&im);
  vm_teardown(&v);
}

static void bench_snapshot_create(const struct spec *sp) {
  const char *fig = sp->label;
  struct vm v = {0};
  v.L = make_layout(sp->heap);
  v.log = sp->log == LOG_NONE ? LOG_NONE : LOG_RING;
  v.nslots = v.log == LOG_NONE ? 1 : 3;
  v.mem = map_guest(&v.L);
  build_image(v.mem, &v.L, g_pvm);
  vm_setup(&v);
  struct kvm_sregs sregs;
  CHECK(ioctl(v.cpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
  initial_sregs(&sregs);
  CHECK(ioctl(v.cpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
  struct kvm_regs regs = initial_regs(&v.L);
  CHECK(ioctl(v.cpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
  /* One call, so the guest's pages are touched as after a sandbox's init. */
  uint64_t msg[8];
  make_msg(msg, 1, 1, v.L.heap_gpa + (64 << 10));
  memcpy(v.mem + GPA_IN, msg, MSG_SIZE);
  g_alarm = 0;
  alarm(20 + sp->iters / 20);
  run_to_halt(&v, fig);
  unsigned char *vec = malloc(v.L.total / PAGE);
  if (!vec) fail("out of memory");
  /* Touch heap pages from the host until `resident` pages are resident. */
  CHECK(mincore(v.mem, v.L.total, vec), "mincore");
  uint64_t resident = 0;
  for (uint64_t p = 0; p < v.L.total / PAGE; p++) resident += vec[p] & 1;
  for (uint64_t gpa = v.L.heap_gpa; resident < sp->resident && gpa < v.L.guard_gpa; gpa += PAGE) {
    uint64_t p = gpa / PAGE;
    if (vec[p] & 1) continue;
    v.mem[gpa] = 0; /* a write: backs the page */
    vec[p] = 1;
    resident++;
  }
  struct kvm_xsave *xs = calloc(1, sizeof *xs);
  if (!xs) fail("out of memory");
  uint64_t *t = alloc_samples(sp->iters);
  uint64_t written = 0;
  for (int i = -3; i < sp->iters; i++) {
    uint64_t t0 = now_ns();
    struct image im = capture(v.mem, v.L.total, vec);
    struct kvm_regs r;
    struct kvm_sregs s;
    CHECK(ioctl(v.cpu, KVM_GET_REGS, &r), "KVM_GET_REGS");
    CHECK(ioctl(v.cpu, KVM_GET_SREGS, &s), "KVM_GET_SREGS");
    CHECK(ioctl(v.cpu, KVM_GET_XSAVE, xs), "KVM_GET_XSAVE");
    harvest(&v); /* dirty pages are relative to this snapshot from now on */
    v.n_dirty = 0;
    uint64_t t1 = now_ns();
    written = im.pages_written;
    if (written != resident || memcmp(im.map + GPA_CODE, v.mem + GPA_CODE, PAGE))
      fail("%s: snapshot wrote %llu pages, %llu are resident, or differs", fig, (unsigned long long)written,
           (unsigned long long)resident);
    image_free(&im);
    if (i >= 0) t[i] = t1 - t0;
  }
  alarm(0);
  printf("#info %s.memory_bytes %llu\n#info %s.resident_pages %llu\n", fig, (unsigned long long)v.L.total, fig,
         (unsigned long long)written);
  report(fig, "", t, sp->iters);
  free(t), free(vec), free(xs), free(v.dirty);
  vm_teardown(&v);
}

static void bench_vm_create(const struct spec *sp) {
  const char *fig = sp->label;
  struct layout L = make_layout(sp->heap);
  /* The image, built once into a memfd: what a snapshot file or memfd holds. */
  uint8_t *build = map_guest(&L);
  build_image(build, &L, g_pvm);
  unsigned char *vec = malloc(L.total / PAGE);
  if (!vec) fail("out of memory");
  struct image im = capture(build, L.total, vec);
  munmap(build, L.total);
  munmap(im.map, im.size);

  /* The vCPU state to load: sregs from a scratch VM's defaults, plus ours. */
  struct vm scratch = {.L = L, .nslots = 1, .log = LOG_NONE};
  scratch.mem = map_guest(&L);
  vm_setup(&scratch);
  struct kvm_sregs sregs;
  CHECK(ioctl(scratch.cpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
  initial_sregs(&sregs);
  struct kvm_xsave *xs = calloc(1, sizeof *xs);
  if (!xs) fail("out of memory");
  CHECK(ioctl(scratch.cpu, KVM_GET_XSAVE, xs), "KVM_GET_XSAVE");
  struct {
    struct kvm_msrs h;
    struct kvm_msr_entry e[9];
  } msrs = {0};
  static const uint32_t idx[9] = {0x174, 0x175, 0x176, 0x277, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
                                  0xC0000102};
  msrs.h.nmsrs = 9;
  for (int k = 0; k < 9; k++) msrs.e[k].index = idx[k];
  int nmsrs = ioctl(scratch.cpu, KVM_GET_MSRS, &msrs);
  CHECK(nmsrs, "KVM_GET_MSRS");
  msrs.h.nmsrs = nmsrs;
  vm_teardown(&scratch);
  struct kvm_regs regs = initial_regs(&L);

  uint64_t *t_create = alloc_samples(sp->iters), *t_down = alloc_samples(sp->iters);
  g_alarm = 0;
  alarm(30 + sp->iters / 10);
  for (int i = -5; i < sp->iters; i++) {
    struct vm v = {.L = L, .nslots = sp->slots, .log = sp->ring ? LOG_RING : LOG_NONE};
    uint64_t msg[8], back[8], rax = (uint64_t)i + 7;
    make_msg(msg, (uint64_t)i, 0, 0);
    uint64_t t0 = now_ns();
    v.mem = mmap(0, L.total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, im.fd, 0);
    if (v.mem == MAP_FAILED) fail("mmap image: %s", strerror(errno));
    vm_setup_par(&v, sp->par, sp->cpuid);
    CHECK(ioctl(v.cpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
    regs.rax = rax;
    CHECK(ioctl(v.cpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
    if (sp->state) {
      CHECK(ioctl(v.cpu, KVM_SET_XSAVE, xs), "KVM_SET_XSAVE");
      CHECK(ioctl(v.cpu, KVM_SET_MSRS, &msrs), "KVM_SET_MSRS");
    }
    memcpy(v.mem + GPA_IN, msg, MSG_SIZE);
    run_to_halt(&v, fig);
    memcpy(back, v.mem + GPA_OUT, MSG_SIZE);
    uint64_t t1 = now_ns();
    vm_teardown(&v);
    uint64_t t2 = now_ns();
    if (back[0] != msg[0] + rax || memcmp(back + 1, msg + 1, MSG_SIZE - 8))
      fail("%s: VM %d: wrong result in guest output", fig, i);
    if (i >= 0) {
      t_create[i] = t1 - t0;
      t_down[i] = t2 - t1;
    }
  }
  alarm(0);
  printf("#info %s.memory_bytes %llu\n#info %s.image_pages %llu\n", fig, (unsigned long long)L.total, fig,
         (unsigned long long)im.pages_written);
  report(fig, "", t_create, sp->iters);
  report(fig, ".teardown", t_down, sp->iters);
  free(t_create), free(t_down), free(vec), free(xs);
  close(im.fd);
}

int main(int argc, char **argv) {
  if (argc < 3) fail("usage: snapfloor ITERATIONS SPEC [SPEC ...] (see the header of snapfloor.c)");
  char *end;
  long iterations = strtol(argv[1], &end, 10);
  if (*end || iterations < 1) fail("bad ITERATIONS '%s'", argv[1]);
  struct spec *specs = calloc(argc - 2, sizeof *specs);
  if (!specs) fail("out of memory");
  for (int i = 2; i < argc; i++) specs[i - 2] = parse_spec(argv[i], (int)iterations); /* all checked first */

  struct sigaction sa = {0};
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, 0); /* no SA_RESTART: KVM_RUN returns EINTR */
  kvm_open();
  printf("#info kvm_pvm %d\n", g_pvm);
  for (int i = 0; i < argc - 2; i++) {
    const struct spec *sp = &specs[i];
    if (!strcmp(sp->kind, "call_restore")) bench_call_restore(sp);
    else if (!strcmp(sp->kind, "snapshot_create")) bench_snapshot_create(sp);
    else bench_vm_create(sp);
  }
  free(specs);
  return 0;
}
