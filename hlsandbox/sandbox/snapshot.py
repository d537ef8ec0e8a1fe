"""Snapshots: a sandbox's memory and vCPU state, in memory or in a file.

The memory image lives in a file descriptor: a memfd for an in-memory snapshot,
the snapshot file itself after load(). Sandboxes created from a snapshot map it
privately, so they share its pages until they write them, and restores copy
pages back from a read-only mapping of it."""
from __future__ import annotations

import errno
import os
import stat
import struct
import types
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidSnapshot, SnapshotClosed, SnapshotMismatch
from ..func.host_functions import HostFunctionRegistry
from ..func.types import FALLBACK, Signature, ValueType, is_fallback_entry
from ..hypervisor import device, kvm
from ..hypervisor.vcpu_state import STATE_SIZE, Expected, state_problems
from ..mem.layout import PAGE, TRAMPOLINE_FXSAVE, TRAMPOLINE_TARGET, TSS_SIZE, SandboxMemoryLayout
from ..mem.shared_memory import SharedMemory, nonzero_pages, page_runs
from ..mem.system_tables import GDT_I686_LIMIT, GDT_LIMIT, IDT_I686_LIMIT, IDT_LIMIT
from ..mem.trampoline import trampoline_code
from .call_path import RestorePlan, restore_pages
from .config import SandboxConfiguration
from .guest_functions import GuestFunction

# _lazy_note: modules that load C extensions (json here) are imported where used, not at
# import time: each adds ~5 mappings to the process, and KVM_CREATE_VM locks every mapping
# of the process (~0.17 us each on kvm-pvm; docs/architecture.md).
MAGIC = b"HLSNAP\x00\x00"
# 2: the scratch region starts with the heap (buffers on top of the stack); 3: the vCPU
# state carries the debug registers
FORMAT_VERSION = 3
PROFILES = ("amd64", "i686")
ARCH = "x86_64"
# magic, version, header size, memory size, memory crc, meta crc, meta size, state size
HEADER = struct.Struct("<8sIIQIIII")
MAX_HEADER = 16 << 20


def data_extents(fd: int, size: int, offset: int = 0) -> list[tuple[int, int]]:
    """[start, end) byte ranges (relative to offset) of fd that may hold data (not holes)."""
    out = []
    pos = offset
    end = offset + size
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [(0, size)]  # no SEEK_DATA support: treat everything as data
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        out.append((start - offset, stop - offset))
        pos = stop
    return out


def memory_checksum(image: memoryview, extents: Iterable[tuple[int, int]]) -> int:
    """CRC-32 over the non-zero pages and their indices: holes and zero pages do not count,
    so the value does not depend on how sparse a copy of the image is."""
    crc = 0
    for start, end in extents:
        start, end = start // PAGE * PAGE, -(-end // PAGE) * PAGE
        part = image[start:end]
        for i in nonzero_pages(part):
            index = start // PAGE + i
            crc = zlib.crc32(part[i * PAGE:(i + 1) * PAGE], zlib.crc32(index.to_bytes(8, "little"), crc))
    return crc


def _sig_list(sigs: Iterable[Signature]) -> list[list[Any]]:
    return [[s.name, [int(p) for p in s.params], int(s.returns)] for s in sigs]


def _parse_sigs(items: Any, what: str, *, fallback: bool = False) -> list[Signature]:
    """Signatures from a snapshot file's metadata. With `fallback` (guest functions), one
    entry may be a fallback dispatcher's: the empty name, void, no parameters."""
    if not isinstance(items, list):
        raise InvalidSnapshot(f"{what}: not a list")
    out = []
    names = set()
    for it in items:
        try:
            name, params, ret = it
            if not isinstance(params, list) or len(params) > 255 or \
                    not all(type(t) is int for t in params + [ret]):
                raise ValueError
            if not _valid_name(name) and not (fallback and is_fallback_entry(name, tuple(params), ret)):
                raise ValueError
            sig = Signature(name, tuple(ValueType(p) for p in params), ValueType(ret))
            if any(p == ValueType.VOID for p in sig.params):
                raise ValueError
        except (TypeError, ValueError):
            raise InvalidSnapshot(f"{what}: malformed entry {it!r:.80}") from None
        if name in names:
            raise InvalidSnapshot(f"{what}: {name!r:.80} appears twice")
        names.add(name)
        out.append(sig)
    return out


def _valid_name(name: Any) -> bool:
    """A function name as the wire format carries it: non-empty UTF-8, at most 65535 bytes."""
    if not isinstance(name, str) or not name:
        return False
    try:
        return len(name.encode()) <= 0xFFFF
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON)
        return False


class Snapshot:
    """A sandbox's guest memory, vCPU state, layout and host-function signatures.

    Take one with MultiUseSandbox.snapshot(), put a sandbox back with restore(),
    save it with save(path), read it back with Snapshot.load(path), and start new
    sandboxes from it with MultiUseSandbox.from_snapshot()."""

    def __init__(self, *, fd: int, offset: int, layout: SandboxMemoryLayout, vcpu_state: bytes,
                 host_functions: list[Signature], guest_functions: list[Signature],
                 copy_ranges: list[tuple[int, int]], raw_host_functions: Iterable[int] = (),
                 path: str | None = None) -> None:
        self._fd = fd
        self._closed = False
        self._adopted = False  # a sandbox runs on it (its init snapshot): close() defers the release
        self.offset = offset
        self.layout = layout
        self.vcpu_state = vcpu_state
        self.host_functions = list(host_functions)
        self.guest_functions = list(guest_functions)
        self.copy_ranges = list(copy_ranges)
        self.raw_host_functions = sorted(raw_host_functions)
        self.path = path
        self.profile = layout.profile
        self.arch = ARCH
        self.image = SharedMemory.from_fd(fd, layout.total_size, offset, writable=False, shared=False)
        self._derived: SnapshotDerived | None = None  # what sandboxes from this snapshot share

    # -- creation ----------------------------------------------------------------------------

    @classmethod
    def capture(cls, memory: SharedMemory, layout: SandboxMemoryLayout, vcpu_state: bytes,
                host_functions: list[Signature], guest_functions: list[Signature],
                copy_ranges: list[tuple[int, int]], raw_host_functions: Iterable[int] = ()) -> Snapshot:
        """Copies the pages of `memory` that may hold data into a new memfd."""
        size = layout.total_size
        fd = os.memfd_create("hlsandbox-snapshot", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            with memoryview(memory) as mv:
                for a, b in memory.resident_runs():
                    _pwrite_all(fd, mv[a * PAGE:b * PAGE], a * PAGE)
            return cls(fd=fd, offset=0, layout=layout, vcpu_state=vcpu_state, host_functions=host_functions,
                       guest_functions=guest_functions, copy_ranges=copy_ranges,
                       raw_host_functions=raw_host_functions)
        except BaseException:
            os.close(fd)
            raise

    def map_private(self) -> SharedMemory:
        """A copy-on-write mapping of the image: guest memory for a new sandbox."""
        self._check_open()
        return SharedMemory.from_fd(self._fd, self.layout.total_size, self.offset, writable=True, shared=False)

    @property
    def memory_size(self) -> int:
        return self.layout.total_size

    # -- files -------------------------------------------------------------------------------

    def _metadata(self) -> bytes:
        meta = {"profile": self.profile, "arch": self.arch, "layout": self.layout.describe(),
                "host_functions": _sig_list(self.host_functions),
                "guest_functions": _sig_list(self.guest_functions),
                "copy_ranges": [list(r) for r in self.copy_ranges],
                "raw_host_functions": self.raw_host_functions}
        import json  # here, not at import: every C extension loaded adds mappings (see _lazy_note)
        return json.dumps(meta, sort_keys=True).encode()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the snapshot to a file (sparse: zero pages take no disk space). The file
        appears whole or not at all: it is written under a temporary name beside `path`
        and renamed; on failure (a directory, a place that cannot be written) the error
        says so and nothing is left behind."""
        self._check_open()
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"cannot save the snapshot to {path}: it is a directory", str(path))
        meta = self._metadata()
        size = self.layout.total_size
        header_size = -(-(HEADER.size + len(meta) + len(self.vcpu_state)) // PAGE) * PAGE
        extents = data_extents(self._fd, size, self.offset)
        with memoryview(self.image) as image:
            crc = memory_checksum(image, extents)
            head = HEADER.pack(MAGIC, FORMAT_VERSION, header_size, size, crc,
                               zlib.crc32(meta + self.vcpu_state), len(meta), len(self.vcpu_state))
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise type(e)(e.errno, f"cannot save the snapshot to {path}: {e.strerror}", str(path)) from None
            try:
                try:
                    _pwrite_all(fd, head + meta + self.vcpu_state, 0)
                    for a, b in extents:
                        _pwrite_all(fd, image[a:b], header_size + a)
                    os.ftruncate(fd, header_size + size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise type(e)(e.errno, f"cannot save the snapshot to {path}: {e.strerror}", str(path)) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Reads and verifies a snapshot file; the file is opened read-only and never modified."""
        path = os.fsdecode(path)  # a str, from a str, bytes or path-like path
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise InvalidSnapshot(f"cannot open snapshot {path}: {e.strerror}") from None
        try:
            kind = _file_kind(os.fstat(fd).st_mode)
            if kind:
                raise InvalidSnapshot(f"cannot load snapshot {path}: it is {kind}, not a regular file")
            return cls._load_fd(fd, path)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _load_fd(cls, fd: int, path: str) -> Snapshot:
        file_size = os.fstat(fd).st_size
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size:
            raise InvalidSnapshot(f"{path}: {file_size} bytes is too short for a snapshot header")
        magic, version, header_size, size, crc, meta_crc, meta_size, state_size = HEADER.unpack(head)
        if magic != MAGIC:
            raise InvalidSnapshot(f"{path}: not an hlsandbox snapshot (bad magic {magic!r})")
        if version != FORMAT_VERSION:
            raise InvalidSnapshot(f"{path}: snapshot format version {version}, this hlsandbox reads {FORMAT_VERSION}")
        if header_size % PAGE or not HEADER.size + meta_size + state_size <= header_size <= MAX_HEADER:
            raise InvalidSnapshot(f"{path}: header size {header_size} is invalid")
        if size == 0 or size % PAGE or size > 1 << 40:
            raise InvalidSnapshot(f"{path}: memory size {size} is invalid")
        if file_size != header_size + size:
            raise InvalidSnapshot(f"{path}: file is {file_size} bytes, the header says {header_size + size} "
                                  f"({'truncated' if file_size < header_size + size else 'trailing data'})")
        blob = os.pread(fd, meta_size + state_size, HEADER.size)
        if len(blob) != meta_size + state_size or zlib.crc32(blob) != meta_crc:
            raise InvalidSnapshot(f"{path}: metadata checksum mismatch (corrupt header)")
        try:
            import json
            meta = json.loads(blob[:meta_size])
        except (ValueError, UnicodeDecodeError):
            raise InvalidSnapshot(f"{path}: metadata is not valid JSON") from None
        if not isinstance(meta, dict):
            raise InvalidSnapshot(f"{path}: metadata is not an object")
        if meta.get("arch") != ARCH:
            raise SnapshotMismatch(f"{path}: snapshot of architecture {meta.get('arch')!r}, this host runs {ARCH}")
        if meta.get("profile") not in PROFILES:
            raise SnapshotMismatch(f"{path}: snapshot of guest profile {meta.get('profile')!r}, this hlsandbox "
                                   f"runs {', '.join(PROFILES)}")
        if state_size != STATE_SIZE:
            raise SnapshotMismatch(f"{path}: vCPU state is {state_size} bytes, this host's is {STATE_SIZE}")
        try:
            layout = SandboxMemoryLayout.from_dict(meta.get("layout"))  # checks it is a dict
        except ValueError as e:
            raise InvalidSnapshot(f"{path}: {e}") from None
        if layout.profile != meta["profile"]:
            raise InvalidSnapshot(f"{path}: profile {meta['profile']!r} does not match the layout's")
        if layout.total_size != size:
            raise InvalidSnapshot(f"{path}: memory size {size} does not match the layout's {layout.total_size}")
        state = blob[meta_size:]
        check_vcpu_state(state, layout, path)
        ranges = meta.get("copy_ranges")
        if not isinstance(ranges, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
                and r[0] % PAGE == 0 and r[1] % PAGE == 0 and layout.code_gpa <= r[0]
                and r[0] + r[1] <= layout.code_gpa + layout.image_size for r in ranges):
            raise InvalidSnapshot(f"{path}: copy ranges are invalid")
        raw = meta.get("raw_host_functions", [])
        if not isinstance(raw, list) or not all(type(i) is int and 0 <= i <= 0xFFFFFFFF for i in raw):
            raise InvalidSnapshot(f"{path}: raw host function ids are invalid")
        snap = cls(fd=fd, offset=header_size, layout=layout, vcpu_state=state,
                   host_functions=_parse_sigs(meta.get("host_functions"), f"{path}: host functions"),
                   guest_functions=_parse_sigs(meta.get("guest_functions"), f"{path}: guest functions",
                                               fallback=True),
                   copy_ranges=[tuple(r) for r in ranges], raw_host_functions=raw, path=path)
        with memoryview(snap.image) as image:
            ok = memory_checksum(image, data_extents(fd, size, header_size)) == crc
        if not ok:
            snap.image.close()
            snap._fd = -1  # the caller closes fd
            raise InvalidSnapshot(f"{path}: memory checksum mismatch (corrupt memory image)")
        return snap

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed or self._fd < 0

    def _check_open(self) -> None:
        if self._closed or self._fd < 0:
            raise SnapshotClosed("the snapshot is closed")

    def _adopt(self) -> None:
        """A sandbox starts from this snapshot and restores to it: close() must not pull
        the image from under it (the release then waits for garbage collection)."""
        self._check_open()
        self._adopted = True

    def close(self) -> None:
        """Closes the snapshot: it can no longer be saved, restored or started from. Its
        image is released now, or, if sandboxes were created from it (they restore to it),
        once they and the snapshot are gone."""
        self._closed = True
        if not self._adopted:
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            self.image.close()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:
            pass

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        closed = ", closed" if self.closed else ""
        return f"<Snapshot {self.profile}/{self.arch}, {self.layout.total_size} bytes{where}{closed}>"


def expected_vcpu(layout: SandboxMemoryLayout) -> Expected:
    """What the vCPU of a sandbox with this layout may hold (hypervisor/vcpu_state.py)."""
    L = layout
    if L.profile == "amd64":
        gdt, idt, tss = (L.gdt_gpa, GDT_LIMIT), (L.idt_gpa, IDT_LIMIT), (L.tss_gpa, TSS_SIZE - 1, 0x28)
    else:
        gdt, idt, tss = (L.gdt_gpa, GDT_I686_LIMIT), (L.idt_gpa, IDT_I686_LIMIT), (L.tss_gpa, 0x67, 0x18)
    return Expected(L.profile, (L.code_gpa, L.code_gpa + L.image_size), (L.stack_gpa, L.stack_top), L.pt_gpa,
                    gdt, idt, tss)


def check_vcpu_state(state: bytes, layout: SandboxMemoryLayout, path: str) -> None:
    """Every field of the state KVM will load must be one the profile produces: the
    profile's CPU mode and tables, RIP in this layout's code, RSP in its stack, no state
    a guest of the profile cannot reach (hypervisor/vcpu_state.py)."""
    problems = state_problems(state, expected_vcpu(layout))
    if problems:
        raise InvalidSnapshot(f"{path}: vCPU state is invalid: {'; '.join(problems)}")


def _file_kind(mode: int) -> str:
    """What a file that is not a regular file is ("" for a regular file)."""
    if stat.S_ISREG(mode):
        return ""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def is_snapshot_file(guest: Any) -> bool:
    """Whether `guest` (bytes or a path) holds an hlsandbox snapshot (its magic), without
    blocking on a FIFO or reading more than the magic."""
    if isinstance(guest, (bytes, bytearray, memoryview)):
        return bytes(guest[:len(MAGIC)]) == MAGIC
    try:
        fd = os.open(guest, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, TypeError, ValueError):
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, len(MAGIC), 0) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    mv = memoryview(data).cast("B")
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


# -- what sandboxes made from a snapshot share, and the checks of a snapshot against them ------

class SnapshotDerived:
    """What every sandbox created from one snapshot shares, computed once per snapshot:
    its KVM slots, the ranges a restore copies whole and its guest function table
    (all read-only)."""

    __slots__ = ("slots", "restore_ranges", "functions", "function_view", "checked_registry", "_spec")

    def __init__(self, snap: Snapshot) -> None:
        L = snap.layout
        self.slots = L.slots()
        self.restore_ranges = u64_pairs(list(snap.copy_ranges) + L.copied_ranges())
        self.functions = {g.name: GuestFunction(g.name, tuple(int(p) for p in g.params), int(g.returns))
                          for g in snap.guest_functions}
        self.function_view = function_view(self.functions)
        # The registry from_snapshot() built last, and from what: sandboxes created with the
        # same host functions share it (a from_snapshot registry is never changed).
        self.checked_registry: HostFunctionRegistry | None = None
        self._spec: tuple[tuple[str, Any], ...] | None = None

    def registry_for(self, snap: Snapshot, host_functions: Mapping[str, Any] | None) -> HostFunctionRegistry:
        """The registry of from_snapshot()'s `host_functions`, checked against `snap`."""
        spec = tuple((host_functions or {}).items())
        if spec == self._spec and self.checked_registry is not None:
            return self.checked_registry
        registry = HostFunctionRegistry()
        for name, fn in spec:
            if isinstance(fn, tuple):
                registry.register(name, *fn)
            else:
                registry.register(name, fn)
        check_host_functions(snap, registry)
        self.checked_registry, self._spec = registry, spec
        return registry

    @staticmethod
    def of(snap: Snapshot) -> SnapshotDerived:
        derived = snap._derived
        if derived is None:
            derived = snap._derived = SnapshotDerived(snap)
        return derived


def function_view(functions: Mapping[str, GuestFunction]) -> Mapping[str, Signature]:
    """MultiUseSandbox.functions: the guest's functions by name (its fallback left out)."""
    return types.MappingProxyType({n: f.signature for n, f in functions.items() if n != FALLBACK})


def check_config(config: SandboxConfiguration, L: SandboxMemoryLayout) -> None:
    """A configuration given with a snapshot may change limits, not the layout."""
    sizes: dict[str, object] = {"heap_size": L.heap_size, "stack_size": L.stack_size,
                                "input_data_size": L.input_size, "output_data_size": L.output_size}
    if config.scratch_base_gpa is not None:
        sizes["scratch_base_gpa"] = L.scratch_gpa
    if config.profile is not None:
        sizes["profile"] = L.profile
    wrong = [f"{k}={getattr(config, k)} (snapshot: {v})" for k, v in sizes.items() if getattr(config, k) != v]
    if wrong:
        raise SnapshotMismatch(f"configuration does not match the snapshot's layout: {', '.join(wrong)}")


def check_host_functions(snap: Snapshot, registry: HostFunctionRegistry) -> None:
    """Every host function the snapshot's guest may call must exist with the same signature."""
    problems = []
    for sig in snap.host_functions:
        hf = registry.get(sig.name)
        if hf is None:
            problems.append(f"{sig} is not registered")
        elif hf.signature != sig:
            problems.append(f"{sig.name} is registered as {hf.signature}, the snapshot has {sig}")
    for fn_id in snap.raw_host_functions:
        if registry.get_raw(fn_id) is None:
            problems.append(f"raw host function {fn_id} is not registered")
    if problems:
        raise SnapshotMismatch("host functions do not match the snapshot: " + "; ".join(problems))


def check_same_sandbox(snap: Snapshot, layout: SandboxMemoryLayout, registry: HostFunctionRegistry,
                       functions: Mapping[str, GuestFunction]) -> None:
    """restore() of a snapshot another sandbox took: same layout, host and guest functions."""
    if snap.layout.describe() != layout.describe():
        raise SnapshotMismatch("the snapshot's memory layout differs from this sandbox's")
    check_host_functions(snap, registry)
    if [(g.name, g.params, g.returns) for g in snap.guest_functions] != \
            [(f.signature.name, f.signature.params, f.signature.returns) for f in functions.values()]:
        raise SnapshotMismatch("the snapshot's guest functions differ from this sandbox's")


def u64_pairs(pairs: list[tuple[int, int]]) -> memoryview:
    """(offset, size) pairs as a flat, read-only u64 buffer (what the Cython restore reads)."""
    return memoryview(struct.pack(f"@{2 * len(pairs)}Q", *(x for p in pairs for x in p))).cast("Q")


def copy_all(memory: SharedMemory, snap: Snapshot) -> None:
    """Makes guest memory equal to the snapshot's image: copies every page that holds data
    in either (other pages are zero in both)."""
    mask = memory.resident_pages()
    for a, b in data_extents(snap._fd, snap.memory_size, snap.offset):
        first, end = a // PAGE, -(-b // PAGE)
        mask[first:end] = b"\x01" * (end - first)
    src = snap.image.address
    for a, b in page_runs(mask):
        memory.copy_from(src + a * PAGE, a * PAGE, (b - a) * PAGE)


# -- the restore trampoline (mem/trampoline.py) -------------------------------------------------

_TRAMPOLINE: tuple[tuple[bool, bool], bytes] | None = None


def _trampoline_state() -> tuple[tuple[bool, bool], bytes]:
    global _TRAMPOLINE
    if _TRAMPOLINE is None:
        pvm = device.is_kvm_pvm()
        kind = (pvm, pvm and device.host_has_avx512())
        _TRAMPOLINE = (kind, trampoline_code(*kind))
    return _TRAMPOLINE


def trampoline_kind() -> tuple[bool, bool]:
    """(clear AVX, clear AVX-512) for the restore trampoline: what a CPL3 guest can reach
    beyond the FXSAVE image, on kvm-pvm only."""
    return _trampoline_state()[0]


def write_trampoline(memory: SharedMemory, layout: SandboxMemoryLayout) -> None:
    """The restore trampoline is this host's code, whatever a snapshot's image holds
    (a file may come from a host with other registers to clear, or be crafted): written
    where it differs (a from_snapshot() sandbox then keeps sharing the page)."""
    if layout.profile != "amd64":
        return
    code = _trampoline_state()[1]
    at = layout.host(layout.trampoline_gpa)
    if memory.read(at, len(code)) != code:
        memory.write(at, code)


def load_snapshot(vm: kvm.VirtualMachine, memory: SharedMemory, layout: SandboxMemoryLayout, snap: Snapshot,
                  baseline: bool, restore_ranges: memoryview) -> None:
    """A restore without a fast plan (i686, or a snapshot other than the baseline), the
    vCPU claimed and out of the guest. From the baseline (the snapshot the dirty pages are
    relative to) only the pages written since are copied; any other snapshot whole."""
    if baseline:  # i686: no trampoline without 64-bit code: KVM_SET_XSAVE
        restore_pages(vm, memory, snap.image, restore_ranges)
        # A CPL0 guest can write MSRs (IA32_SYSENTER_*) and debug registers: all of it.
        vm.load_state(snap.vcpu_state, kvm.LOAD_ALL)
        return
    vm.discard_dirty_pages()
    copy_all(memory, snap)
    write_trampoline(memory, layout)
    # A CPL3 (amd64) guest cannot set debug registers: its snapshots hold a new
    # vCPU's (checked for files), so that ioctl is skipped.
    try:
        vm.load_state(snap.vcpu_state, kvm.LOAD_ALL if layout.profile == "i686" else kvm.LOAD_ALL & ~kvm.LOAD_DEBUG)
    except OSError as e:
        raise SnapshotMismatch(f"this host's KVM refuses the snapshot's vCPU state ({e.strerror}): "
                               f"was it saved on a host with other CPU features?") from e


class RestorePlans:
    """The fast-restore plans (call_path.RestorePlan) of an amd64 sandbox: one for the
    snapshot after initialisation, kept for its life, and one for the last other
    snapshot restored (normally the baseline the dirty pages are relative to)."""

    __slots__ = ("_memory", "_layout", "_ranges", "init", "_last")

    def __init__(self, memory: SharedMemory, layout: SandboxMemoryLayout, ranges: memoryview, init: Snapshot) -> None:
        self._memory, self._layout, self._ranges = memory, layout, ranges
        self._last: tuple[Snapshot, RestorePlan] | None = None
        self.init: RestorePlan = self._plan(init)

    @classmethod
    def of(cls, memory: SharedMemory, layout: SandboxMemoryLayout, ranges: memoryview,
           init: Snapshot) -> RestorePlans | None:
        """The plans of a sandbox, or None for a profile without a fast restore (i686)."""
        return cls(memory, layout, ranges, init) if layout.profile == "amd64" else None

    def plan_for(self, snap: Snapshot) -> RestorePlan:
        if snap is self.init.snapshot:
            return self.init
        if self._last is None or self._last[0] is not snap:
            self._last = (snap, self._plan(snap))
        return self._last[1]

    def _plan(self, snap: Snapshot) -> RestorePlan:
        L = self._layout
        plan = RestorePlan(self._memory, snap.image, self._ranges, snap.vcpu_state, L.trampoline_gpa,
                           TRAMPOLINE_TARGET, TRAMPOLINE_FXSAVE)
        plan.snapshot = snap
        return plan
