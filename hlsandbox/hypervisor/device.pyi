"""Types of hlsandbox.hypervisor.device (device.pyx): /dev/kvm and what the KVM here is."""
from hlsandbox.errors import OutOfFileDescriptors

CANCEL_SIGNAL: int

def is_kvm_pvm() -> bool:
    """True on kvm-pvm, the paravirtual KVM that emulates guest CPL0 code."""
def host_cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty if it cannot be read)."""
def host_has_avx512() -> bool:
    """Whether the host CPU (and kernel) offer AVX-512."""
def cpuid_needed(cpl3_guest: bool) -> bool:
    """Whether a vCPU needs KVM_SET_CPUID2."""
def check_kvm() -> None:
    """Raises KvmUnavailable naming the cause if /dev/kvm cannot be used."""
def fd_exhausted(err: int, what: str) -> OutOfFileDescriptors | None:
    """The exception for running out of file descriptors, naming the limit; None for another errno."""
