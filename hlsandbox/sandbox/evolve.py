"""From a guest to a running sandbox (Hyperlight's uninitialized_evolve.rs): build guest
memory and the VM, run the guest's initialisation and take the snapshot restores go back
to; or attach a new VM to a snapshot's memory without running anything."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from ..errors import HyperlightError, SnapshotMismatch
from ..func.wire import RecordStack
from ..hypervisor import device, kvm
from ..mem.builder import build_guest_memory, thread_pointer
from ..mem.elf import ElfImage, GuestBinary
from ..mem.layout import TSS_SIZE, ImageShape, SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory
from ..mem.system_tables import GDT_I686_LIMIT, GDT_LIMIT, IDT_I686_LIMIT, IDT_LIMIT
from .call_path import CallPath
from .config import SandboxConfiguration
from .exits import GUEST_LOGGER, ExitHandler, guest_level_for
from .snapshot import RestorePlans, Snapshot, SnapshotDerived, trampoline_kind, write_trampoline
from .watchdog import WATCHDOG

if TYPE_CHECKING:
    from .multi_use import MultiUseSandbox


def layout_for(image: ImageShape, config: SandboxConfiguration) -> SandboxMemoryLayout:
    """The layout of a guest image under a configuration (raises InvalidConfiguration)."""
    return SandboxMemoryLayout(image, config.heap_size, config.stack_size, config.input_data_size,
                               config.output_data_size, scratch_base=config.scratch_base_gpa,
                               profile=config.profile)


def attach(sb: MultiUseSandbox, memory: SharedMemory, slots: list[Any] | None = None,
           state: bytes | None = None) -> None:
    """Builds the VM over guest memory (its vCPU in `state`, if given): buffers, slots,
    the exit handler and the call path."""
    L = sb.layout
    sb._memory = memory
    base = memory.address
    sb._input = RecordStack(memory, base + L.host(L.input_gpa), L.input_size, "input")
    sb._output = RecordStack(memory, base + L.host(L.output_gpa), L.output_size, "output")
    vm = sb._vm = kvm.VirtualMachine(memory, base, slots or L.slots(), state,
                                     set_cpuid=device.cpuid_needed(cpl3_guest=L.profile == "amd64"))
    config = sb._config
    max_wait = config.max_wait_time if config is not None else None
    vm.max_wait = -1.0 if max_wait is None else max_wait
    dump_dir = config.core_dump_dir if config is not None and config.guest_core_dump else None
    sb._exits = ExitHandler(vm, memory, L, sb._input, sb._output, sb._host_functions, sb._write, dump_dir)
    sb._path = CallPath(vm, sb._input, sb._output, sb._exits.serve, sb._exits.on_timeout)
    sb._closed = False
    if sb._counter is not None:
        sb._counter._bind(memory, L.host(L.counter_gpa))


def initialise(sb: MultiUseSandbox, binary: GuestBinary) -> None:
    """Loads the ELF into fresh memory, runs the guest's initialisation and keeps the
    snapshot after it. Closes the sandbox if anything fails."""
    image: ElfImage = binary.image
    L = sb.layout
    config = sb.config
    sb._set_copy_ranges(L.writable_image_ranges(image))
    try:
        clear_avx, clear_avx512 = trampoline_kind()
        attach(sb, build_guest_memory(image, L, binary.name, clear_avx=clear_avx, clear_avx512=clear_avx512))
        vm = sb._vm
        level = config.guest_log_level
        if level is None:
            level = guest_level_for(GUEST_LOGGER)
        seed = int.from_bytes(os.urandom(8), "little")
        if L.profile == "i686":
            vm.setup_protected_mode(L.gdt_gpa, GDT_I686_LIMIT, L.idt_gpa, IDT_I686_LIMIT, L.tss_gpa)
            vm.set_regs(rip=L.code_gpa + image.entry, rsp=L.stack_top, rax=L.peb_gpa,
                        rbx=seed & 0xFFFFFFFF, rcx=4096, rdx=level, rflags=2)
        else:
            vm.setup_long_mode(L.pt_gpa, L.gdt_gpa, GDT_LIMIT, L.idt_gpa, IDT_LIMIT, L.tss_gpa,
                               TSS_SIZE - 1, thread_pointer(image, L))
            vm.set_regs(rip=L.code_gpa + image.entry, rsp=L.initial_rsp, rdi=L.peb_gpa, rsi=seed,
                        rdx=4096, rcx=level, rflags=2)
        sb._input.clear()
        sb._output.clear()
        _run_init(sb, config.max_execution_time)
        sb._exits.raise_writer_error()
        sb._set_functions(sb._output.pop_function_table())
        sb._init_snapshot = sb.snapshot()
        sb._plans = RestorePlans.of(sb._memory, L, sb._restore_ranges, sb._init_snapshot)
    except BaseException as e:
        sb.close()
        raise_fd_limit(e)
        raise


def _run_init(sb: MultiUseSandbox, timeout: float | None) -> None:
    path = sb._path
    generation = path.claim()
    token = None
    try:
        if timeout and timeout != math.inf:
            token = WATCHDOG.arm(timeout, lambda: sb._exits.on_timeout(generation))
        path.run_until_halt(generation)
    finally:
        if token is not None:
            WATCHDOG.disarm(token)
        path.release()


def resume(sb: MultiUseSandbox, snap: Snapshot, derived: SnapshotDerived) -> None:
    """Attaches a new VM to a private copy-on-write mapping of the snapshot's memory, its
    vCPU in the snapshot's state: nothing of the guest runs. Closes the sandbox if
    anything fails."""
    sb._copy_ranges, sb._restore_ranges = snap.copy_ranges, derived.restore_ranges
    try:
        try:
            attach(sb, snap.map_private(), derived.slots, snap.vcpu_state)
        except OSError as e:
            if "loading the vCPU state" not in str(e):
                raise
            # The state passed the profile's checks (Snapshot.load, or taken here), so
            # this KVM lacks a feature the saving host had (PKRU, an MSR).
            raise SnapshotMismatch(f"this host's KVM refuses the snapshot's vCPU state ({e.strerror}): "
                                   f"was it saved on a host with other CPU features?") from e
        write_trampoline(sb._memory, sb.layout)
        sb._path.pending, sb._path.pending_generation = snap, sb._vm.generation
        sb._functions, sb.functions = derived.functions, derived.function_view
        sb._baseline = sb._init_snapshot = snap  # memory is the snapshot's, nothing written yet
        sb._plans = RestorePlans.of(sb._memory, sb.layout, sb._restore_ranges, snap)
    except BaseException as e:
        sb.close()
        raise_fd_limit(e)
        raise


def raise_fd_limit(e: BaseException) -> None:
    """Re-raises running out of file descriptors (a memfd, an mmap) as OutOfFileDescriptors."""
    if isinstance(e, OSError) and not isinstance(e, HyperlightError):
        exhausted = device.fd_exhausted(e.errno or 0, "creating a sandbox")
        if exhausted is not None:
            raise exhausted from e
