#!/bin/sh
# Runs in dom0 (from /sbin/realxen-init, the share mounted at /mnt/share):
# start the Xen toolstack, install our wheel, run job.py, collect the logs.
# The caller powers off when this returns.
S=/mnt/share
OUT=$S/out
mkdir -p "$OUT"
exec > "$OUT/boot.log" 2>&1
echo "realxen: dom0 up $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
set -x
B=/usr/lib/xen-4.17/bin
modprobe -a xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd
mount -t xenfs xenfs /proc/xen
mkdir -p /run/xenstored /var/run/xen /var/lib/xen /var/log/xen/console /root/img
"$B/xenstored" --pid-file /run/xenstore.pid
i=0
until xenstore-read / >/dev/null 2>&1 || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
"$B/xen-init-dom0"
"$B/xenconsoled" --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
echo "realxen: toolstack up $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
xl info > "$OUT/xl-info.txt" 2>&1
dpkg-query -W -f '${Package}=${Version}\n' > "$OUT/dpkg.txt"
pip install --break-system-packages --no-index --no-deps --no-cache-dir "$S"/wheel/xenstream-*.whl \
    > "$OUT/pip.log" 2>&1
echo "pip: $?"
set +x
if [ -f "$S/job.py" ]; then
    echo "realxen: job start $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
    # the harness's own hard timeout (QEMU is killed) stays the last word
    timeout -k 10 "$(cat "$S/job-timeout" 2>/dev/null || echo 1380)" python3 -u "$S/job.py" "$S" > "$OUT/job.log" 2>&1
    echo "realxen: job exit $? $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
fi
set -x
xl list > "$OUT/xl-list-end.txt" 2>&1
for d in $(xl list | awk 'NR > 2 { print $1 }'); do xl destroy "$d"; done
xl dmesg > "$OUT/xl-dmesg.txt" 2>&1
mkdir -p "$OUT/var-log-xen"
cp -r /var/log/xen/. "$OUT/var-log-xen/" 2>/dev/null
sync
