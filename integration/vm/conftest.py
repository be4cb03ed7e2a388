"""One booted, provisioned VM lab for the whole integration/vm package.

Booting three guests under software emulation and provisioning them costs 3-4 minutes; the
routing-mesh tests (test_vm_lab.py) and the power-cut test (test_vm_power_loss.py, which runs
last, and promotes the two workers to managers) share it. The disks use QEMU's
cache=writeback, which the power cut needs: a guest's flush then reaches the host's file, qcow2
metadata included, and that file outlives the killed QEMU process. On this host a flush is a
cheap sync, so the other tests do not pay for it.

Torn down at the end of the package whatever happens: only the QEMU processes it started are
killed. When a test of the package failed, the guests' consoles, journals and shoald logs are
copied to /var/tmp/shoal-vm-logs/ and the path is printed.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import time
from pathlib import Path

import pytest

from integration.vm.lab import VMLab

# Managers formed by the provisioning; the power-cut test promotes the others itself.
MANAGERS = int(os.environ.get("SHOAL_VM_MANAGERS", "1"))
LOG_ROOT = Path("/var/tmp/shoal-vm-logs")
TIMINGS: dict[str, float] = {}


def say(request, text: str, tag: str = "vm lab") -> None:
    """Print past pytest's capture: the timings belong in the CI log."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[{tag}] {text}", file=sys.stderr, flush=True)


@pytest.fixture(autouse=True)
def _slow_steps_are_not_hangs():
    """pyproject's faulthandler_timeout (300 s) is for hung tests; under emulation a single
    step of these (boot, provisioning, a scenario) legitimately takes minutes. Re-arm the one
    process-wide timer with a budget that still catches a real hang."""
    faulthandler.dump_traceback_later(1500, file=sys.__stderr__)
    yield


@pytest.fixture(scope="package")
def vm_lab(request):
    faulthandler.dump_traceback_later(1500, file=sys.__stderr__)
    if os.geteuid() != 0:
        pytest.fail("the VM lab needs root (debootstrap, 9p shares): run scripts/test.sh as root")
    lab = VMLab(n=3, disk_cache="writeback")
    failed_before = request.session.testsfailed
    ok = False
    try:
        t0 = time.monotonic()
        lab.start()
        if lab.build_seconds:
            TIMINGS["image build (cold)"] = lab.build_seconds
            say(request, f"built the guest image in {lab.build_seconds:.0f} s")
        TIMINGS["boot"] = lab.wait_ready()
        say(request, f"3 guests up in {TIMINGS['boot']:.0f} s ({lab.accel})")
        t1 = time.monotonic()
        lab.provision_results = lab.provision(managers=MANAGERS)
        TIMINGS["provision"] = time.monotonic() - t1
        say(request, f"provisioned with vagrant/provision.sh in {TIMINGS['provision']:.0f} s")
        ok = True
        yield lab
        TIMINGS["total"] = time.monotonic() - t0
        say(request, "timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
    finally:
        try:
            if (not ok or request.session.testsfailed > failed_before
                    or os.environ.get("SHOAL_VM_KEEP_LOGS")):
                dest = LOG_ROOT / time.strftime("%Y%m%d-%H%M%S")
                lab.collect_logs(dest)
                say(request, f"guest logs (consoles, journals, shoald) in {dest}")
        finally:
            lab.stop()
            lab.remove()
