"""The hypervisor layer: KVM VMs and vCPUs (kvm.pyx)."""
