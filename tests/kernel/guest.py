#!/usr/bin/env python3
"""guest.py - the TLS tests under a kernel that has kernel TLS.

Debian's own kernel has the `tls` module, so on most machines OpenSSL
hands the application keys to the kernel and the agent and server send
through it: a path a kernel without the module never runs. This boots
Debian's current kernel (package linux-image-amd64, downloaded with
apt-get and kept in a cache directory) under qemu, with the host's root
file system shared read-write over 9p, loads `tls` and runs inside:

  the TLS unit tests (BS_TEST_KTLS=1: the kernel must have the keys),
  some integration scenarios over TLS (GUEST_SCENARIOS below),

then checks /proc/net/tls_stat: the kernel must have sealed records for
the connections the tests made. The guest has loopback only and its own
/tmp; qemu emulates the CPU (no KVM), so the scenarios run slower.

Needs root (9p shares files as their owners), qemu-system-x86,
busybox-static, cpio and kmod; otherwise it prints SKIPPED: and exits 77.
A kernel that cannot be fetched or booted is a failure.

Environment: BS_SOURCE_DIR, BS_BUILD_DIR, BS_GUEST_CACHE (default
/var/cache/backupsync-test-guest), BS_KEEP=1 keeps the work directory.
Python 3 stdlib only.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.realpath(os.environ.get("BS_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE))))
BUILD_DIR = os.path.realpath(os.environ.get("BS_BUILD_DIR", os.path.join(SOURCE_DIR, "build")))
CACHE = os.environ.get("BS_GUEST_CACHE", "/var/cache/backupsync-test-guest")
BOOT_TIMEOUT = 900

# Modules the guest loads from its initial RAM disk, in order: virtio and
# 9p to mount the host's root, then tls.
INITRD_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "tls"]

# Integration scenarios run in the guest: what reaches the wire, a record
# cut by the network, a changed server key, a join, changes both ways, and
# a 24 MiB file sent and edited both ways.
GUEST_SCENARIOS = [
    "tls_nothing_readable_on_the_wire",
    "tls_cut_record",
    "tls_key_changed_refused",
    "register_and_join",
    "ops_both_directions",
    "delta_edit_both_ways",
]

T0 = time.monotonic()


def say(msg):
    print("[%6.1f s] %s" % (time.monotonic() - T0, msg), flush=True)


def skip(reason):
    print("SKIPPED: %s" % reason, flush=True)
    sys.exit(77)


def fail(msg):
    print("FAIL: %s" % msg, flush=True)
    sys.exit(1)


def run(argv, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, text=True, timeout=600, **kw)
    if p.returncode != 0:
        fail("%s exited %d:\n%s" % (" ".join(argv), p.returncode, p.stdout[-2000:]))
    return p.stdout


def kernel_package():
    out = run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends: (linux-image-\S+-amd64)\b", out)
    if not m:
        fail("apt-cache names no kernel for linux-image-amd64:\n" + out)
    return m.group(1)


def fetch_kernel():
    """The kernel image and its module tree, extracted once into CACHE."""
    pkg = kernel_package()
    root = os.path.join(CACHE, pkg)
    version = pkg[len("linux-image-"):]
    vmlinuz = os.path.join(root, "boot", "vmlinuz-" + version)
    moddir = os.path.join(root, "lib", "modules", version)
    if not os.path.exists(os.path.join(moddir, "modules.dep")):
        os.makedirs(CACHE, exist_ok=True)
        for old in glob.glob(os.path.join(CACHE, "*.deb")):
            os.unlink(old)
        say("fetching %s" % pkg)
        p = subprocess.run(["apt-get", "download", pkg], cwd=CACHE, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            run(["apt-get", "update", "-q"])
            run(["apt-get", "download", pkg], cwd=CACHE)
        debs = glob.glob(os.path.join(CACHE, pkg + "_*.deb"))
        if len(debs) != 1:
            fail("apt-get download %s left %r" % (pkg, debs))
        # An earlier kernel's tree is not needed again.
        for old in glob.glob(os.path.join(CACHE, "linux-image-*")):
            if os.path.isdir(old):
                shutil.rmtree(old, ignore_errors=True)
        run(["dpkg-deb", "-x", debs[0], root])
        run(["depmod", "-b", root, version])
        os.unlink(debs[0])
    return version, vmlinuz, moddir


def module_files(moddir, names):
    """Module paths (relative to moddir) for names and what they need, dependencies first."""
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[os.path.basename(path).split(".ko")[0].replace("-", "_")] = (path, rest.split())
    order = []

    def add(path):
        if path in order:
            return
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        for d in reversed(deps[name][1]):
            add(d)
        order.append(path)

    for n in names:
        if n not in deps:
            fail("the kernel has no module %s" % n)
        add(deps[n][0])
    return order


def below_tmp(paths):
    """Those of paths below /tmp, outermost first, without any below another."""
    out = []
    for p in sorted({os.path.realpath(p) for p in paths}, key=len):
        if p.startswith("/tmp/") and not any(p.startswith(o + "/") for o in out):
            out.append(p)
    return out


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do
	insmod /lib/modules/$m || echo "guest: insmod $m failed"
done
job=$(sed -n 's/.*bs\.job=\([^ ]*\).*/\1/p' /proc/cmdline)
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none,access=client hostroot /newroot ||
	{ echo "guest: cannot mount the host's root"; echo o > /proc/sysrq-trigger; }
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/bash "$job"
"""

# The job, run as the guest's PID 1 with the host's root as its root.
JOB = r"""#!/bin/bash
# A /tmp of its own (SQLite maps files, which 9p does not share), and the
# host's source and build directories seen where they are when below /tmp.
mount -t tmpfs tmpfs /run
mkdir /run/host-tmp
mount --bind /tmp /run/host-tmp
mount -t tmpfs tmpfs /tmp
for d in {host_dirs}; do
	mkdir -p "$d" && mount --bind "/run/host-tmp/${{d#/tmp/}}" "$d"
done
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount --bind {moddir_parent} /lib/modules
ip link set lo up
hostname backupsync-guest
export PATH={path} HOME=/root BS_BUILD_DIR={build} BS_TEST_KTLS=1 PYTHONDONTWRITEBYTECODE=1
sealed() {{ awk '$1 == "TlsTxSw" {{ print $2 }}' /proc/net/tls_stat 2>/dev/null || echo 0; }}
echo "guest: kernel $(uname -r), ULPs: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
before=$(sealed)
failed=0
{build}/tests/unit/test-tls --tap --jobs 2 || failed=$((failed + 1))
cd {source}
for s in {scenarios}; do
	timeout 600 python3 tests/integration/run.py "$s" || failed=$((failed + 1))
done
after=$(sealed)
echo "guest: connections whose records the kernel sealed: $((after - before))"
echo "$failed $before $after" > {work}/result
sync
echo o > /proc/sysrq-trigger
sleep 60
"""


def main():
    if os.geteuid() != 0:
        skip("needs root (the host's files are shared with the guest as their owners)")
    for tool in ("qemu-system-x86_64", "cpio", "depmod", "apt-get"):
        if not shutil.which(tool):
            skip("%s is not installed" % tool)
    busybox = "/bin/busybox"
    if not os.path.exists(busybox) or b"not a dynamic executable" not in subprocess.run(
            ["ldd", busybox], stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout:
        skip("no static busybox (package busybox-static)")
    for exe in ("tests/unit/test-tls", "daemon/backupsyncd", "client-agent/backupsync-agent"):
        if not os.path.exists(os.path.join(BUILD_DIR, exe)):
            fail("%s is not built in %s" % (exe, BUILD_DIR))

    version, vmlinuz, moddir = fetch_kernel()
    work = tempfile.mkdtemp(prefix="bs-guest-", dir="/var/tmp")
    try:
        initrd_dir = os.path.join(work, "initrd")
        for d in ("bin", "proc", "sys", "dev", "newroot", "lib/modules"):
            os.makedirs(os.path.join(initrd_dir, d))
        shutil.copy(busybox, os.path.join(initrd_dir, "bin", "busybox"))
        names = []
        for rel in module_files(moddir, INITRD_MODULES):
            shutil.copy(os.path.join(moddir, rel), os.path.join(initrd_dir, "lib", "modules"))
            names.append(os.path.basename(rel))
        with open(os.path.join(initrd_dir, "modules.list"), "w") as f:
            f.write("\n".join(names) + "\n")
        with open(os.path.join(initrd_dir, "init"), "w") as f:
            f.write(INIT)
        os.chmod(os.path.join(initrd_dir, "init"), 0o755)
        files = subprocess.run(["find", "."], cwd=initrd_dir, stdout=subprocess.PIPE,
                               check=True).stdout
        initrd = os.path.join(work, "initrd.cpio")
        with open(initrd, "wb") as out:
            subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=initrd_dir, input=files,
                           stdout=out, check=True)

        job = os.path.join(work, "job.sh")
        with open(job, "w") as f:
            q = shlex.quote
            f.write(JOB.format(moddir_parent=q(os.path.dirname(moddir)), build=q(BUILD_DIR),
                               host_dirs=" ".join(q(d) for d in below_tmp([SOURCE_DIR, BUILD_DIR])),
                               source=q(SOURCE_DIR), work=q(work), path=q(os.environ.get("PATH", "")),
                               scenarios=" ".join(GUEST_SCENARIOS)))

        argv = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
                "-smp", "2", "-m", "3072", "-nographic", "-no-reboot", "-nic", "none",
                "-kernel", vmlinuz, "-initrd", initrd,
                "-append", "console=ttyS0 quiet panic=-1 bs.job=" + job,
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap"]
        say("booting %s under qemu (emulated CPU)" % version)
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            fail("the guest did not finish within %d s" % BOOT_TIMEOUT)
        result = os.path.join(work, "result")
        if not os.path.exists(result):
            fail("the guest stopped (qemu exited %d) without a result" % p.returncode)
        failed, before, after = (int(x) for x in open(result).read().split())
        say("guest: %d failed; the kernel sealed records for %d connections" % (failed, after - before))
        if failed:
            fail("%d test run(s) failed in the guest (their output is above)" % failed)
        # Each scenario makes at least one agent connection, the unit tests more.
        if after - before < len(GUEST_SCENARIOS):
            fail("the kernel sealed records for %d connections only: kernel TLS was not used"
                 % (after - before))
        say("PASS")
    finally:
        if os.environ.get("BS_KEEP") == "1":
            say("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
