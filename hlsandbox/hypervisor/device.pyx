# cython: language_level=3
"""/dev/kvm: opened once per process and checked for what hlsandbox needs, VM file
descriptors, and what the KVM here is (kvm-pvm or hardware KVM, platform.md)."""
import os
import signal
import threading

from posix.fcntl cimport open as c_open, O_RDWR, O_CLOEXEC
from posix.unistd cimport close as c_close

from .linux_kvm cimport (
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_USER_MEMORY,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_VCPU_MMAP_SIZE,
)

from ..errors import KvmUnavailable, OutOfFileDescriptors

cdef extern from "errno.h":
    int errno
    int EINTR, EMFILE, ENFILE

cdef extern from "sys/ioctl.h" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "cancel_signal.h" nogil:
    int hl_install_cancel_handler(int sig)

# The signal that interrupts KVM_RUN to cancel a call (a no-op handler, installed with /dev/kvm).
CANCEL_SIGNAL = signal.SIGRTMIN + 2
cdef int _cancel_signal = CANCEL_SIGNAL

cdef int _kvm_fd = -1
cdef int _run_size = 0
_kvm_lock = threading.Lock()


cdef int cancel_signal() noexcept:
    return _cancel_signal


cdef int vcpu_mmap_size() noexcept:
    """The size of a vCPU's kvm_run mapping (valid once kvm_fd() has returned)."""
    return _run_size


def is_kvm_pvm() -> bool:
    """True on kvm-pvm, the paravirtual KVM that emulates guest CPL0 code."""
    return os.path.exists("/sys/module/kvm_pvm")


_cpl3_cpuid_is_the_hosts = None


def host_cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty if it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def host_has_avx512() -> bool:
    """Whether the host CPU (and kernel) offer AVX-512: the CPU flags Linux reports list
    only features whose register state the kernel saves."""
    return "avx512f" in host_cpu_flags()


def cpuid_needed(cpl3_guest: bool) -> bool:
    """Whether a vCPU needs KVM_SET_CPUID2 (60-90 us on kvm-pvm, on the critical path of
    creating a sandbox). On kvm-pvm a CPL3 guest's `cpuid` reaches the hypervisor only
    through CPUID faulting: on a host CPU without it (no `cpuid_fault` flag), the guest's
    `cpuid` returns the host's CPUID, not the vCPU's table, so the table only sets the
    guest's physical address width, which hlsandbox's layouts keep below 36 bits, the
    width of an empty table. With CPUID faulting kvm-pvm answers from the table (an AMD
    EPYC host measured so), so the table is needed. CPL0 guests (the i686 profile) read
    the table; on hardware KVM every guest does. HLSANDBOX_SET_CPUID=1 sets it always."""
    global _cpl3_cpuid_is_the_hosts
    if _cpl3_cpuid_is_the_hosts is None:
        _cpl3_cpuid_is_the_hosts = is_kvm_pvm() and "cpuid_fault" not in host_cpu_flags()
    return not (cpl3_guest and _cpl3_cpuid_is_the_hosts) or os.environ.get("HLSANDBOX_SET_CPUID") == "1"


cdef int kvm_fd() except -1:
    """Opens /dev/kvm once per process and checks what hlsandbox needs of it."""
    global _kvm_fd, _run_size
    if _kvm_fd >= 0:
        return _kvm_fd
    with _kvm_lock:
        if _kvm_fd >= 0:
            return _kvm_fd
        path = os.environ.get("HLSANDBOX_KVM_DEVICE", "/dev/kvm")
        fd = c_open(path.encode(), O_RDWR | O_CLOEXEC)
        if fd < 0:
            err = errno
            why = {2: "it does not exist (is the kvm module loaded? is this a VM without nested virtualization?)",
                   13: "permission denied (add the user to the 'kvm' group or fix the device's mode)",
                   1: "operation not permitted"}.get(err, os.strerror(err))
            raise KvmUnavailable(f"cannot open {path}: {why}")
        try:
            version = ioctl(fd, KVM_GET_API_VERSION, 0)
            if version != 12:
                raise KvmUnavailable(f"{path}: KVM API version {version}, expected 12")
            for cap, name in ((KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
                              (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY")):
                if ioctl(fd, KVM_CHECK_EXTENSION, cap) <= 0:
                    raise KvmUnavailable(f"{path}: missing {name}")
            size = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0)
            if size <= 0:
                raise KvmUnavailable(f"{path}: KVM_GET_VCPU_MMAP_SIZE failed: {os.strerror(errno)}")
            if hl_install_cancel_handler(_cancel_signal) != 0:
                raise KvmUnavailable(f"cannot install the cancellation signal handler: {os.strerror(errno)}")
        except BaseException:
            c_close(fd)
            raise
        _run_size = size
        _kvm_fd = fd
        return fd


cdef int create_vm_fd(int kfd) noexcept:
    """KVM_CREATE_VM, again while it fails with EINTR: the kernel refuses it while any signal
    is pending for the thread (mm_take_all_locks), e.g. a kill() that raced its call's end."""
    cdef int fd = ioctl(kfd, KVM_CREATE_VM, 0)
    while fd < 0 and errno == EINTR:
        fd = ioctl(kfd, KVM_CREATE_VM, 0)
    return fd


def check_kvm() -> None:
    """Raises KvmUnavailable naming the cause if /dev/kvm cannot be used."""
    kvm_fd()
    cdef int vm = create_vm_fd(_kvm_fd)
    if vm < 0:
        raise KvmUnavailable(f"KVM_CREATE_VM failed: {os.strerror(errno)}")
    c_close(vm)


def fd_exhausted(int err, str what):
    """The exception for running out of file descriptors, naming the limit; None for another errno."""
    if err == EMFILE:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return OutOfFileDescriptors(err, f"{what}: the process has reached its limit of {soft} open files "
                                         f"(`ulimit -n`); close sandboxes or raise the limit")
    if err == ENFILE:
        return OutOfFileDescriptors(err, f"{what}: the system-wide limit of open files is reached")
    return None
