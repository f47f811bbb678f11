"""libvirt checks every domain and network filter the tool defines or starts against its own
schema (VIR_DOMAIN_DEFINE_VALIDATE, VIR_DOMAIN_START_VALIDATE, VIR_NWFILTER_DEFINE_VALIDATE):
without the flags, libvirtd quietly drops an element it does not know. Real libvirtd; a
builder is wrapped to add one element the schema does not allow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from virt_sandbox_service.apply import libvirt as lv
from virt_sandbox_service.apply.txn import Transaction
from virt_sandbox_service.config import Paths
from virt_sandbox_service.domain import kvm as kvm_domain
from virt_sandbox_service.domain import lxc as lxc_domain
from virt_sandbox_service.errors import HostError
from virt_sandbox_service.runtime import oneshot

from .conftest import need, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
SCHEMA = "failed to validate against schema"


def bogus_domain(name: str) -> str:
    return (f"<domain type='lxc'><name>{name}</name><memory>65536</memory><os><type>exe</type>"
            "<init>/bin/true</init></os><devices><bogus/></devices></domain>")


def with_bogus(xml: str) -> str:
    root = etree.fromstring(xml.encode())
    root.find("devices").append(etree.Element("bogus"))  # type: ignore[union-attr]
    return etree.tostring(root, encoding="unicode")


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    c = lv.connect("lxc:///")
    yield c
    c.close()


def defined(conn: libvirt.virConnect, name: str) -> bool:
    return name in [d.name() for d in conn.listAllDomains(0)]


def test_define_validates(conn: libvirt.virConnect) -> None:
    name = unique_name("val")
    try:
        with pytest.raises(HostError, match=SCHEMA), Transaction() as txn:
            lv.define(conn, bogus_domain(name), txn)
            txn.commit()
        assert not defined(conn, name)
    finally:
        if defined(conn, name):
            conn.lookupByName(name).undefine()


def test_redefine_validates(conn: libvirt.virConnect) -> None:
    name = unique_name("val")
    good = bogus_domain(name).replace("<devices><bogus/></devices>", "")
    dom = conn.defineXML(good)
    try:
        with pytest.raises(HostError, match=SCHEMA):
            lv.redefine(conn, with_bogus(dom.XMLDesc(0)))
        assert "bogus" not in dom.XMLDesc(0)
    finally:
        dom.undefine()


def test_nwfilter_define_validates(conn: libvirt.virConnect) -> None:
    name = unique_name("vss-val-")
    xml = (f"<filter name='{name}' chain='root'><rule action='accept' direction='in'>"
           "<tcp dstportstart='80' bogus='1'/></rule></filter>")
    try:
        with pytest.raises(HostError, match=SCHEMA):
            lv.ensure_nwfilter(conn, name, xml)
        assert name not in conn.listNWFilters()
    finally:
        if name in conn.listNWFilters():
            conn.nwfilterLookupByName(name).undefine()


def test_lxc_run_starts_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    build = lxc_domain.build
    monkeypatch.setattr(lxc_domain, "build", lambda *a, **k: with_bogus(build(*a, **k)))
    with pytest.raises(HostError, match=SCHEMA):
        oneshot.run("lxc:///", ["/bin/true"], Paths.from_env())


@pytest.mark.kvm
def test_kvm_run_starts_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError:
        need(False, "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    build = kvm_domain.build_run
    monkeypatch.setattr(kvm_domain, "build_run",
                        lambda *a, **k: with_bogus(build(*a, **k)))
    monkeypatch.setenv("VSS_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(HostError, match=SCHEMA):
        oneshot.run("qemu:///system", ["/bin/true"], Paths.from_env())
    assert list((tmp_path / "run").iterdir()) == []
