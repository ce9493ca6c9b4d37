#!/bin/sh
# /init of the Linux 6.1 test guest (tests/kernel/test_kernel61_vm.py).  Loads the modules,
# runs /jobs.sh (written by the host: calls of the functions below), writes /out as a
# tar stream onto the disk with serial "results" and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /out /mnt
for m in $(cat /modules.order); do
    insmod "/modules/$m" 2>>/out/insmod.txt || echo "insmod $m failed" >>/out/insmod.txt
done

dev_of() {  # the /dev node of the virtio disk whose serial is $1
    for b in /sys/block/vd*; do
        if [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ]; then echo "/dev/${b##*/}"; return; fi
    done
}

mark() { echo "cipherdump-vm: $*" > /dev/kmsg; }

# check LABEL SERIAL VECTOR: walk and look up without the key, then with the keys of
# VECTOR (/jobs/VECTOR.keys), each on a fresh read-only mount.
check() {
    d=$(dev_of "$2")
    if [ -z "$d" ]; then echo "no disk with serial $2" > "/out/$1.error"; return; fi
    mark "begin $1 ($d)"
    if mount -t ext4 -o ro "$d" /mnt 2>"/out/$1.error"; then
        fsh walk /mnt > "/out/$1.nokey.walk"
        fsh lookups /mnt "/jobs/$3.lookups" > "/out/$1.nokey.lookups"
        umount /mnt
    fi
    if [ -s "/jobs/$3.keys" ] && mount -t ext4 -o ro "$d" /mnt 2>>"/out/$1.error"; then
        fsh addkeys /mnt "/jobs/$3.keys" > "/out/$1.addkeys"
        fsh walk /mnt > "/out/$1.key.walk"
        fsh lookups /mnt "/jobs/$3.lookups" > "/out/$1.key.lookups"
        umount /mnt
    fi
    mark "end $1"
}

# mkbig LABEL SERIAL KEYHEX COUNT NAMELEN: the kernel makes cf_enc/Big (see fsh.c).
mkbig() {
    d=$(dev_of "$2")
    mark "begin $1 ($d)"
    if mount -t ext4 "$d" /mnt 2>"/out/$1.error"; then
        fsh mkbig /mnt/cf_enc "$3" "$4" "$5" > "/out/$1.mkbig" 2>&1
        echo "rc=$?" >> "/out/$1.mkbig"
        ls -id /mnt/cf_enc/Big >> "/out/$1.mkbig"
        umount /mnt
    fi
    mark "end $1"
}

. /jobs.sh

dmesg > /out/dmesg.txt
r=$(dev_of results)
tar -cf "$r" -C /out .
sync
poweroff -f
