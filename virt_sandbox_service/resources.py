"""The files the package ships besides its modules: the host unit template (data/units/), the
KVM guest's init (data/initrd/init) and the read-only virtiofsd wrapper
(data/libexec/virtiofsd-ro). Found beside the package's own modules, so they are where the
package is: a checkout, a wheel installed by pip, a Debian package; never looked up in the
source tree.
"""

from __future__ import annotations

from pathlib import Path


def data_path(*parts: str) -> Path:
    """A shipped file or directory, as a path on disk (the package is installed unzipped: the
    guest init and the wrapper are handed to libvirt and qemu by path). For an unzipped
    package that is what importlib.resources.files() gives too, whose import (with tempfile
    and zipfile) cost every command about 3 ms (issue 16)."""
    return Path(__file__).parent.joinpath("data", *parts)
