"""The public sandbox API: configuration, uninitialized and multi-use sandboxes."""
