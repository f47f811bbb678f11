"""`run --graphics vnc|spice`, and `create --graphics` for a generic KVM sandbox: a KVM
sandbox with a display, for a graphical program.

The micro-VM gets a virtio GPU and a libvirt <graphics> (VNC or SPICE) on loopback; the
guest init loads the GPU's modules and starts the HOST's own X server (the guest sees the
host's root read-only) on it, with the modesetting driver on /dev/dri/card0, waits until it
accepts clients, and runs the command with DISPLAY=:0 (see initrd/init: start_x). What a
viewer connects to is printed on stderr once the domain exists (display_uri).

Why the GPU is a qemu command-line device, not a libvirt <video>: qemu's microvm machine has
no PCI bus, and libvirt 9.0 always makes the primary virtio <video> a `virtio-vga` (PCI),
whatever its <address>. The virtio-mmio GPU (`virtio-gpu-device`) is added as a qemu argument
with <video model='none'/> in its place, so libvirt neither adds a VGA of its own beside
<graphics> nor refuses the screenshot API ("no screens"): qemu's screendump takes the first
display, which is that GPU. The GPU also needs the modern virtio-mmio transport (as virtiofs
does; domain/kvm.py).

A created sandbox (create_request) has the type and address in its config (of_config gives
its domain the same devices) and no password: a persistent domain's passwd would sit in
its XML, which reconcile cannot read back from libvirt. Only a generic sandbox: a unit
sandbox's systemd would start no X server.

Checked before anything is started (check_request): the driver (LXC has no display of its
own), the listen address, the password file (read once; never a password on the command line,
where ps shows it), and the host's X server and its modesetting driver.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Driver, Kind, SandboxConfig
from .config import GraphicsType as GraphicsType
from .errors import HostError, UserError

if TYPE_CHECKING:  # lxml only where a domain is built: the CLI imports this for its choices
    from lxml import etree

DEFAULT_LISTEN = "127.0.0.1"
GPU_DEVICE = "virtio-gpu-device"  # qemu's virtio GPU on virtio-mmio (microvm has no PCI)
GPU_ID = "vss-gpu"
XORG_CANDIDATES = ("/usr/lib/xorg/Xorg", "/usr/bin/Xorg")
MODESETTING = "usr/lib/xorg/modules/drivers/modesetting_drv.so"
XORG_PACKAGE = "xserver-xorg-core"
PASSWORD_MAX = 4096  # a password file larger than this is not a password file
VNC_PASSWORD_MAX = 8  # VNC's DES challenge uses 8 bytes; qemu would drop the rest silently


CHOICES = tuple(t.value for t in GraphicsType)


@dataclass(frozen=True)
class Graphics:
    """What `run --graphics` asked for; password read from --graphics-password-file."""

    type: GraphicsType
    listen: str = DEFAULT_LISTEN
    password: str | None = field(default=None, repr=False)


def parse_type(text: str) -> GraphicsType:
    try:
        return GraphicsType(text)
    except ValueError:
        raise UserError(f"'{text}' is not a valid graphics type ({', '.join(CHOICES)})",
                        f"write one of: {', '.join(CHOICES)}") from None


def parse_listen(text: str, password_option: bool = True) -> str:
    """An IP address to bind the display to (loopback by default: a display is a keyboard
    and a screen of the sandbox, open to whoever reaches the port). password_option: the
    command has --graphics-password-file (run; create has none)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UserError(f"--graphics-listen '{text}' is not an IP address",
                        f"e.g. {DEFAULT_LISTEN} (the default) or 0.0.0.0 (every address"
                        + (": set a password with --graphics-password-file)"
                           if password_option else ": anyone who reaches it has the "
                           "display)")) from None


def read_password(path: str) -> str:
    """The first line of FILE (its newline dropped)."""
    try:
        with open(path, "rb") as f:
            data = f.read(PASSWORD_MAX + 1)
    except OSError as e:
        raise UserError(f"cannot read the graphics password file {path}: {e.strerror}",
                        "name a file this user can read, holding the password on its "
                        "first line") from None
    lines = data.decode(errors="replace").splitlines()
    if len(data) > PASSWORD_MAX or not lines or not lines[0]:
        raise UserError(f"the graphics password file {path} holds no password on its first "
                        "line" if len(data) <= PASSWORD_MAX else
                        f"the graphics password file {path} is larger than {PASSWORD_MAX} "
                        "bytes", "put the password alone on its first line")
    return lines[0]


def request(kind: str, listen: str | None, password_file: str | None) -> Graphics:
    """The typed request from run's options, every value checked."""
    g = Graphics(parse_type(kind), parse_listen(listen) if listen else DEFAULT_LISTEN,
                 read_password(password_file) if password_file else None)
    if g.type is GraphicsType.VNC and g.password and \
            len(g.password.encode()) > VNC_PASSWORD_MAX:
        raise UserError(f"the password in {password_file} is longer than VNC's "
                        f"{VNC_PASSWORD_MAX} bytes (the rest would be ignored silently)",
                        "use at most 8 characters, or --graphics spice")
    return g


def check_driver(uri: str, driver: Driver) -> None:
    """A display needs a VM: qemu:///system, or a normal user's qemu:///session (whose qemu,
    running as the user, listens on loopback as well; the X server is root in the guest
    only, and the program runs as the user on it)."""
    if driver is Driver.LXC:
        raise UserError(f"--graphics needs a KVM sandbox: a container ({uri}) has no display "
                        "of its own", "add -c qemu:///system")


def create_request(kind: str | None, listen: str | None, uri: str, driver: Driver,
                   units: bool) -> tuple[GraphicsType | None, str]:
    """create's --graphics and --graphics-listen, checked: (the type, the address) for the
    config, or (None, "") without a display. A generic KVM sandbox only: a unit sandbox's
    systemd would start no X server (and its units know nothing of a display)."""
    if kind is None:
        if listen:
            raise UserError("--graphics-listen goes with --graphics",
                            "add --graphics vnc (or spice)")
        return None, ""
    g = parse_type(kind)
    check_driver(uri, driver)
    if units:
        raise UserError("--graphics is for generic sandboxes: a unit sandbox's systemd "
                        "starts no X server", "give the program after --: create --graphics "
                        "vnc -c qemu:///system NAME -- /usr/bin/xterm")
    return g, parse_listen(listen, password_option=False) if listen else DEFAULT_LISTEN


def of_config(cfg: SandboxConfig) -> Graphics | None:
    """A generic sandbox's display, as its config says (no password: see config.py)."""
    if cfg.graphics is None or cfg.kind is not Kind.GENERIC:
        return None
    return Graphics(cfg.graphics, cfg.graphics_listen or DEFAULT_LISTEN)


def xorg_path(root: str = "/") -> str:
    """find_xorg's answer, or "" where the host has none (a host fact, host.detect)."""
    try:
        return find_xorg(root)
    except HostError:
        return ""


def no_xorg() -> HostError:
    return HostError("--graphics needs an X server on the host (Xorg), and there is none",
                     f"install the '{XORG_PACKAGE}' package (scripts/setup.sh does)")


def find_xorg(root: str = "/") -> str:
    """The host's X server, which the guest runs from the host's root; with its
    modesetting driver (the guest's GPU is a KMS device)."""
    for path in XORG_CANDIDATES:
        if os.access(os.path.join(root, path.lstrip("/")), os.X_OK):
            if not os.path.exists(os.path.join(root, MODESETTING)):
                break
            return path
    else:
        raise no_xorg()
    raise HostError(f"--graphics needs Xorg's modesetting driver (/{MODESETTING}), and the "
                    "host has none", f"install the '{XORG_PACKAGE}' package")


# --- the domain ----------------------------------------------------------------------------------


def devices(g: Graphics) -> list[etree._Element]:
    """<graphics> and <video model='none'/> (the GPU itself is qemu_args')."""
    from lxml.builder import E

    gr = E.graphics(E.listen(type="address", address=g.listen), type=g.type.value,
                    autoport="yes")
    if g.password is not None:
        gr.set("passwd", g.password)
    return [gr, E.video(E.model(type="none"))]


def qemu_args() -> list[str]:
    return ["-device", f"{GPU_DEVICE},id={GPU_ID}"]


def display_uri(domain_xml: str) -> str | None:
    """What a viewer opens (virt-viewer URI), from the running domain's XML (its port is
    libvirt's choice: autoport)."""
    from lxml import etree

    gr = etree.fromstring(domain_xml.encode()).find("devices/graphics")
    if gr is None or gr.get("port") in (None, "-1"):
        return None
    listen = gr.get("listen") or DEFAULT_LISTEN
    host = f"[{listen}]" if ":" in listen else listen
    return f"{gr.get('type')}://{host}:{gr.get('port')}"

