"""`run --graphics` (issue 18, a graphical sandbox): the micro-VM with a display and a GPU,
the host's X server started in it, the command on it.

The booting test is the issue's: "the libvirt screenshot API returns an image in which the
program's window is visible. Check it by its pixels, not by a timeout." An xterm with a
pure green background is started in a `run --graphics vnc` (one boot under TCG); the test
takes screenshots of the transient domain until a large green rectangle is in one, then
ends the run with SIGTERM and checks nothing is left. The rest is pure: the domain's XML
(tests/test_kvm_golden.py holds its golden file), the display's address, the password
file, and the bad input, each refused before anything is started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from virt_sandbox_service import graphics
from virt_sandbox_service.config import Driver, GraphicsType
from virt_sandbox_service.errors import HostError, UserError

from .conftest import CLI, ROOT, Env, need, unique_name
from .test_run import reachable, run_domains

KVM = "qemu:///system"
GREEN = (0, 255, 0)
# xterm's 80x24 cells of the server's built-in 6x13 "fixed" font: about 480x312 pixels.
GREEN_RECT = (300, 200)  # at least this big a block of pure green, at the window's place
SCREENSHOT_DEADLINE = 240.0  # a safety net only: the loop ends when the pixels are there


# --- images from the screenshot API ------------------------------------------------------------


def decode_image(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of what libvirt's screenshot API returns: PPM (P6) from
    older qemu, PNG (8-bit RGB or RGBA, non-interlaced) from qemu 7.2 with libvirt 9.0."""
    if data.startswith(b"P6"):
        return _ppm(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    raise AssertionError(f"not a PPM or PNG image: {data[:16]!r}")


def _ppm(data: bytes) -> tuple[int, int, bytes]:
    fields: list[bytes] = []
    pos = 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    width, height, maxval = (int(f) for f in fields)
    assert maxval == 255, maxval
    return width, height, data[pos + 1:pos + 1 + width * height * 3]


def _png(data: bytes) -> tuple[int, int, bytes]:
    pos, idat, width, height, channels = 8, b"", 0, 0, 3
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            depth, colour, interlace = body[8], body[9], body[12]
            assert depth == 8 and colour in (2, 6) and interlace == 0, body
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(kind, line, prev, channels)
        out += line if channels == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3)
        prev = line
    return width, height, bytes(out)


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + a) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + b) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def green_block(width: int, height: int, rgb: bytes) -> tuple[int, int]:
    """The window, by its pixels: the longest run of pure green of any row, and how many
    rows hold a run at least GREEN_RECT[0] long."""
    run = re.compile(b"(?:" + re.escape(bytes(GREEN)) + b")+")
    rows, widest = 0, 0
    for y in range(height):
        row = rgb[y * width * 3:(y + 1) * width * 3]
        longest = max((len(m.group()) // 3 for m in run.finditer(row) if m.start() % 3 == 0),
                      default=0)
        widest = max(widest, longest)
        rows += longest >= GREEN_RECT[0]
    return widest, rows


def test_image_decoders_and_the_green_block() -> None:
    w, h = 400, 250
    rgb = bytes(GREEN) * (w * h)
    ppm = f"P6\n# comment\n{w} {h}\n255\n".encode() + rgb
    assert decode_image(ppm) == (w, h, rgb)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    # Rows with each filter type (none, sub, up, average, paeth) of the same green line.
    rows = b""
    for y in range(h):
        f = y % 5
        line = bytearray(rgb[:w * 3])
        enc = bytearray(line)
        for i in range(len(line)):
            a = line[i - 3] if i >= 3 else 0
            b = line[i] if y else 0
            c = (line[i - 3] if i >= 3 else 0) if y else 0
            p = a + b - c
            pred = [0, a, b, (a + b) // 2,
                    a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c)
                    else b if abs(p - b) <= abs(p - c) else c][f]
            enc[i] = (line[i] - pred) & 0xFF
        rows += bytes([f]) + enc
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0]))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert decode_image(png) == (w, h, rgb)
    assert green_block(w, h, rgb) == (400, 250)
    black = bytes(w * h * 3)
    assert green_block(w, h, black) == (0, 0)


# --- the domain and the options (pure) ------------------------------------------------------------


def test_display_address_comes_from_the_running_domain() -> None:
    xml = ("<domain><devices><graphics type='vnc' port='5901' autoport='yes' "
           "listen='127.0.0.1'/></devices></domain>")
    assert graphics.display_uri(xml) == "vnc://127.0.0.1:5901"
    xml6 = ("<domain><devices><graphics type='spice' port='5902' listen='::1'/></devices>"
            "</domain>")
    assert graphics.display_uri(xml6) == "spice://[::1]:5902"
    assert graphics.display_uri("<domain><devices/></domain>") is None


def test_graphics_devices() -> None:
    g = graphics.request("spice", "::1", None)
    gr, video = graphics.devices(g)
    assert (gr.get("type"), gr.get("autoport"), gr.get("passwd")) == ("spice", "yes", None)
    assert gr.find("listen").get("address") == "::1"  # type: ignore[union-attr]
    assert etree.tostring(video) == b'<video><model type="none"/></video>'
    assert graphics.qemu_args() == ["-device", "virtio-gpu-device,id=vss-gpu"]


def test_password_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cret\nignored\n")
    assert graphics.request("vnc", None, str(f)).password == "s3cret"
    assert "s3cret" not in repr(graphics.request("vnc", None, str(f)))
    f.write_text("longer-than-8\n")
    with pytest.raises(UserError, match="longer than VNC's 8 bytes"):
        graphics.request("vnc", None, str(f))
    assert graphics.request("spice", None, str(f)).password == "longer-than-8"
    f.write_text("\n")
    with pytest.raises(UserError, match="holds no password"):
        graphics.read_password(str(f))
    with pytest.raises(UserError, match="cannot read the graphics password file"):
        graphics.read_password(str(tmp_path / "missing"))


def test_xorg_is_found_on_the_host_root(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="an X server on the host") as e:
        graphics.find_xorg(str(tmp_path))
    assert "xserver-xorg-core" in (e.value.hint or "")
    xorg = tmp_path / "usr/lib/xorg/Xorg"
    xorg.parent.mkdir(parents=True)
    xorg.write_text("")
    xorg.chmod(0o755)
    with pytest.raises(HostError, match="modesetting driver"):
        graphics.find_xorg(str(tmp_path))
    driver = tmp_path / graphics.MODESETTING
    driver.parent.mkdir(parents=True)
    driver.write_text("")
    assert graphics.find_xorg(str(tmp_path)) == "/usr/lib/xorg/Xorg"


def test_lxc_is_refused() -> None:
    with pytest.raises(UserError, match=r"a container .* has no display") as e:
        graphics.check_driver("lxc:///", Driver.LXC)
    assert e.value.hint == "add -c qemu:///system"
    graphics.check_driver(KVM, Driver.KVM)
    graphics.check_driver("qemu:///session", Driver.KVM)  # a user's run: test_run_session


def test_create_takes_a_display_for_a_generic_kvm_sandbox_only() -> None:
    kvm, lxc = Driver.KVM, Driver.LXC
    assert graphics.create_request(None, None, KVM, kvm, False) == (None, "")
    assert graphics.create_request("spice", None, KVM, kvm, False) == (
        GraphicsType.SPICE, "127.0.0.1")
    assert graphics.create_request("vnc", "::1", KVM, kvm, False) == (GraphicsType.VNC, "::1")
    with pytest.raises(UserError, match=r"a container .* has no display") as e:
        graphics.create_request("vnc", None, "lxc:///", lxc, False)
    assert e.value.hint == "add -c qemu:///system"
    with pytest.raises(UserError, match="--graphics is for generic sandboxes") as e:
        graphics.create_request("vnc", None, KVM, kvm, True)
    assert "-- /usr/bin/xterm" in (e.value.hint or "")
    with pytest.raises(UserError, match="--graphics-listen goes with --graphics"):
        graphics.create_request(None, "127.0.0.1", KVM, kvm, False)
    with pytest.raises(UserError, match="not an IP address") as e:
        graphics.create_request("vnc", "localhost", KVM, kvm, False)
    assert "password-file" not in (e.value.hint or "")  # create has no such option


def test_create_has_no_password_option() -> None:
    """A persistent domain's passwd would sit in its XML, which reconcile cannot read back
    from libvirt (see config.py): create leaves the password out."""
    from virt_sandbox_service.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["create", "--graphics-password-file", "/x", "n", "--",
                                   "/usr/bin/xterm"])


# --- bad input through the CLI: one line, 125, nothing done -----------------------------------


def run_cli(env: Env, *args: str, wrap: list[str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(wrap or []), *CLI, "run", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})


def assert_refused(env: Env, proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 125, proc.stderr
    first, *rest = proc.stderr.splitlines()
    assert first.startswith("virt-sandbox-service: ") and needle in first, proc.stderr
    assert all(line.startswith("virt-sandbox-service: hint: ") for line in rest), proc.stderr
    assert "display:" not in proc.stderr  # nothing was started
    assert not (env.base / "run").exists() or not list((env.base / "run").iterdir())


@pytest.mark.parametrize(("options", "needle"), [
    (["--graphics", "vnc", "-c", "lxc:///"], "--graphics needs a KVM sandbox"),
    (["--graphics", "x11", "-c", KVM], "'x11' is not a valid graphics type (vnc, spice)"),
    (["--graphics", "vnc", "--graphics-password-file", "/nonexistent/pw", "-c", KVM],
     "cannot read the graphics password file /nonexistent/pw"),
    (["--graphics", "vnc", "--graphics-listen", "localhost", "-c", KVM],
     "--graphics-listen 'localhost' is not an IP address"),
    (["--graphics-listen", "127.0.0.1", "-c", KVM], "go with --graphics"),
])
def test_bad_graphics_options_are_one_clear_error(env: Env, options: list[str],
                                                   needle: str) -> None:
    assert_refused(env, run_cli(env, *options, "--", "/usr/bin/xterm"), needle)


BAD_CREATES = [
    (["--graphics", "vnc", "-c", "lxc:///", "gx1", "--", "/usr/bin/xterm"],
     "--graphics needs a KVM sandbox"),
    (["--graphics", "vnc", "-c", KVM, "-u", "apache2.service", "gx2"],
     "--graphics is for generic sandboxes"),
    (["--graphics", "x11", "-c", KVM, "gx3", "--", "/usr/bin/xterm"],
     "'x11' is not a valid graphics type (vnc, spice)"),
    (["--graphics-listen", "127.0.0.1", "-c", KVM, "gx4", "--", "/usr/bin/xterm"],
     "--graphics-listen goes with --graphics"),
    (["--graphics", "spice", "--graphics-listen", "localhost", "-c", KVM, "gx5", "--",
      "/usr/bin/xterm"], "--graphics-listen 'localhost' is not an IP address"),
]


@pytest.mark.parametrize(("options", "needle"), BAD_CREATES)
def test_bad_graphics_create_is_one_clear_error_and_leaves_nothing(
        env: Env, options: list[str], needle: str) -> None:
    from .test_bad_input import assert_clean_error, run_without_libvirt

    before = env.snapshot()
    assert_clean_error(run_without_libvirt(env, "create", *options), needle)
    assert env.snapshot() == before


@pytest.mark.root
def test_no_x_server_on_the_host_names_the_package(env: Env) -> None:
    """The host's Xorg hidden (a mount namespace of the test's own): refused before libvirt
    is asked anything."""
    hide = ("mount -t tmpfs none /usr/lib/xorg && "
            "{ [ ! -e /usr/bin/Xorg ] || mount --bind /dev/null /usr/bin/Xorg; } && "
            'exec "$@"')
    proc = run_cli(env, "--graphics", "vnc", "-c", KVM, "--", "/usr/bin/xterm",
                   wrap=["unshare", "-m", "sh", "-c", hide, "sh"])
    assert_refused(env, proc, "--graphics needs an X server on the host (Xorg)")
    assert "install the 'xserver-xorg-core' package" in proc.stderr


# --- the boot: the program's window, by its pixels ---------------------------------------------


def screenshot(dom: object) -> bytes:
    import libvirt

    assert isinstance(dom, libvirt.virDomain)
    stream = dom.connect().newStream(0)
    try:
        dom.screenshot(stream, 0, 0)
        chunks = []
        while chunk := stream.recv(1 << 20):
            if isinstance(chunk, int):  # -2: would block (a blocking stream never says so)
                continue
            chunks.append(chunk)
        stream.finish()
        return b"".join(chunks)
    except BaseException:
        stream.abort()
        raise


def find_run_domain(conn: object, before: set[str], proc: subprocess.Popen[str]) -> object:
    import libvirt

    assert isinstance(conn, libvirt.virConnect)
    while proc.poll() is None:
        new = [d for d in conn.listAllDomains(0)
               if d.name().startswith("vss-run-") and d.name() not in before]
        if new:
            return new[0]
        time.sleep(0.1)
    raise AssertionError(f"run ended ({proc.returncode}) before its domain appeared: "
                         f"{proc.stderr.read() if proc.stderr else ''}")


def wait_for_window(dom: object, start: float, alive: Callable[[], bool], what: str) -> None:
    """Screenshots of `dom` until the green window is in one (or `alive` says the program
    is gone, or the safety net's deadline passed)."""
    found, shots, seen = (0, 0), 0, (0, 0)
    while alive() and time.monotonic() - start < SCREENSHOT_DEADLINE:
        if dom.isActive():  # type: ignore[attr-defined]
            w, h, rgb = decode_image(screenshot(dom))
            shots += 1
            seen = (w, h)
            found = green_block(w, h, rgb)
            if found[0] >= GREEN_RECT[0] and found[1] >= GREEN_RECT[1]:
                break
        time.sleep(1)
    elapsed = time.monotonic() - start
    print(f"window seen after {elapsed:.1f} s, {shots} screenshots of {seen}, "
          f"green block {found}")
    assert found[0] >= GREEN_RECT[0] and found[1] >= GREEN_RECT[1], (
        f"no green window after {elapsed:.0f} s ({shots} screenshots of {seen}, "
        f"best {found}); {what}")


GREEN_XTERM = ("/usr/bin/xterm", "-geometry", "80x24+0+0", "-bg", "#00ff00", "-fg", "#00ff00",
               "-e", "sleep", "600")


@pytest.mark.root
@pytest.mark.kvm
def test_the_programs_window_is_on_the_screenshot(env: Env) -> None:
    need(reachable(KVM), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    need(os.access("/usr/bin/xterm", os.X_OK), "needs xterm (scripts/setup.sh installs it)")
    import libvirt

    start = time.monotonic()
    before = set(run_domains(KVM))
    proc = subprocess.Popen(
        [*CLI, "run", "--graphics", "vnc", "-c", KVM, "--", *GREEN_XTERM],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})
    conn = libvirt.open(KVM)
    try:
        dom = find_run_domain(conn, before, proc)
        assert isinstance(dom, libvirt.virDomain)
        listen = etree.fromstring(dom.XMLDesc(0).encode()).find("devices/graphics/listen")
        assert listen is not None and listen.get("address") == "127.0.0.1"
        wait_for_window(dom, start, lambda: proc.poll() is None, f"run: {proc.poll()}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err  # interrupted: the tool took the domain down
        assert err.startswith("virt-sandbox-service: display: vnc://127.0.0.1:"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        conn.close()
    deadline = time.monotonic() + 20
    while set(run_domains(KVM)) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(run_domains(KVM)) - before, "the run's domain was left behind"
    left = list((env.base / "run").iterdir()) if (env.base / "run").is_dir() else []
    assert not [p for p in left if p.name.startswith("vss-run-")], left


@pytest.mark.root
@pytest.mark.kvm
def test_a_created_sandboxs_window_is_on_the_screenshot(env: Env) -> None:
    """create --graphics vnc, then start --detach: the generic sandbox's init starts X and
    the green xterm on it (one boot); upgrade --check finds nothing to change right after
    create; delete --force leaves nothing."""
    need(reachable(KVM), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    need(os.access("/usr/bin/xterm", os.X_OK), "needs xterm (scripts/setup.sh installs it)")
    import json

    import libvirt

    name = unique_name("gfx")
    before = env.snapshot()
    env.run("create", "--graphics", "vnc", "-c", KVM, name, "--", *GREEN_XTERM, check=True)
    conn = libvirt.open(KVM)
    try:
        checked = env.run("upgrade", "--check", "--json", name)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        (report,) = json.loads(checked.stdout)
        assert report["definitions"]["differences"] == [], report
        start = time.monotonic()
        started = env.run("start", "--detach", name, check=True, timeout=240)
        assert "virt-sandbox-service: display: vnc://127.0.0.1:" in started.stderr, started
        dom = conn.lookupByName(name)
        wait_for_window(dom, start, lambda: bool(dom.isActive()), "the sandbox stopped")
        shown = json.loads(env.run("inspect", "--json", name, check=True).stdout)
        assert shown["graphics"]["type"] == "vnc"
        assert shown["graphics"]["address"].startswith("vnc://127.0.0.1:"), shown["graphics"]
    finally:
        deleted = env.run("delete", "--force", name, timeout=120)
        names = [d.name() for d in conn.listAllDomains(0)]
        conn.close()
    assert deleted.returncode == 0, deleted.stderr
    assert name not in names, "the sandbox's domain was left behind"
    after = env.snapshot()
    assert after["domains"] == before["domains"]
    left = [f for f in after["files"] if name in f]  # type: ignore[union-attr]
    assert not left, f"left behind: {left}"
