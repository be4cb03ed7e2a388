#!/usr/bin/env bash
# Build the VM lab's Debian 12 guest image into OUTDIR:
#   rootfs.img  ext4 root filesystem (sparse; guests boot qcow2 overlays of it, never it)
#   vmlinuz, initrd.img  Debian's own kernel, which has IPVS, VXLAN and 9p as modules
#   SHA256SUMS  written last: an OUTDIR without it is an unfinished build
# Usage: build-image.sh OUTDIR PYTHON_REQUIREMENT...
# The requirements are shoal's own dependencies: the guests have no route out, so they are
# installed into the image's venv here, while the chroot still shares the build host's network.
# integration/vm/image.py calls this with OUTDIR keyed by a hash of every input.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [PYTHON_REQUIREMENT...]" >&2
    exit 2
fi
OUT=$1; shift
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${SHOAL_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# headroom over the installed size for image stores, containers and logs in the guests
DISK_SIZE=${SHOAL_VM_DISK_SIZE:-3G}

[ "$(id -u)" -eq 0 ] || { echo "build-image: run as root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap mke2fs chroot; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing" >&2; exit 1; }
done

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
ROOT=$WORK/root
mounted=()
cleanup() {
    local m
    for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The kernel is installed after debootstrap: its initrd is then built once, small (see below).
packages=$(grep -v '^\s*#' "$HERE/packages.txt" | grep -v '^\s*$')
include=$(grep -v '^linux-image' <<<"$packages" | paste -sd, -)
kernel_pkgs=$(grep '^linux-image' <<<"$packages" | paste -sd' ' -)
t0=$SECONDS

# shoal's Python dependencies as wheels, fetched with the build host's pip and its settings
# (index, proxy, certificates); the chroot's python is the same Debian 12 python3.11.
echo "build-image: pip wheel $*"
mkdir -p "$WORK/wheels"
"${SHOAL_VM_HOST_PYTHON:-python3}" -m pip wheel -q --disable-pip-version-check -w "$WORK/wheels" \
    "setuptools>=61" wheel "$@"

echo "build-image: debootstrap $SUITE ($include)"
# minbase: only what the guests need; everything else is listed in packages.txt
debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOT" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 40 "$WORK/debootstrap.log" >&2
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 40 "$ROOT/debootstrap/debootstrap.log" >&2
    echo "build-image: debootstrap failed" >&2
    exit 1
}
echo "build-image: debootstrap done in $((SECONDS - t0)) s"

for m in proc sys dev; do
    mount --bind "/$m" "$ROOT/$m"
    mounted=("$ROOT/$m" "${mounted[@]}")
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 "$@"; }

# shoal's dependencies, plus what building shoal offline from source needs (provision.sh
# installs with --no-index --no-build-isolation when these are present)
echo "build-image: pip install into /opt/shoal/venv"
cp -r "$WORK/wheels" "$ROOT/tmp/wheels"
in_root python3 -m venv /opt/shoal/venv
in_root /opt/shoal/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check \
    --no-index --find-links /tmp/wheels "setuptools>=61" wheel "$@"
rm -rf "$ROOT/tmp/wheels"

# A small initrd: the guests only need virtio disks and ext4 to reach the root filesystem,
# and the default (MODULES=most) makes it several times larger, built and unpacked slower.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
cat > "$ROOT/etc/initramfs-tools/conf.d/shoal-vm" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$ROOT/etc/initramfs-tools/modules"
echo "build-image: apt-get install $kernel_pkgs"
in_root apt-get update -qq
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $kernel_pkgs >"$WORK/kernel.log" 2>&1 || { tail -n 40 "$WORK/kernel.log" >&2; exit 1; }

# The kernel's modules, minus hardware no QEMU guest has: a smaller image to write and copy.
kver=$(basename "$(ls -d "$ROOT"/lib/modules/*)")
kmods=$ROOT/lib/modules/$kver/kernel
rm -rf "$kmods"/sound "$kmods"/drivers/{gpu,media,infiniband,bluetooth,staging,iio,hid,usb,input,isdn,mtd,net/wireless,net/ethernet,net/can,scsi,hwmon,platform,video,misc,thunderbolt,nfc,edac,leds,w1,power,mfd,regulator,pinctrl,rtc,firewire,spi,i2c,mmc,memstick,comedi,atm,pcmcia,ata,md,target,nvme,crypto} \
       "$kmods"/net/{bluetooth,wireless,mac80211,nfc,can,6lowpan,ieee802154,mac802154,rxrpc,ceph,sunrpc,tipc,rds,smc,atm,ax25,netrom,rose,x25,lapb,appletalk,phonet,caif,l2tp,batman-adv,mpls,dsa,iucv,qrtr,vmw_vsock,rfkill} \
       "$kmods"/fs/{nfs,nfsd,ceph,cifs,smb,ocfs2,gfs2,xfs,btrfs,jfs,reiserfs,f2fs,ntfs3,udf,ubifs,hfs,hfsplus,nilfs2,orangefs,dlm,afs,coda,erofs,gfs2,jffs2,ufs,minix,qnx6,romfs,ocfs2}
in_root depmod -a "$kver"

# The guest side of the lab: the agent the host drives over virtio-serial, and the boot-time
# setup that takes the guest's name and address from the kernel command line.
install -m 0755 "$HERE/guest/shoal-vm-agent" "$ROOT/usr/local/sbin/shoal-vm-agent"
install -m 0755 "$HERE/guest/shoal-vm-setup" "$ROOT/usr/local/sbin/shoal-vm-setup"
install -m 0644 "$HERE/guest/shoal-vm-agent.service" "$HERE/guest/shoal-vm-setup.service" \
    "$ROOT/etc/systemd/system/"
in_root systemctl enable shoal-vm-agent.service shoal-vm-setup.service >/dev/null 2>&1
# Units that only cost boot time under emulation (or would try to reach the network): each
# process started at boot costs seconds of emulated CPU, times three guests on two cores.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer getty@tty1.service serial-getty@ttyS0.service \
    getty-static.service systemd-timesyncd.service ipvsadm.service systemd-binfmt.service \
    dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-fs-fuse-connections.mount modprobe@dm_mod.service modprobe@efi_pstore.service \
    modprobe@loop.service modprobe@fuse.service systemd-pstore.service \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service \
    systemd-journal-flush.service >/dev/null 2>&1
echo "/dev/vda / ext4 rw,noatime 0 1" > "$ROOT/etc/fstab"
echo "shoal-vm" > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n' > "$ROOT/etc/hosts"
# An empty machine-id is filled at first boot; a fixed one would be shared by all guests.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/vagrant" "$ROOT/shoal-lab"
# guests resolve nothing outside (they have no route out); an empty resolv.conf says so
: > "$ROOT/etc/resolv.conf"

cp "$ROOT/boot/vmlinuz-$kver" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$kver" "$WORK/initrd.img"
in_root apt-get clean
for m in "${mounted[@]}"; do umount -l "$m"; done
mounted=()
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/{doc,man,info,locale}/* \
       "$ROOT"/var/cache/debconf/*-old "$ROOT/boot"/initrd.img-* "$ROOT"/debootstrap

echo "build-image: mke2fs ($(du -sh "$ROOT" | cut -f1) of files)"
# -d copies the tree straight into the new filesystem: no loop device, no mount
truncate -s "$DISK_SIZE" "$WORK/rootfs.img"
mke2fs -q -t ext4 -L shoalroot -E root_owner=0:0 -d "$ROOT" "$WORK/rootfs.img" "$DISK_SIZE"
echo "$kver" > "$WORK/kernel-version"

for f in rootfs.img vmlinuz initrd.img kernel-version; do mv "$WORK/$f" "$OUT/$f"; done
(cd "$OUT" && sha256sum vmlinuz initrd.img kernel-version > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
echo "build-image: done in $((SECONDS - t0)) s: $OUT"
