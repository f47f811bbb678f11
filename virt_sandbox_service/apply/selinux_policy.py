"""Readying an SELinux host: the policy module loaded and libvirt's LXC contexts pointing at it.

`doctor` reports what is missing and `doctor --fix` does it (what policy/README.md says an
admin would otherwise do by hand):
- build policy/ with the distribution's policy devel Makefile and load it (`semodule -i`);
- where the platform's contexts/lxc_contexts names types its policy does not have (Debian 12
  says container_t / container_file_t, which its policy lacks), point its process and file
  entries at the module's types, keeping the original beside it (lxc_contexts.vss-orig);
  a platform whose lxc_contexts is valid (Fedora/RHEL: container-selinux) is left alone;
- restart libvirtd (through systemd where it runs), which reads lxc_contexts at start.
Validity is asked of the kernel: writing a context to /sys/fs/selinux/context fails with
EINVAL for one the loaded policy does not know.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .. import host
from ..errors import HostError
from ..util import run

MODULE = "virt_sandbox_service"
PROCESS_TYPE = "svirt_lxc_net_t"
FILE_TYPE = "svirt_sandbox_file_t"
DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")
# The digest of the sources last loaded: semodule keeps no version of its own (it ignores
# policy_module's), and an upgrade of the tool may change the rules its runtime relies on.
# A dot name, which no sandbox name (config.NAME_RE) can be.
LOADED_DIGEST = Path("/var/lib/virt-sandbox-service/.selinux-module.sha256")
SOURCE_SUFFIXES = (".te", ".fc", ".if")


def policy_sources() -> Path | None:
    """policy/ of a checkout, or where a package installs it."""
    for p in (Path(__file__).resolve().parents[2] / "policy",
              Path("/usr/share/virt-sandbox-service/policy")):
        if (p / f"{MODULE}.te").is_file():
            return p
    return None


def sources_digest(src: Path) -> str:
    """sha256 over the module's source files, names and contents, in a stable order."""
    h = hashlib.sha256()
    for f in sorted(src.glob(f"{MODULE}.*")):
        if f.suffix in SOURCE_SUFFIXES:
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def module_current(src: Path | None, marker: Path = LOADED_DIGEST) -> bool:
    """Whether the loaded module was built from these sources (no sources here: nothing to
    compare, it is taken as current)."""
    if src is None:
        return True
    return _read(marker).strip() == sources_digest(src)


def context_valid(context: str) -> bool:
    try:
        fd = os.open("/sys/fs/selinux/context", os.O_RDWR)
    except OSError:
        return False
    try:
        os.write(fd, context.encode() + b"\0")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def module_loaded() -> bool:
    r = subprocess.run(["semodule", "-l"], capture_output=True, text=True, check=False)
    return MODULE in r.stdout.split()


def lxc_contexts_path() -> Path:
    return host.selinux_policy_root() / "contexts" / "lxc_contexts"


def lxc_context_entries(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r'\s*(\w+)\s*=\s*"([^"]*)"', line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def platform_provides_types() -> bool:
    """The host's own policy already runs LXC sandboxes (Fedora/RHEL with container-selinux:
    svirt_lxc_net_t is an alias of its container_t, and lxc_contexts names valid types). Our
    module declares those names and cannot be loaded beside it."""
    entries = lxc_context_entries(_read(lxc_contexts_path()))
    return (context_valid(f"system_u:system_r:{PROCESS_TYPE}:s0")
            and all(context_valid(entries.get(k, "")) for k in ("process", "file")))


def problems() -> list[str]:
    """What keeps sandboxes from running confined here; [] when ready (or no SELinux)."""
    if not host.selinux_enabled():
        return []
    out = []
    if not module_loaded():
        if platform_provides_types():
            return []  # Fedora/RHEL: container-selinux's types (see policy/README.md)
        out.append(f"the policy module {MODULE} is not loaded")
    elif not module_current(policy_sources()):
        out.append(f"the loaded policy module {MODULE} is older than {policy_sources()} "
                   "(the tool was upgraded since it was loaded)")
    entries = lxc_context_entries(_read(lxc_contexts_path()))
    bad = [f"{k} = {v}" for k, v in entries.items() if k in ("process", "file")
           and not context_valid(v)]
    if bad:
        out.append(f"{lxc_contexts_path()} names contexts this policy lacks ({'; '.join(bad)})")
    return out


def fix() -> list[str]:
    """Do what problems() names; what was done, one line each."""
    done: list[str] = []
    if not host.selinux_enabled():
        return done
    if module_loaded() and not module_current(policy_sources()):
        done.append(_load_module())
    elif not module_loaded():
        if platform_provides_types():
            return done  # nothing to load, and loading would clash (policy/README.md)
        done.append(_load_module())
    path = lxc_contexts_path()
    text = _read(path)
    entries = lxc_context_entries(text)
    if any(not context_valid(entries.get(k, "")) for k in ("process", "file")):
        done.append(_point_lxc_contexts(path, text))
        done.append(_restart_libvirtd())
    return done


def _load_module() -> str:
    src = policy_sources()
    if src is None or not DEVEL_MAKEFILE.exists():
        raise HostError("cannot build the SELinux policy module: "
                        + ("its sources (policy/) are not installed" if src is None else
                           f"{DEVEL_MAKEFILE} is missing"),
                        "install selinux-policy-dev (Debian) or selinux-policy-devel (Fedora)")
    with tempfile.TemporaryDirectory(prefix="vss-policy-") as tmp:
        for f in src.glob(f"{MODULE}.*"):
            if f.suffix in SOURCE_SUFFIXES:
                shutil.copy(f, tmp)
        run(["make", "-s", "-f", str(DEVEL_MAKEFILE), "-C", tmp, f"{MODULE}.pp"], timeout=600)
        run(["semodule", "-i", f"{tmp}/{MODULE}.pp"], timeout=600)
    LOADED_DIGEST.parent.mkdir(parents=True, exist_ok=True)
    LOADED_DIGEST.write_text(sources_digest(src) + "\n")
    return f"loaded the SELinux policy module {MODULE}"


def _point_lxc_contexts(path: Path, text: str) -> str:
    backup = path.with_name(path.name + ".vss-orig")
    if not backup.exists():
        shutil.copy2(path, backup)
    new = re.sub(r'(?m)^(\s*process\s*=\s*")[^"]*(")',
                 rf"\1system_u:system_r:{PROCESS_TYPE}:s0\2", text)
    new = re.sub(r'(?m)^(\s*file\s*=\s*")[^"]*(")',
                 rf"\1system_u:object_r:{FILE_TYPE}:s0\2", new)
    path.write_text(new)
    return f"pointed {path} at {PROCESS_TYPE} / {FILE_TYPE} (the original: {backup.name})"


def _restart_libvirtd() -> str:
    from . import systemd as sd

    if not sd.systemd_running():
        return "restart libvirtd yourself: it reads lxc_contexts when it starts"
    from pystemd.systemd1 import Manager

    with Manager() as m:
        m.Manager.RestartUnit(b"libvirtd.service", b"replace")
    return "restarted libvirtd.service"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
