"""Where things are inside a sandbox and in its state directory: names shared by the planner,
the sandbox's init and the runtime. Constants only: `start` and `stop` need a few of these
names before the sandbox runs, and loading the plan's types (plantypes.py) for them cost
every start a few milliseconds before its domain (issue 16).
"""

from __future__ import annotations

# The private tmpfs every sandbox gets, and their sizes in KiB.
TMPFS = (("/run", 65536), ("/tmp", 262144), ("/dev/shm", 65536))

# Inside the sandbox: a directory bound from the host's run dir, carrying the notify socket the
# sandbox's systemd reports readiness on and the generic command's exit status.
# In the state dir: marks a directory as a sandbox's (delete removes only such), and the
# record of why each path is private, hidden or shared.
MARKER = ".virt-sandbox-service"
EVIDENCE_FILE = "evidence.json"
HOST_CHANNEL = "/run/sandbox-host"
# The namespace of our <metadata> element in a domain's XML.
METADATA_NS = "https://virt-sandbox-service.org/xmlns/domain/1"
NOTIFY_SOCKET = f"{HOST_CHANNEL}/notify"
EXIT_STATUS_FILE = f"{HOST_CHANNEL}/exit-status"
# A generic sandbox started in the foreground: a FIFO the host makes; the init runs the command
# once the host has written to it, i.e. once the host copies the console (its first lines
# would be lost otherwise: libvirt keeps nothing of a console nobody reads).
GO_FIFO = f"{HOST_CHANNEL}/go"

ETC_WORK = ".etc-work"  # overlay /etc: the work directory beside the upper layer <state>/etc
# Overlay /etc: where the sandbox's init finds the state directory (upper and work layers) and
# the mounts that belong on top of /etc; it detaches all of it once they are in place.
ETC_STAGE = "/run/.vss-etc"
ETC_STAGE_MOUNTS = f"{ETC_STAGE}/mnt"  # + the target under /etc
ETC_MERGED = f"{ETC_STAGE}/merged"  # where the init builds the overlay before moving it
OVERLAY_OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"  # a plain upper layer

# The init's cgroup for the sandbox's processes, below the one libvirt made (--tasks; see
# initscript.py and runtime/lxccgroups.py).
PAYLOAD_CGROUP = "sandbox"
