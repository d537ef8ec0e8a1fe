"""The functions layer: value types, the wire format and host-function registry."""
