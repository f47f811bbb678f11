#!/bin/sh
# arguments: sandbox-init /bin/true
vss_cgroups() {
  set --
  while IFS=: read -r _ ctl path; do
    [ -n "$ctl" ] && [ "$path" != / ] || continue
    d=/sys/fs/cgroup/${ctl#name=}$path; [ -d "$d" ] || continue
    set -- "$@" "$d/sandbox"
  done < /proc/self/cgroup
  [ $# -eq 0 ] || mkdir -p "$@"
  for p; do
    d=${p%/sandbox}
    if [ -f "$d/cpuset.cpus" ]; then
      read -r v < "$d/cpuset.cpus"; echo "$v" > "$p/cpuset.cpus"
      read -r v < "$d/cpuset.mems"; echo "$v" > "$p/cpuset.mems"
    fi
    for f in "$d"/blkio.throttle.*_device; do
      [ -f "$f" ] || continue
      while read -r dev rate; do echo "$dev $rate" > "$p/${f##*/}"; done < "$f"
    done
    echo $$ > "$p/cgroup.procs"
  done
}
vss_cgroups
if [ -n "${VSS_TASKS_MAX:-}" ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  base=$(sed -n 's/^[0-9]*:[^:]*cpu[^:]*:\(.*\)$/\1/p;T;q' /proc/self/cgroup)
  base=${base%/sandbox}; pd=/run/.vss-pids
  mkdir -p $pd && mount -t cgroup -o pids pids $pd &&
  mkdir -p "$pd$base/sandbox" && echo "$VSS_TASKS_MAX" > "$pd$base/pids.max" &&
  echo $$ > "$pd$base/sandbox/cgroup.procs" && tasks_set=1
  umount $pd 2>/dev/null; rmdir $pd
  if [ -z "${tasks_set:-}" ]; then
    echo 'virt-sandbox-service: no pids cgroup to hold --tasks' >&2; exit 1
  fi
fi
unset VSS_TASKS_MAX
cg=$(sed -n 's/^0::\(.*\)$/\1/p' /proc/self/cgroup)
if [ "$cg" = / ]; then cg=$(sed -n 's/^[0-9]*:[^:]*cpu[^:]*:\(.*\)$/\1/p;T;q' /proc/self/cgroup); elif [ -n "$cg" ]; then cg="${cg%/}/sandbox"; fi
/bin/umount -R /sys/fs/cgroup
if [ -n "$cg" ] && [ "$cg" != / ]; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup && mkdir -p "/sys/fs/cgroup$cg" &&
  echo $$ > "/sys/fs/cgroup$cg/cgroup.procs"
  /bin/umount /sys/fs/cgroup
fi
mkdir /run/.vss-etc/merged && mount -t overlay -o lowerdir=/etc,upperdir=/run/.vss-etc/state/etc,workdir=/run/.vss-etc/state/.etc-work,redirect_dir=off,index=off,metacopy=off,xino=off overlay /run/.vss-etc/merged || exit 125
mount --rbind /run/.vss-etc/mnt/etc/alternatives /run/.vss-etc/merged/alternatives || exit 125
mount --rbind /run/.vss-etc/mnt/etc/ssl/certs /run/.vss-etc/merged/ssl/certs || exit 125
rm -rf /run/.vss-etc/merged/ld.so.cache && : > /run/.vss-etc/merged/ld.so.cache || exit 125
mount --rbind /run/.vss-etc/mnt/etc/ld.so.cache /run/.vss-etc/merged/ld.so.cache || exit 125
rm -rf /run/.vss-etc/merged/ld.so.preload && : > /run/.vss-etc/merged/ld.so.preload || exit 125
mount --rbind /run/.vss-etc/mnt/etc/ld.so.preload /run/.vss-etc/merged/ld.so.preload || exit 125
mount --move /run/.vss-etc/merged /etc || exit 125
/bin/umount -l /run/.vss-etc/state /run/.vss-etc/mnt/etc/alternatives /run/.vss-etc/mnt/etc/ssl/certs /run/.vss-etc/mnt/etc/ld.so.cache /run/.vss-etc/mnt/etc/ld.so.preload
rm -r --one-file-system /run/.vss-etc
chmod 0755 /home /root || exit 125
if [ -p /run/sandbox-host/go ]; then read -r _ < /run/sandbox-host/go; fi
/usr/bin/unshare --cgroup /usr/bin/setsid -c /usr/bin/python3 -I -S /run/.vss-confine.py --caps chown,dac_override,fowner,fsetid,kill,setgid,setuid,setpcap,net_bind_service,sys_chroot,audit_write,setfcap -- "$@"; rc=$?
echo $rc > /run/sandbox-host/exit-status; exit $rc
