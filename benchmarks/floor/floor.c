/* floor.c - the cost floor of an hlsandbox guest call, measured with raw KVM.
 *
 * hlsandbox cannot make a guest call cheaper than the KVM exits it needs. This
 * program measures those exits with nothing else in the way, using the same
 * guest setup the host uses (docs/abi.md): a 64-bit CPL3 guest (CS 0x23,
 * SS 0x1b) on 4-level identity page tables with user pages, a TSS whose I/O
 * bitmap allows exactly the guest's ports, registers passed through
 * kvm_run->s.regs (SYNC_REGS, no vCPU ioctl on the hot path) and a 64-byte
 * message copied in and out of guest memory every call.
 *
 * Figures (one line each on stdout: `name median_us p10_us p90_us iterations`):
 *   exit_roundtrip       one call: host writes the message + a register,
 *                        KVM_RUN, guest copies the message to its output
 *                        buffer and does `out 108` (HALT), host reads 64 bytes.
 *   host_call_roundtrip  one call containing one host call: as above, but the
 *                        guest first does `out 101` (CALL_FUNCTION), the host
 *                        reads the request and writes a 64-byte reply, then the
 *                        guest copies the reply out and does `out 108`.
 *   sum_c                the guest SDK test function Sum(n) run natively on the
 *                        host (iterations = repetitions), to compare with the
 *                        guest's Sum: CPL3 guest code should run at native speed.
 * Lines starting with `#info key value` carry extra facts (Sum result, kvm-pvm).
 *
 * Usage: floor [ITERATIONS [SUM_N [SUM_REPS [FIGURES]]]]
 *   ITERATIONS  timed round trips per exit figure (default 2000)
 *   SUM_N       n for sum_c (default 10000000; 0 skips sum_c)
 *   SUM_REPS    timed repetitions of sum_c (default 11)
 *   FIGURES     comma-separated subset of the figure names (default all)
 * Exit status 0, or 2 with a message on stderr on any KVM error or unexpected
 * guest exit.
 *
 * Build: gcc -O2 -o floor floor.c (no dependencies beyond linux/kvm.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ---- guest ports (docs/abi.md) ---- */
#define PORT_CALL_FUNCTION 101
#define PORT_HALT 108
#define PORT_FAULT 110 /* used only by the CPL0 fault stubs; not in the I/O bitmap */

/* ---- guest physical (= virtual) layout, one 2 MiB slot, 4 KiB pages ----
 * Mirrors the ABI's order: null page, page tables (not mapped), system pages
 * (supervisor only), code (user RX), buffers and stack (user RW NX). */
#define MEM_SIZE (2u << 20)
#define GPA_PML4 0x1000
#define GPA_PDPT 0x2000
#define GPA_PD 0x3000
#define GPA_PT 0x4000
#define GPA_GDT 0x5000 /* GDT at 0x5000, IDT at 0x5800, same page */
#define GPA_IDT 0x5800
#define GPA_TSS 0x6000 /* 0x68-byte TSS + 8 KiB I/O bitmap + 1 terminator byte: 3 pages */
#define TSS_IOMAP 0x68
#define TSS_LIMIT (TSS_IOMAP + 8192) /* includes the 0xff byte after the bitmap */
#define GPA_STACK0 0x9000            /* CPL0 stack page for the fault stubs; RSP0 = top */
#define GPA_STUBS 0xa000             /* CPL0 fault stubs, 16 bytes apart */
#define GPA_CODE 0x10000             /* guest code, user RX */
#define GPA_IN 0x20000               /* input buffer (host -> guest), user RW NX */
#define GPA_OUT 0x21000              /* output buffer (guest -> host), user RW NX */
#define GPA_STACK 0x30000            /* user stack 0x30000..0x40000, user RW NX */
#define STACK_TOP 0x40000

#define MSG_SIZE 64 /* the message a call copies in and reads back */

#define PTE_P 1ull
#define PTE_W 2ull
#define PTE_U 4ull
#define PTE_NX (1ull << 63)

/* ---- guest code ----
 * Assembled by gcc into the host binary's .rodata and copied into guest memory
 * at GPA_CODE. Position independent: absolute addresses are immediates, jumps
 * are relative. Each call: copy the 64-byte message IN -> OUT (what a guest
 * does at minimum: read its CALL record, write its RETURN record), add rax
 * (set by the host through SYNC_REGS) into OUT[0] so the host can check the
 * register write took effect, then exit. After the exit the host resumes the
 * vCPU where it stopped, so `jmp 1b` starts the next call, exactly like the
 * SDK's dispatch loop. */
#define XSTR(x) STR(x)
#define STR(x) #x
__asm__(".pushsection .rodata\n"
        ".globl guest_call_start, guest_call_end, guest_hostcall_start, guest_hostcall_end\n"
        "guest_call_start:\n"
        "1:  mov $" XSTR(GPA_IN) ", %esi\n"
        "    mov $" XSTR(GPA_OUT) ", %edi\n"
        "    mov $8, %ecx\n"
        "    rep movsq\n"
        "    add %rax, " XSTR(GPA_OUT) "\n"
        "    out %al, $" XSTR(PORT_HALT) "\n"
        "    jmp 1b\n"
        "guest_call_end:\n"
        "guest_hostcall_start:\n"
        "1:  mov $" XSTR(GPA_IN) ", %esi\n" /* read the call, write the host-call request */
        "    mov $" XSTR(GPA_OUT) ", %edi\n"
        "    mov $8, %ecx\n"
        "    rep movsq\n"
        "    add %rax, " XSTR(GPA_OUT) "\n"
        "    out %al, $" XSTR(PORT_CALL_FUNCTION) "\n"
        "    mov $" XSTR(GPA_IN) ", %esi\n" /* read the host's reply, write the call's result */
        "    mov $" XSTR(GPA_OUT) ", %edi\n"
        "    mov $8, %ecx\n"
        "    rep movsq\n"
        "    out %al, $" XSTR(PORT_HALT) "\n"
        "    jmp 1b\n"
        "guest_hostcall_end:\n"
        ".popsection\n");
extern const uint8_t guest_call_start[], guest_call_end[], guest_hostcall_start[], guest_hostcall_end[];

#define FLOOR_NAME "floor"
#include "floor_common.h"

/* ---- the VM ---- */
struct vm {
  int kvm, vm, cpu;
  struct kvm_run *run;
  int run_size;
  uint8_t *mem;
};

static const char *exit_name(uint32_t r) {
  static char b[32];
  switch (r) {
  case KVM_EXIT_IO: return "IO";
  case KVM_EXIT_MMIO: return "MMIO";
  case KVM_EXIT_HLT: return "HLT";
  case KVM_EXIT_SHUTDOWN: return "SHUTDOWN (triple fault?)";
  case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
  case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
  case KVM_EXIT_INTR: return "INTR";
  case KVM_EXIT_EXCEPTION: return "EXCEPTION";
  case KVM_EXIT_DEBUG: return "DEBUG";
  }
  snprintf(b, sizeof b, "exit#%u", r);
  return b;
}

/* Dies describing an exit that is not the one expected. A guest CPU exception
 * arrives as `out FAULT` from the CPL0 stubs; decode its frame. */
static void unexpected_exit(struct vm *v, const char *figure, int expected_port) {
  struct kvm_run *r = v->run;
  struct kvm_regs g;
  int have_regs = ioctl(v->cpu, KVM_GET_REGS, &g) == 0;
  if (r->exit_reason == KVM_EXIT_IO && r->io.port == PORT_FAULT && have_regs) {
    unsigned vec = *((uint8_t *)r + r->io.data_offset);
    /* vectors with a CPU-pushed error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX */
    int has_err = vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30;
    uint64_t *frame = (uint64_t *)(v->mem + (g.rsp & (MEM_SIZE - 1)));
    struct kvm_sregs s;
    unsigned long long cr2 = ioctl(v->cpu, KVM_GET_SREGS, &s) == 0 ? s.cr2 : 0;
    fail("%s: guest CPU exception vector %u error code %#llx at rip %#llx (cr2 %#llx)", figure, vec,
         has_err ? (unsigned long long)frame[0] : 0ull, (unsigned long long)frame[has_err], cr2);
  }
  char detail[160] = "";
  if (r->exit_reason == KVM_EXIT_IO)
    snprintf(detail, sizeof detail, " port %u dir %s size %u count %u", r->io.port, r->io.direction ? "out" : "in",
             r->io.size, r->io.count);
  else if (r->exit_reason == KVM_EXIT_INTERNAL_ERROR)
    snprintf(detail, sizeof detail, " suberror %u data %#llx %#llx", r->internal.suberror,
             (unsigned long long)(r->internal.ndata > 0 ? r->internal.data[0] : 0),
             (unsigned long long)(r->internal.ndata > 1 ? r->internal.data[1] : 0));
  else if (r->exit_reason == KVM_EXIT_FAIL_ENTRY)
    snprintf(detail, sizeof detail, " hw reason %#llx",
             (unsigned long long)r->fail_entry.hardware_entry_failure_reason);
  fail("%s: unexpected exit %s%s (expected out to port %d); rip %#llx", figure, exit_name(r->exit_reason), detail,
       expected_port, have_regs ? (unsigned long long)g.rip : 0ull);
}

/* One KVM_RUN that must end in `out %al, $port` (1 byte, count 1). */
static inline void run_expect_out(struct vm *v, const char *figure, int port) {
  for (;;) {
    int rc = ioctl(v->cpu, KVM_RUN, 0);
    if (rc == 0) break;
    if (errno == EINTR && !g_alarm) continue; /* a stray signal: re-enter */
    if (errno == EINTR) fail("%s: guest did not exit within the watchdog time", figure);
    CHECK(rc, "KVM_RUN");
  }
  struct kvm_run *r = v->run;
  if (__builtin_expect(r->exit_reason != KVM_EXIT_IO || r->io.port != port || r->io.direction != KVM_EXIT_IO_OUT ||
                           r->io.size != 1 || r->io.count != 1,
                       0))
    unexpected_exit(v, figure, port);
}

static void set_cpuid(struct vm *v) {
  /* Without SET_CPUID2 kvm-pvm limits guest physical addresses to 36 bits
   * (docs/platform.md). Grow the buffer until the supported table fits. */
  for (int nent = 64; nent <= 4096; nent *= 2) {
    struct kvm_cpuid2 *c = calloc(1, sizeof *c + nent * sizeof(struct kvm_cpuid_entry2));
    if (!c) fail("out of memory");
    c->nent = nent;
    if (ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, c) < 0) {
      free(c);
      if (errno == E2BIG) continue;
      fail("KVM_GET_SUPPORTED_CPUID failed: %s", strerror(errno));
    }
    CHECK(ioctl(v->cpu, KVM_SET_CPUID2, c), "KVM_SET_CPUID2");
    free(c);
    return;
  }
  fail("KVM_GET_SUPPORTED_CPUID: table too large");
}

/* Unaligned-safe little-endian stores into guest structures (the TSS's
 * 64-bit fields sit at 4 mod 8). */
static void put64(uint8_t *p, uint64_t x) { memcpy(p, &x, 8); }
static void put16(uint8_t *p, uint16_t x) { memcpy(p, &x, 2); }

/* Maps one 4 KiB page (identity) in the single page table. */
static void map_page(uint8_t *mem, uint64_t gpa, uint64_t flags) {
  ((uint64_t *)(mem + GPA_PT))[gpa >> 12] = gpa | flags;
}

static void vm_create(struct vm *v, const uint8_t *code, size_t code_len) {
  memset(v, 0, sizeof *v);
  v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (v->kvm < 0) fail("open /dev/kvm: %s", strerror(errno));
  int api = ioctl(v->kvm, KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) fail("KVM API version %d, expected %d", api, KVM_API_VERSION);
  int sync = ioctl(v->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
  if (sync < 0 || !(sync & KVM_SYNC_X86_REGS)) fail("KVM_CAP_SYNC_REGS lacks KVM_SYNC_X86_REGS (%d)", sync);

  /* Pre-faulted host memory (MAP_POPULATE): first touches cost 4.5-7 us per
   * page on kvm-pvm, and the host pre-faults too. */
  v->mem = mmap(0, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (v->mem == MAP_FAILED) fail("mmap guest memory: %s", strerror(errno));
  uint8_t *mem = v->mem;

  /* Page tables, built once before the guest runs (kvm-pvm does not see host
   * edits of guest page tables after the guest ran). Upper levels allow
   * everything; the leaf PTEs decide. */
  ((uint64_t *)(mem + GPA_PML4))[0] = GPA_PDPT | PTE_P | PTE_W | PTE_U;
  ((uint64_t *)(mem + GPA_PDPT))[0] = GPA_PD | PTE_P | PTE_W | PTE_U;
  ((uint64_t *)(mem + GPA_PD))[0] = GPA_PT | PTE_P | PTE_W | PTE_U;
  map_page(mem, GPA_GDT, PTE_P | PTE_W | PTE_NX); /* system: supervisor only */
  for (uint64_t p = GPA_TSS; p < GPA_TSS + TSS_LIMIT + 1; p += 4096) map_page(mem, p, PTE_P | PTE_W | PTE_NX);
  map_page(mem, GPA_STACK0, PTE_P | PTE_W | PTE_NX);
  map_page(mem, GPA_STUBS, PTE_P); /* supervisor RX */
  map_page(mem, GPA_CODE, PTE_P | PTE_U); /* user RX */
  map_page(mem, GPA_IN, PTE_P | PTE_W | PTE_U | PTE_NX);
  map_page(mem, GPA_OUT, PTE_P | PTE_W | PTE_U | PTE_NX);
  for (uint64_t p = GPA_STACK; p < STACK_TOP; p += 4096) map_page(mem, p, PTE_P | PTE_W | PTE_U | PTE_NX);

  /* GDT: 0x08 kernel code64, 0x10 kernel data, 0x18 user data (0x1b),
   * 0x20 user code64 (0x23), 0x28 64-bit TSS (16 bytes). */
  uint64_t *gdt = (uint64_t *)(mem + GPA_GDT);
  gdt[1] = 0x00AF9A000000FFFFull;
  gdt[2] = 0x00CF92000000FFFFull;
  gdt[3] = 0x00CFF2000000FFFFull;
  gdt[4] = 0x00AFFA000000FFFFull;
  gdt[5] = (uint64_t)(TSS_LIMIT & 0xffff) | ((uint64_t)(GPA_TSS & 0xffffff) << 16) | (0x8Bull << 40) |
           ((uint64_t)((TSS_LIMIT >> 16) & 0xf) << 48) | ((uint64_t)((GPA_TSS >> 24) & 0xff) << 56);
  gdt[6] = (uint64_t)GPA_TSS >> 32;

  /* TSS: RSP0 and IST1 for the fault stubs; I/O bitmap denying every port but
   * the guest's two (IOPL alone does not allow CPL3 `out` on kvm-pvm). */
  uint8_t *tss = mem + GPA_TSS;
  put64(tss + 4, GPA_STACK0 + 4096);    /* RSP0 */
  put64(tss + 0x24, GPA_STACK0 + 4096); /* IST1 */
  put16(tss + 0x66, TSS_IOMAP);
  memset(tss + TSS_IOMAP, 0xff, 8192 + 1);
  tss[TSS_IOMAP + PORT_CALL_FUNCTION / 8] &= ~(1u << (PORT_CALL_FUNCTION % 8));
  tss[TSS_IOMAP + PORT_HALT / 8] &= ~(1u << (PORT_HALT % 8));

  /* IDT: vectors 0-31 -> CPL0 stubs `mov $vec,%al; out %al,$FAULT` (emulator
   * safe on kvm-pvm), so a broken guest is reported, not silently hung. */
  for (int vec = 0; vec < 32; vec++) {
    uint64_t h = GPA_STUBS + vec * 16;
    uint8_t stub[] = {0xb0, (uint8_t)vec, 0xe6, PORT_FAULT, 0xeb, 0xfe}; /* ...; jmp . */
    memcpy(mem + h, stub, sizeof stub);
    uint8_t *e = mem + GPA_IDT + vec * 16;
    put16(e, h & 0xffff);
    put16(e + 2, 0x08);
    e[4] = vec == 8 ? 1 : 0; /* #DF on IST1 */
    e[5] = 0x8E;             /* present, DPL0, 64-bit interrupt gate */
    put16(e + 6, (h >> 16) & 0xffff);
    put64(e + 8, h >> 32); /* offset 63:32, then the reserved dword */
  }

  if (code_len > 4096) fail("guest code too large");
  memcpy(mem + GPA_CODE, code, code_len);

  v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
  CHECK(v->vm, "KVM_CREATE_VM");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem};
  CHECK(ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
  v->cpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
  CHECK(v->cpu, "KVM_CREATE_VCPU");
  v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  CHECK(v->run_size, "KVM_GET_VCPU_MMAP_SIZE");
  v->run = mmap(0, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->cpu, 0);
  if (v->run == MAP_FAILED) fail("mmap kvm_run: %s", strerror(errno));
  set_cpuid(v);

  struct kvm_sregs s;
  CHECK(ioctl(v->cpu, KVM_GET_SREGS, &s), "KVM_GET_SREGS");
  s.cr0 = 0x80010033; /* PG WP NE ET MP PE */
  s.cr3 = GPA_PML4;
  s.cr4 = 0x620;      /* PAE OSFXSR OSXMMEXCPT */
  s.efer = 0xD01;     /* LMA LME NXE SCE */
  s.cs = (struct kvm_segment){.base = 0, .limit = 0xffffffff, .selector = 0x23, .type = 11, .present = 1, .dpl = 3,
                              .db = 0, .s = 1, .l = 1, .g = 1};
  s.ss = (struct kvm_segment){.base = 0, .limit = 0xffffffff, .selector = 0x1b, .type = 3, .present = 1, .dpl = 3,
                              .db = 1, .s = 1, .l = 0, .g = 1};
  s.ds = s.es = s.fs = s.gs = s.ss;
  s.tr = (struct kvm_segment){.base = GPA_TSS, .limit = TSS_LIMIT, .selector = 0x28, .type = 11, .present = 1};
  s.gdt.base = GPA_GDT;
  s.gdt.limit = 7 * 8 - 1;
  s.idt.base = GPA_IDT;
  s.idt.limit = 32 * 16 - 1;
  CHECK(ioctl(v->cpu, KVM_SET_SREGS, &s), "KVM_SET_SREGS");
  struct kvm_regs g = {0};
  g.rip = GPA_CODE;
  g.rsp = STACK_TOP;
  g.rflags = 0x2; /* interrupts off, IOPL 0: the I/O bitmap decides */
  CHECK(ioctl(v->cpu, KVM_SET_REGS, &g), "KVM_SET_REGS");

  /* Ask KVM to publish the registers in kvm_run->s.regs at every exit, so the
   * hot path can edit one and mark it dirty instead of a 6-7 us SET_REGS. */
  v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
  /* Until the first exit s.regs holds zeros; seed it, or the first call's
   * dirty s.regs would enter the guest at rip 0. */
  v->run->s.regs.regs = g;
}

static void vm_destroy(struct vm *v) {
  munmap(v->run, v->run_size);
  close(v->cpu);
  close(v->vm);
  close(v->kvm);
  munmap(v->mem, MEM_SIZE);
}

/* Sets rax for the next entry the way the host's hot path does: through the
 * shared kvm_run page, no ioctl. s.regs holds the state of the last exit
 * (kvm_valid_regs), so only rax changes. */
static inline void set_rax_sync(struct vm *v, uint64_t rax) {
  v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
  v->run->s.regs.regs.rax = rax;
  v->run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
}

/* The message: 8 u64 words, word 0 varies per call so the checks below prove
 * the guest really copied this call's message. */
static inline void make_msg(uint64_t msg[8], uint64_t seed) {
  for (int k = 0; k < 8; k++) msg[k] = seed * 0x9E3779B97F4A7C15ull + k;
}

static const int WARMUP = 50; /* untimed calls first: page faults, caches, first-entry costs */

static void bench_exit_roundtrip(int iterations) {
  const char *fig = "exit_roundtrip";
  struct vm v;
  vm_create(&v, guest_call_start, guest_call_end - guest_call_start);
  uint64_t *samples = malloc(sizeof(uint64_t) * iterations);
  if (!samples) fail("out of memory");
  uint64_t msg[8], back[8];
  g_alarm = 0;
  alarm(10 + iterations / 1000); /* ~35 us each: generous */
  for (int i = -WARMUP; i < iterations; i++) {
    uint64_t rax = (uint64_t)i * 3 + 1;
    make_msg(msg, (uint64_t)i);
    uint64_t t0 = now_ns();
    memcpy(v.mem + GPA_IN, msg, MSG_SIZE); /* the CALL record */
    set_rax_sync(&v, rax);
    run_expect_out(&v, fig, PORT_HALT);
    memcpy(back, v.mem + GPA_OUT, MSG_SIZE); /* the RETURN record */
    uint64_t t1 = now_ns();
    if (back[0] != msg[0] + rax || memcmp(back + 1, msg + 1, MSG_SIZE - 8))
      fail("%s: call %d: wrong result in guest output (got %#llx, want %#llx)", fig, i,
           (unsigned long long)back[0], (unsigned long long)(msg[0] + rax));
    if (i >= 0) samples[i] = t1 - t0;
  }
  alarm(0);
  report(fig, "", samples, iterations);
  free(samples);
  vm_destroy(&v);
}

static void bench_host_call_roundtrip(int iterations) {
  const char *fig = "host_call_roundtrip";
  struct vm v;
  vm_create(&v, guest_hostcall_start, guest_hostcall_end - guest_hostcall_start);
  uint64_t *samples = malloc(sizeof(uint64_t) * iterations);
  if (!samples) fail("out of memory");
  uint64_t msg[8], req[8], reply[8], back[8];
  g_alarm = 0;
  alarm(10 + iterations / 500);
  for (int i = -WARMUP; i < iterations; i++) {
    uint64_t rax = (uint64_t)i * 3 + 1;
    make_msg(msg, (uint64_t)i);
    make_msg(reply, ~(uint64_t)i);
    uint64_t t0 = now_ns();
    memcpy(v.mem + GPA_IN, msg, MSG_SIZE);
    set_rax_sync(&v, rax);
    run_expect_out(&v, fig, PORT_CALL_FUNCTION); /* guest -> host: the host-call request */
    memcpy(req, v.mem + GPA_OUT, MSG_SIZE);
    memcpy(v.mem + GPA_IN, reply, MSG_SIZE); /* host -> guest: the host function's result */
    v.run->kvm_dirty_regs = 0;               /* resuming a host call writes no registers */
    run_expect_out(&v, fig, PORT_HALT);
    memcpy(back, v.mem + GPA_OUT, MSG_SIZE);
    uint64_t t1 = now_ns();
    if (req[0] != msg[0] + rax || memcmp(req + 1, msg + 1, MSG_SIZE - 8))
      fail("%s: call %d: wrong host-call request in guest output", fig, i);
    if (memcmp(back, reply, MSG_SIZE)) fail("%s: call %d: wrong result in guest output", fig, i);
    if (i >= 0) samples[i] = t1 - t0;
  }
  alarm(0);
  report(fig, "", samples, iterations);
  free(samples);
  vm_destroy(&v);
}

/* The guest SDK's Sum, exactly. noinline + a runtime n so gcc cannot fold it;
 * the multiply-add recurrence cannot be vectorised, like in the guest. */
__attribute__((noinline)) static uint64_t sum(uint64_t n) {
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) s = s * 6364136223846793005ULL + i;
  return s;
}

static void bench_sum_c(uint64_t n, int reps) {
  uint64_t *samples = malloc(sizeof(uint64_t) * reps);
  if (!samples) fail("out of memory");
  volatile uint64_t vn = n; /* keep n opaque to the optimiser */
  uint64_t result = sum(vn); /* warm-up, and the value the guest must return */
  for (int r = 0; r < reps; r++) {
    uint64_t t0 = now_ns();
    uint64_t s = sum(vn);
    uint64_t t1 = now_ns();
    if (s != result) fail("sum_c: nondeterministic result");
    samples[r] = t1 - t0;
  }
  printf("#info sum_c_n %llu\n#info sum_c_result %llu\n", (unsigned long long)n, (unsigned long long)result);
  report("sum_c", "", samples, reps);
  free(samples);
}

static int wanted(const char *figures, const char *name) {
  if (!figures) return 1;
  size_t len = strlen(name);
  for (const char *p = figures; *p;) {
    const char *comma = strchr(p, ',');
    size_t l = comma ? (size_t)(comma - p) : strlen(p);
    if (l == len && !strncmp(p, name, len)) return 1;
    if (!comma) break;
    p = comma + 1;
  }
  return 0;
}

static long parse_arg(const char *s, const char *what, long min) {
  char *end;
  errno = 0;
  long x = strtol(s, &end, 10);
  if (errno || *end || x < min) fail("bad %s '%s' (an integer >= %ld)", what, s, min);
  return x;
}

int main(int argc, char **argv) {
  if (argc > 5) fail("usage: floor [ITERATIONS [SUM_N [SUM_REPS [FIGURES]]]]");
  int iterations = argc > 1 ? (int)parse_arg(argv[1], "ITERATIONS", 1) : 2000;
  uint64_t sum_n = argc > 2 ? (uint64_t)parse_arg(argv[2], "SUM_N", 0) : 10000000;
  int sum_reps = argc > 3 ? (int)parse_arg(argv[3], "SUM_REPS", 1) : 11;
  const char *figures = argc > 4 ? argv[4] : NULL;
  if (figures) {
    /* reject typos instead of silently measuring nothing */
    char *copy = strdup(figures), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
      if (strcmp(t, "exit_roundtrip") && strcmp(t, "host_call_roundtrip") && strcmp(t, "sum_c"))
        fail("unknown figure '%s' (exit_roundtrip, host_call_roundtrip, sum_c)", t);
    free(copy);
  }

  struct sigaction sa = {0};
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, 0); /* no SA_RESTART: KVM_RUN returns EINTR */

  printf("#info kvm_pvm %d\n", access("/sys/module/kvm_pvm", F_OK) == 0);
  if (wanted(figures, "exit_roundtrip")) bench_exit_roundtrip(iterations);
  if (wanted(figures, "host_call_roundtrip")) bench_host_call_roundtrip(iterations);
  if (wanted(figures, "sum_c") && sum_n > 0) bench_sum_c(sum_n, sum_reps);
  return 0;
}
