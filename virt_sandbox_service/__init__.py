"""virt-sandbox-service: confine installed system daemons in per-instance libvirt sandboxes."""

__version__ = "0.1.0"
