"""The memory layer: layout, ELF loading, guest memory and page tables."""
