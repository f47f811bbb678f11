"""Acceleration choice: <domain type='kvm'> only with real hardware virtualization (pure, on
captured /proc/cpuinfo excerpts and libvirt capabilities)."""

from __future__ import annotations

import dataclasses

from lxml import etree

from virt_sandbox_service.domain import kvm
from virt_sandbox_service.host import HostFacts, cpu_flags, kvm_usable, tsc_khz

# This machine: AMD EPYC under kvm_pvm, /dev/kvm present, no svm flag.
PVM_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: 2596.152
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic \
movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy \
cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext invpcid_single ibpb vmmcall \
fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap avx512ifma clflushopt clwb
"""
INTEL_CPUINFO = PVM_CPUINFO.replace("hypervisor", "hypervisor vmx")
AMD_CPUINFO = PVM_CPUINFO.replace("cmp_legacy", "cmp_legacy svm")
# libvirt 9.0's capabilities on this machine offer 'kvm' anyway (it only checks /dev/kvm).
CAPS_WITH_KVM = """<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'>
<machine maxCpus='288'>microvm</machine><domain type='qemu'/><domain type='kvm'/>
</arch></guest></capabilities>"""
CAPS_TCG_ONLY = CAPS_WITH_KVM.replace("<domain type='kvm'/>", "")


def test_pvm_host_with_dev_kvm_but_no_flag_gets_tcg() -> None:
    ok, why = kvm_usable(PVM_CPUINFO, dev_kvm_ok=True, caps_xml=CAPS_WITH_KVM)
    assert not ok
    assert why == "no vmx/svm CPU flag; /dev/kvm is present but is not hardware KVM"


def test_hardware_flags_and_working_dev_kvm_get_kvm() -> None:
    assert kvm_usable(INTEL_CPUINFO, True, CAPS_WITH_KVM) == (
        True, "hardware virtualization (vmx) and a working /dev/kvm")
    assert kvm_usable(AMD_CPUINFO, True, None)[0]


def test_flag_without_working_dev_kvm_gets_tcg() -> None:
    assert kvm_usable(INTEL_CPUINFO, False, CAPS_WITH_KVM) == (
        False, "CPU has vmx but /dev/kvm does not work")
    assert not kvm_usable(PVM_CPUINFO, False)[0]


def test_libvirt_without_kvm_domains_gets_tcg() -> None:
    assert kvm_usable(INTEL_CPUINFO, True, CAPS_TCG_ONLY) == (
        False, "libvirt's QEMU driver offers no KVM domains")


def test_flags_and_tsc_rate_are_read_from_cpuinfo() -> None:
    assert {"constant_tsc", "hypervisor"} <= cpu_flags(PVM_CPUINFO)
    assert "svm" in cpu_flags(AMD_CPUINFO)
    assert tsc_khz(PVM_CPUINFO) == 2596152
    assert tsc_khz("flags\t: fpu\n") == 0


def test_domain_type_and_cpu_follow_the_choice() -> None:
    from .test_kvm_golden import make

    tcg = etree.fromstring(make("kvm-generic").encode())
    assert tcg.get("type") == "qemu" and tcg.find("cpu") is None
    assert "tsc_early_khz=2596152" in tcg.findtext("os/cmdline", "")
    hw = etree.fromstring(make("kvm-generic", kvm=True).encode())
    assert hw.get("type") == "kvm"
    assert hw.find("cpu").get("mode") == "host-passthrough"
    assert "tsc_early_khz" not in hw.findtext("os/cmdline", "")
    assert kvm.domain_type(dataclasses.replace(HostFacts(), kvm=True)) == "kvm"
