"""doctor: the checks it prints (those that need nothing but this host)."""

from __future__ import annotations

from virt_sandbox_service import doctor, layers

from .conftest import Env


def test_confinement_line_names_the_layers_of_this_host() -> None:
    check = doctor._confinement()
    assert check.name == "confinement"
    assert check.detail.startswith("protected by capabilities, ")
    assert "namespaces" in check.detail
    h = layers.host_layers()
    assert ("seccomp" in check.detail.split(";")[0]) is h.seccomp
    assert check.ok is h.seccomp
    for layer, _ in h.missing():
        assert f"{layer} (" in check.detail.split("missing: ", 1)[1]
    if h.unprotected():
        assert "the host's root here, held back only by these" in check.hint


def test_doctor_prints_the_confinement_line(env: Env) -> None:
    proc = env.run("doctor")
    line = next(x for x in proc.stdout.splitlines() if " confinement " in x)
    assert "protected by capabilities" in line, proc.stdout
