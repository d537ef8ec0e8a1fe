# cython: language_level=3, boundscheck=False, wraparound=False
"""Hot mode: guest calls without a VM exit (docs/abi.md, "Hot mode").

The vCPU runs on a thread of its own (a C thread that only calls KVM_RUN and
reports how it ended) and the guest, instead of `out`, posts each exit in a
mailbox in guest memory and spins until the host answers. The calling thread
writes the CALL record, answers the guest's post and waits for the next one by
spinning, then by blocking on the vCPU thread (the guest, seeing the host
blocked, parks with an ordinary `out`, which wakes it). A guest that has spun
for `spin` seconds without an answer parks the same way: an idle hot sandbox
burns no CPU, and the next call resumes it with KVM_RUN.

Everything else is the cold call path's: the same records, the same exit
handler (serve), the same poisoning; exits the guest takes with `out` (abort,
faults) or that KVM reports (cancellation, MMIO, shutdown) reach serve() as in
a cold call. The vCPU thread never touches guest memory; only the calling
thread reads the mailbox, and it validates every value the guest wrote."""
cimport cython
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from cpython.exc cimport PyErr_CheckSignals

from ..abi cimport (HL_HOT_STATE, HL_HOT_MODE, HL_HOT_SPIN, HL_HOT_WAITING, HL_HOT_MAILBOX_SIZE, HL_HOT_POSTED,
                    HL_HOT_RESUMED, HL_HOT_PARKED, HL_HOT_ON, HL_HOT_OFF, HL_PORT_LOG, HL_PORT_CALL_FUNCTION,
                    HL_PORT_PRINT, HL_PORT_HALT)
from ..func.wire cimport RecordStack
from ..hypervisor.kvm cimport (VirtualMachine, terminal_exit_code, pthread_t, pthread_self, pthread_kill,
                               pthread_equal, hl_io_direction, hl_io_size, hl_io_count, hl_io_port)
from ..hypervisor.linux_kvm cimport (kvm_run, KVM_RUN, KVM_EXIT_IO, KVM_EXIT_IO_OUT, KVM_EXIT_INTR,
                                     KVM_EXIT_DIRTY_RING_FULL)
from ..mem.shared_memory cimport SharedMemory

import os

from ..errors import ExecutionCanceled, GuestProtocolError, HyperlightError, PoisonedSandbox, UsedAfterFork
from .call_path import claimed_limited_call
from ..hypervisor import device as _device, kvm as _kvm

cdef extern from "errno.h" nogil:
    int errno
    int EINTR, EAGAIN

cdef extern from "unistd.h" nogil:
    int getpid()

cdef extern from "sys/ioctl.h" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "pthread.h" nogil:
    int pthread_create(pthread_t *thread, void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **ret)

cdef extern from "hot_sync.h" nogil:
    uint64_t hl_load_acquire(volatile uint64_t *p)
    void hl_store_release(volatile uint64_t *p, uint64_t v)
    void hl_store_fence(volatile uint64_t *p, uint64_t v)
    int hl_cas(volatile uint64_t *p, uint64_t expect, uint64_t desired, uint64_t *seen)
    uint32_t hl_load32(volatile uint32_t *p)
    void hl_store32(volatile uint32_t *p, uint32_t v)
    int hl_load_int(volatile int *p)
    void hl_pause()
    uint64_t hl_rdtsc()
    uint64_t hl_now_ns()
    void hl_hot_futex_wait(volatile uint32_t *p, uint32_t v, uint64_t ns)
    void hl_hot_futex_wake(volatile uint32_t *p)
    void hl_block_signals_but(int sig)
    int sched_yield()

# The mailbox (docs/abi.md, "Hot mode"; its numbers live in hl_abi.h): u64 words.
cdef enum:
    MB_STATE = HL_HOT_STATE >> 3      # both sides: POSTED/PARKED | port << 8, or RESUMED
    MB_MODE = HL_HOT_MODE >> 3        # host: HL_HOT_ON while hot
    MB_SPIN = HL_HOT_SPIN >> 3        # host: TSC ticks the guest spins before parking
    MB_WAITING = HL_HOT_WAITING >> 3  # host: nonzero while the host blocks
    POSTED = HL_HOT_POSTED
    RESUMED = HL_HOT_RESUMED
    PARKED = HL_HOT_PARKED
    HOT_ON = HL_HOT_ON
    MODE_COLD = HL_HOT_OFF
    PORT_LOG = HL_PORT_LOG
    PORT_CALL_FUNCTION = HL_PORT_CALL_FUNCTION
    PORT_PRINT = HL_PORT_PRINT
    PORT_HALT = HL_PORT_HALT
    CONTINUE = -1000  # internal: the exit was consumed, keep waiting

cdef int CANCEL_SIGNAL = _device.CANCEL_SIGNAL
cdef int EXIT_CANCELED = _kvm.EXIT_CANCELED
cdef int EXIT_MMIO = _kvm.EXIT_MMIO
cdef int EXIT_SHUTDOWN = _kvm.EXIT_SHUTDOWN
cdef int EXIT_INTERNAL_ERROR = _kvm.EXIT_INTERNAL_ERROR
cdef int EXIT_HLT = _kvm.EXIT_HLT
cdef int EXIT_BAD_IO = _kvm.EXIT_BAD_IO
cdef int EXIT_FAIL_ENTRY = _kvm.EXIT_FAIL_ENTRY
cdef int EXIT_OTHER = _kvm.EXIT_OTHER

PARK_TIMEOUT = 1.0  # seconds a guest gets to park when asked before it is stopped by a signal
# Before a restore: the restore resets the guest whatever it did, so one that does not park
# at once is simply stopped (a pool's restorer must not wait a second per hostile guest).
RESTORE_PARK_TIMEOUT = 0.02


cdef struct vcpu_thread:
    int fd
    volatile int *cancel  # the VM's cancel_requested
    volatile uint32_t cmd_seq  # caller: one more KVM_RUN (or quit)
    volatile uint32_t exit_seq  # thread: one more KVM_RUN ended (rc, err)
    volatile uint32_t run_seq  # thread: the command it is about to run (the caller yields until then)
    volatile int quit, stop
    int rc, err


cdef void *vcpu_main(void *arg) noexcept nogil:
    """Runs KVM_RUN once per command and reports how it ended; retries only on a
    signal nobody asked for."""
    cdef vcpu_thread *t = <vcpu_thread *>arg
    cdef uint32_t seen = 0
    cdef int rc, err
    hl_block_signals_but(CANCEL_SIGNAL)
    while True:
        while hl_load32(&t.cmd_seq) == seen:
            hl_hot_futex_wait(&t.cmd_seq, seen, 0)
        seen = hl_load32(&t.cmd_seq)
        if hl_load_int(&t.quit):
            return NULL
        hl_store32(&t.run_seq, seen)
        while True:
            rc = ioctl(t.fd, KVM_RUN, 0)
            err = errno
            if rc < 0 and (err == EINTR or err == EAGAIN) and not hl_load_int(t.cancel) and not hl_load_int(&t.stop):
                continue
            break
        t.rc, t.err = rc, err
        hl_store32(&t.exit_seq, hl_load32(&t.exit_seq) + 1)
        hl_hot_futex_wake(&t.exit_seq)


cdef double _tsc_hz = 0


cdef double tsc_hz():
    """TSC ticks a second, measured once against CLOCK_MONOTONIC (2 ms)."""
    global _tsc_hz
    cdef uint64_t t0, t1, c0, c1
    if _tsc_hz == 0:
        with nogil:
            t0, c0 = hl_now_ns(), hl_rdtsc()
            while hl_now_ns() - t0 < 2000000:
                hl_pause()
            t1, c1 = hl_now_ns(), hl_rdtsc()
        _tsc_hz = (c1 - c0) * 1e9 / (t1 - t0)
    return _tsc_hz


@cython.no_gc_clear  # __dealloc__ needs vm and the thread: they must outlive a GC clear
cdef class HotPath:
    """The call path of a hot sandbox: the interface of CallPath (call, call_restoring,
    restore, begin, end, run_until_halt, poisoned), over a vCPU thread and the mailbox.

    `cold` is the sandbox's CallPath, which keeps the poisoned flag; `mailbox` the host
    address of the mailbox in `memory`; `spin` the seconds both sides spin before they
    block (the host) or park (the guest)."""

    cdef VirtualMachine vm
    cdef RecordStack input, output
    cdef object serve, cold, memory
    cdef volatile uint64_t *mb
    cdef vcpu_thread *t
    cdef pthread_t tid
    cdef bint started, closed
    cdef int pid  # the process that started the vCPU thread (a forked child has no such thread)
    cdef bint parked  # the vCPU thread is idle: the guest sits at an `out` (resume: KVM_RUN)
    cdef bint waking  # the vCPU thread was woken and the guest has not posted since
    cdef bint expect_park  # a resume lost the race with the guest parking: its exit is on the way
    cdef uint32_t cmds, consumed  # KVM_RUN commands sent, exits consumed
    cdef uint64_t posted  # the state word of the exit being served
    cdef uint64_t spin_ns, spin_ticks
    cdef readonly uint64_t posts, wakes, rearms  # exits through the mailbox, KVM_RUNs, re-arms (tests, benchmarks)

    def __init__(self, VirtualMachine vm, RecordStack input, RecordStack output, serve, cold,
                 SharedMemory memory, uint64_t mailbox, double spin):
        if not spin > 0:
            raise ValueError(f"spin must be positive seconds, got {spin!r}")
        if (mailbox % 64 or mailbox < <uint64_t>memory.base
                or mailbox + HL_HOT_MAILBOX_SIZE > <uint64_t>memory.base + memory.size):
            raise ValueError("the hot mailbox is outside guest memory")
        self.vm, self.input, self.output, self.serve, self.cold, self.memory = vm, input, output, serve, cold, memory
        self.mb = <volatile uint64_t *>mailbox
        self.spin_ns = <uint64_t>(spin * 1e9)
        self.spin_ticks = <uint64_t>(spin * tsc_hz())
        self.t = <vcpu_thread *>calloc(1, sizeof(vcpu_thread))
        if self.t == NULL:
            raise MemoryError()
        self.t.fd = vm.vcpu_fd
        self.t.cancel = <volatile int *>&vm.cancel_requested
        self.pid = getpid()
        if pthread_create(&self.tid, NULL, vcpu_main, self.t) != 0:
            raise OSError("cannot start the vCPU thread")
        self.started = True
        self.parked = True  # the guest sits at its last `out HALT`

    @property
    def poisoned(self):
        return self.cold.poisoned

    @poisoned.setter
    def poisoned(self, value):
        self.cold.poisoned = value

    @property
    def pending(self):
        """The snapshot whose vCPU state is staged (CallPath.pending: one home for it)."""
        return self.cold.pending

    @pending.setter
    def pending(self, value):
        self.cold.pending = value

    @property
    def pending_generation(self):
        return self.cold.pending_generation

    @pending_generation.setter
    def pending_generation(self, value):
        self.cold.pending_generation = value

    # -- claiming the vCPU (as CallPath) -------------------------------------------------------

    cpdef uint64_t claim(self, double wait=-2.0) except 0:
        """Claims the vCPU for a call (`wait` as CallPath.begin); kill() now signals the
        vCPU thread."""
        if self.closed:
            raise HyperlightError("the sandbox has left hot mode")
        if getpid() != self.pid:
            raise UsedAfterFork("a hot sandbox cannot be used in a forked child (its vCPU thread is in the parent)")
        cdef uint64_t generation = self.vm.claim(wait)
        self.vm.signal_thread = self.tid
        return generation

    cdef uint64_t _claim_for_call(self, double wait) except 0:
        """claim() for a guest call, which a sandbox poisoned by the call it waited for refuses."""
        cdef uint64_t generation = self.claim(wait)
        if self.cold.poisoned:
            self.vm.release()
            raise PoisonedSandbox(PoisonedSandbox.MESSAGE)
        return generation

    cpdef release(self):
        self.vm.release()

    def call(self, bytes name, tuple tags, int ret_tag, tuple args, double wait=-2.0):
        cdef uint64_t generation = self._claim_for_call(wait)
        try:
            self.input.push_call(name, tags, args)
            self.output.clear()
            self.run_until_halt(generation)
            return self.output.pop_result(ret_tag)
        finally:
            self.vm.release()

    def call_limited(self, bytes name, tuple tags, int ret_tag, tuple args, double wait, double timeout, out):
        """CallPath.call_limited() through the mailbox."""
        cdef uint64_t generation = self._claim_for_call(wait)
        try:
            return claimed_limited_call(self, self.input, self.output, generation, name, tags, ret_tag, args,
                                        timeout, out)
        finally:
            self.vm.release()

    @property
    def on_timeout(self):
        """on_timeout(generation): the cold path's (one home for it)."""
        return self.cold.on_timeout

    def call_restoring(self, bytes name, tuple tags, int ret_tag, tuple args, plan, double wait=-2.0):
        """call(), then the restore `plan` (which needs the guest parked: one exit)."""
        cdef uint64_t generation = self._claim_for_call(wait)
        try:
            self.input.push_call(name, tags, args)
            self.output.clear()
            self.run_until_halt(generation)
            return self.output.pop_result(ret_tag)
        finally:
            try:
                self._park_claimed()
            finally:
                self.vm.release()
            self._restore_parked(plan)

    def restore(self, plan):
        """The fast restore `plan` (CallPath.restore), after parking the guest; the guest
        then waits in the mailbox for the next call (see _rearm())."""
        self.claim()
        try:
            self._park_claimed()
        finally:
            self.vm.release()
        self._restore_parked(plan)

    cdef int _restore_parked(self, plan) except -1:
        self.cold.restore(plan)
        self.claim()
        try:
            self._rearm()
        finally:
            self.vm.release()
        return 0

    cdef int _rearm(self) except -1:
        """Runs a parked guest into the mailbox to wait for the next call (the vCPU
        claimed): that call then costs no KVM_RUN. A no-op unless the guest is parked at
        its HALT and the sandbox is not poisoned."""
        # The guest resumes from its `out HALT` (after a restore: through the restore
        # trampoline), finds `state` still POSTED | HALT and spins as if it had posted it
        # (docs/abi.md, "Hot mode": re-arming); the next call answers it with a CAS.
        if (not self.parked or self.cold.poisoned or self.vm.run_ptr == NULL
                or hl_load32(&self.t.exit_seq) != self.cmds):
            return 0
        self.posted = POSTED | (<uint64_t>PORT_HALT << 8)
        hl_store_release(&self.mb[MB_WAITING], 0)
        hl_store_release(&self.mb[MB_SPIN], self.spin_ticks)
        hl_store_release(&self.mb[MB_MODE], HOT_ON)
        hl_store_release(&self.mb[MB_STATE], self.posted)
        self.parked = False
        if self.cold.pending is not None and self.vm.generation == self.cold.pending_generation + 1:
            # Still the restored state for snapshot(): the guest only waits, below its stack
            # pointer and in the mailbox, and parks where it waits.
            self.cold.pending_generation = self.vm.generation
        self._command_run()
        self.waking = False  # the next call comes later: the guest waits by then, or soon
        self.rearms += 1
        return 0

    cdef int _park_claimed(self) except -1:
        """Before a restore: parks the guest, or stops it if the sandbox is poisoned (a
        guest mid-call) or it does not park within RESTORE_PARK_TIMEOUT."""
        if self.cold.poisoned:
            self._stop()
        else:
            self._park_within(RESTORE_PARK_TIMEOUT)
        return 0

    def park(self):
        """Makes the guest leave the mailbox with an ordinary exit and the vCPU thread go
        idle, so vCPU state can be read or set (snapshot, restore). The vCPU must be claimed."""
        self._park()

    # -- the mailbox ---------------------------------------------------------------------------

    cpdef run_until_halt(self, uint64_t generation):
        """Resumes the guest and serves its exits until it halts (CallPath.run_until_halt)."""
        cdef int rc
        try:
            self._resume()
            while True:
                rc = self._wait()
                if rc == PORT_HALT:
                    return
                self.serve(rc, generation)
                self._resume()
        except BaseException as e:
            self.cold.poisoned = True
            self._stop()
            if not isinstance(e, ExecutionCanceled) and self.vm.run_ptr != NULL:
                self._complete_pending()  # as CallPath: KVM must not finish an old exit later
            raise

    cdef int _complete_pending(self) except -1:
        """VirtualMachine.complete_pending_exit() on the vCPU thread, which owns the vCPU
        while the sandbox is hot (KVM_RUN from another thread moves the vCPU's owner)."""
        cdef int _i
        hl_store32(<volatile uint32_t *>&self.t.stop, 1)
        self.vm.run_ptr.immediate_exit = 1
        try:
            for _i in range(64):  # a string instruction may need several exits to finish
                self.cmds += 1
                hl_store32(&self.t.cmd_seq, self.cmds)
                hl_hot_futex_wake(&self.t.cmd_seq)
                self._await_exit(3600)
                self.consumed = self.cmds
                if self.t.rc < 0:
                    break
        finally:
            hl_store32(<volatile uint32_t *>&self.t.stop, 0)
            self.vm.run_ptr.immediate_exit = 1 if self.vm.cancel_requested else 0
        return 0

    cdef int _command_run(self) except -1:
        self.waking = True
        self.cmds += 1
        self.wakes += 1
        hl_store32(&self.t.cmd_seq, self.cmds)
        hl_hot_futex_wake(&self.t.cmd_seq)
        return 0

    cdef int _resume(self) except -1:
        """Answers the exit being served: a CAS of the posted state when the guest spins,
        KVM_RUN when it is parked."""
        cdef uint64_t seen
        if self.parked:
            hl_store_release(&self.mb[MB_WAITING], 0)
            hl_store_release(&self.mb[MB_SPIN], self.spin_ticks)
            hl_store_release(&self.mb[MB_MODE], HOT_ON)
            hl_store_release(&self.mb[MB_STATE], RESUMED)
            self.parked = False
            self._command_run()
        elif not hl_cas(&self.mb[MB_STATE], self.posted, RESUMED, &seen):
            if seen != self.posted - POSTED + PARKED:
                raise GuestProtocolError(f"hot mailbox: state {seen:#x} while the host answered {self.posted:#x}")
            self.expect_park = True  # the guest gave up spinning just now: its `out` follows
        return 0

    cdef int _wait(self) except? -100:
        """The next exit: a post in the mailbox, or a KVM_RUN that ended. Spins for the spin
        period, then blocks on the vCPU thread (the guest parks to wake it)."""
        cdef uint64_t s, deadline
        cdef uint32_t seq, i = 0
        cdef int rc
        cdef bint block = False
        cdef int _k
        # A short call answers within a few µs: wait for it with the GIL held (releasing
        # and taking the GIL back costs more than the round trip through the mailbox).
        for _k in range(256):
            s = hl_load_acquire(&self.mb[MB_STATE])
            if s != RESUMED and (s & 0xff) == POSTED:
                return self._take_post(s)
            if hl_load32(&self.t.exit_seq) != self.consumed:
                break
            hl_pause()
        deadline = hl_now_ns() + self.spin_ns
        while True:
            with nogil:
                while True:
                    s = hl_load_acquire(&self.mb[MB_STATE])
                    if s != RESUMED and (s & 0xff) == POSTED:
                        break
                    if hl_load32(&self.t.exit_seq) != self.consumed:
                        break
                    i += 1
                    if block or ((i & 255) == 0 and hl_now_ns() > deadline):
                        # Block: say so, then look once more (the guest checks host_waiting
                        # after its post; one of the two sees the other).
                        hl_store_fence(&self.mb[MB_WAITING], 1)
                        s = hl_load_acquire(&self.mb[MB_STATE])
                        if (s & 0xff) == POSTED or hl_load32(&self.t.exit_seq) != self.consumed:
                            break
                        seq = hl_load32(&self.t.exit_seq)
                        hl_hot_futex_wait(&self.t.exit_seq, seq, 100000000)
                        block = True
                        break
                    if self.waking and i > 64:
                        # The vCPU thread was just woken, often onto this core (the waker's):
                        # sleep in short steps so it runs, instead of spinning it off the core
                        # for a whole time slice. Until the guest's first post only.
                        hl_hot_futex_wait(&self.t.exit_seq, self.consumed, 20000)
                    elif (i & 255) == 0 and i > 1024:
                        sched_yield()  # let a thread that shares this core run
                    else:
                        hl_pause()
            if hl_load32(&self.t.exit_seq) != self.consumed:
                hl_store_release(&self.mb[MB_WAITING], 0)
                rc = self._take_exit()
                if rc != CONTINUE:
                    return rc
                continue
            s = hl_load_acquire(&self.mb[MB_STATE])
            if s != RESUMED and (s & 0xff) == POSTED:
                hl_store_release(&self.mb[MB_WAITING], 0)
                return self._take_post(s)
            if s != RESUMED and (s & 0xff) != PARKED:
                raise GuestProtocolError(f"hot mailbox: the guest wrote state {s:#x}")
            PyErr_CheckSignals()  # Ctrl-C while blocked

    cdef int _take_post(self, uint64_t s) except? -100:
        cdef uint64_t port = s >> 8
        if port != PORT_HALT and port != PORT_CALL_FUNCTION and port != PORT_LOG and port != PORT_PRINT:
            raise GuestProtocolError(f"hot mailbox: the guest posted state {s:#x}, not an exit it may take there")
        self.posted = s
        self.posts += 1
        self.waking = False
        return <int>port

    cdef int _take_exit(self) except? -100:
        """Consumes the exit the vCPU thread reported (what VirtualMachine.run() decodes)."""
        cdef vcpu_thread *t = self.t
        cdef kvm_run *run = self.vm.run_ptr
        cdef uint32_t reason
        cdef int port
        cdef uint64_t s
        if run == NULL:
            raise HyperlightError("the VM is closed")
        self.consumed += 1
        self.parked = True
        if t.rc < 0:
            if t.err == EINTR or t.err == EAGAIN:
                if self.vm.cancel_requested:
                    return EXIT_CANCELED
                self.parked = False
                self._command_run()
                return CONTINUE
            raise OSError(t.err, f"KVM_RUN failed: {os.strerror(t.err)}")
        reason = run.exit_reason
        if reason == KVM_EXIT_IO:
            if not (hl_io_direction(run) == KVM_EXIT_IO_OUT and hl_io_size(run) == 1 and hl_io_count(run) == 1):
                return EXIT_BAD_IO
            port = hl_io_port(run)
            s = hl_load_acquire(&self.mb[MB_STATE])
            if s == PARKED + (<uint64_t>port << 8):
                if self.expect_park and s == self.posted - POSTED + PARKED:
                    # The park of the exit just answered: run on.
                    self.expect_park = False
                    self.parked = True
                    self._resume()
                    return CONTINUE
                self.posted = s - PARKED + POSTED
            self.expect_park = False
            return port
        self.expect_park = False
        if reason == KVM_EXIT_INTR:
            if self.vm.cancel_requested:
                return EXIT_CANCELED
            self.parked = False  # the guest was interrupted, not exiting: run it on as it was
            self._command_run()
            return CONTINUE
        if reason == KVM_EXIT_DIRTY_RING_FULL:
            self.vm.harvest_c()
            self.parked = False
            self._command_run()
            return CONTINUE
        return terminal_exit_code(reason)

    cdef int _await_exit(self, double timeout) except -1:
        """Blocks until the vCPU thread has reported every KVM_RUN commanded; 0 if it has
        not after `timeout` seconds, else 1 (the exits are not consumed)."""
        cdef uint64_t deadline = hl_now_ns() + <uint64_t>(timeout * 1e9)
        cdef uint32_t seq
        with nogil:
            while True:
                seq = hl_load32(&self.t.exit_seq)
                if seq == self.cmds:
                    return 1
                if hl_now_ns() > deadline:
                    return 0
                hl_hot_futex_wait(&self.t.exit_seq, seq, 10000000)

    cdef int _stop(self) except -1:
        """Stops a running vCPU with the cancellation signal and consumes its exit; the
        guest is left where it was (the sandbox is poisoned or being closed)."""
        if not self.started or hl_load32(&self.t.exit_seq) == self.cmds:
            self._drain()
            return 0
        hl_store32(<volatile uint32_t *>&self.t.stop, 1)
        self.vm.run_ptr.immediate_exit = 1
        while not self._await_exit(0.05):
            pthread_kill(self.tid, CANCEL_SIGNAL)
        hl_store32(<volatile uint32_t *>&self.t.stop, 0)
        self.vm.run_ptr.immediate_exit = 1 if self.vm.cancel_requested else 0
        self._drain()
        return 0

    cdef void _drain(self) noexcept:
        self.consumed = hl_load32(&self.t.exit_seq)
        self.parked = True
        self.expect_park = False
        if self.mb != NULL and not self.closed:
            hl_store_release(&self.mb[MB_MODE], MODE_COLD)

    cdef int _park(self) except -1:
        """Asks a spinning guest to park (mode cold); waits for its `out`. A guest that
        does not within PARK_TIMEOUT is stopped, the sandbox poisoned (GuestProtocolError)."""
        if not self._park_within(PARK_TIMEOUT):
            raise GuestProtocolError("hot mode: the guest did not leave the mailbox when asked")
        return 0

    cdef int _park_within(self, double timeout) except -1:
        """_park() waiting `timeout` seconds; 0 if the guest had to be stopped (poisoned)."""
        cdef int rc
        if self.parked and hl_load32(&self.t.exit_seq) == self.cmds:
            hl_store_release(&self.mb[MB_MODE], MODE_COLD)
            return 1
        hl_store_release(&self.mb[MB_MODE], MODE_COLD)
        if not self._await_exit(timeout):
            self.cold.poisoned = True
            self._stop()
            return 0
        while hl_load32(&self.t.exit_seq) != self.consumed:
            rc = self._take_exit()
            if rc == CONTINUE:  # a spurious wake-up: ask again
                if not self._await_exit(timeout):
                    self.cold.poisoned = True
                    self._stop()
                    return 0
                continue
            if rc != PORT_HALT or hl_load_acquire(&self.mb[MB_STATE]) != PARKED + (<uint64_t>PORT_HALT << 8):
                self.cold.poisoned = True  # it was not waiting for a call: the state is not a clean one
        self._drain()
        return 1

    # -- lifetime ------------------------------------------------------------------------------

    def close(self):
        """Parks the guest (or stops it) and ends the vCPU thread; the sandbox is cold again."""
        if self.closed:
            return
        if getpid() != self.pid:  # a forked child: nothing of the thread is here to stop
            self.started = False
            self.closed = True
            return
        if self.vm.active:
            if pthread_equal(self.vm.thread, pthread_self()):
                raise HyperlightError("cannot leave hot mode from inside a call")
            self.vm.kill()
            while self.vm.active:
                with nogil:
                    hl_hot_futex_wait(&self.t.exit_seq, hl_load32(&self.t.exit_seq), 1000000)
        try:
            if not self.cold.poisoned and self.vm.run_ptr != NULL:
                self._park()
        finally:
            self._stop()
            self._join()

    cdef void _join(self) noexcept:
        if self.started:
            hl_store32(<volatile uint32_t *>&self.t.quit, 1)
            hl_store32(&self.t.cmd_seq, self.cmds + 1)
            hl_hot_futex_wake(&self.t.cmd_seq)
            with nogil:
                pthread_join(self.tid, NULL)
            self.started = False
        self.closed = True

    def __dealloc__(self):
        if self.t == NULL:
            return
        if self.started and getpid() == self.pid:
            if hl_load32(&self.t.exit_seq) != self.cmds and self.vm is not None and self.vm.run_ptr != NULL:
                hl_store32(<volatile uint32_t *>&self.t.stop, 1)
                self.vm.run_ptr.immediate_exit = 1
                while hl_load32(&self.t.exit_seq) != self.cmds:
                    pthread_kill(self.tid, CANCEL_SIGNAL)
                    hl_hot_futex_wait(&self.t.exit_seq, hl_load32(&self.t.exit_seq), 10000000)
            self._join()
        free(self.t)
        self.t = NULL
