#!/bin/sh
# /init of the Ferry test guest: busybox ash as PID 1 in an initramfs (guest-image.ts builds it).
#
# Kernel command line knobs (all optional):
#   ferry.guest=writer|idle|shell  what to run; default shell (a root shell on the console);
#                                  idle only prints boot and tick lines (for memory-only moves)
#   ferry.blocks=B                 writer: the region is blocks 0..B-1 of /dev/vda (default 4096)
#   ferry.interval_ms=I            writer: at least I ms between writes (default 0, 10 ms steps)
#   ferry.check_every=C            writer: re-read one live block after every C-th write (default 16)
#   ferry.dirty_mib=M              rewrite M MiB of memory over and over in the background
#                                  (default 0: none), for memory migrations that cannot converge
#
# Console lines of the writer (guest-log.ts parses them; anything else is ignored):
#   ferry-guest boot <id>                       once per boot (writer and idle)
#   ferry-guest writer blocks <B> interval_ms <I> check_every <C>
#   tick <counter> <acked>                      every loop, so a pause shows as a gap
#   ack <N> <block>                             write N is acknowledged (after O_DIRECT + fsync)
#   check <M> ok | bad <block> write <M> got <first line read>
#   error <N> <block> <message>                 write N failed; it is retried, N does not advance
#
# The writer's contract, the one the host-side verifier relies on: write N goes to block N mod B
# and holds blockContent(id, N, block) (guest-log.ts mirrors it); writes are strictly sequential
# and N only advances once the write is acknowledged, so after `ack L` every write 1..L is on the
# disk and only write L+1 may be in flight.

export PATH=/bin:/sbin
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# Only emergencies reach the console: a kernel message inside a line would garble it.
echo 1 >/proc/sys/kernel/printk

# /modules holds the needed .ko files; /modules/order lists them dependencies first.
while read -r module; do
  insmod "/modules/$module.ko" || echo "ferry-guest insmod $module failed"
done </modules/order
# No address: the NIC only has to exist and be up, for migrations that carry its state.
ip link set eth0 up 2>/dev/null || echo "ferry-guest no eth0"

guest=shell blocks=4096 interval_ms=0 check_every=16 dirty_mib=0
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case "$arg" in
  ferry.guest=*) guest=${arg#*=} ;;
  ferry.blocks=*) blocks=${arg#*=} ;;
  ferry.interval_ms=*) interval_ms=${arg#*=} ;;
  ferry.check_every=*) check_every=${arg#*=} ;;
  ferry.dirty_mib=*) dirty_mib=${arg#*=} ;;
  esac
done

# A knob that is not a number would end the shell at its first arithmetic (and so the guest).
for knob in "blocks=$blocks" "interval_ms=$interval_ms" "check_every=$check_every" \
  "dirty_mib=$dirty_mib"; do
  case "${knob#*=}" in
  '' | *[!0-9]* | 0 | 0?*)
    [ "$knob" = interval_ms=0 ] || [ "$knob" = dirty_mib=0 ] && continue
    echo "ferry-guest bad knob ferry.$knob: need a positive integer"
    poweroff -f
    ;;
  esac
done

# Sets $fill to "<n>." repeated to at least 4096 characters: the padding of write n's block.
make_fill() {
  fill="$1."
  while [ ${#fill} -lt 4096 ]; do fill="$fill$fill"; done
}

# Writes exactly the 4096 bytes of write $1 to block $2 into file $3 (the header line, then fill).
make_block() {
  make_fill "$1"
  block_text="ferry-block $2 write $1 boot $id
$fill"
  printf '%s' "${block_text:0:4096}" >"$3"
}

# Centiseconds since boot, without a fork (the shell's read is a builtin). The leading 0 of
# the fraction goes: $((08)) is a bad octal number, and an arithmetic error ends the shell.
now_cs() {
  read -r up _ </proc/uptime
  frac=${up#*.}
  now=$((${up%.*} * 100 + ${frac#0}))
}

# Re-reads a random block still holding one of the last B writes and compares it.
check_one() {
  span=$acked
  [ "$span" -gt "$blocks" ] && span=$blocks
  m=$((acked - RANDOM % span))
  mb=$((m % blocks))
  make_block "$m" "$mb" /tmp/expect
  if dd if=/dev/vda of=/tmp/got bs=4096 count=1 skip="$mb" iflag=direct 2>/dev/null &&
    cmp -s /tmp/got /tmp/expect; then
    echo "check $m ok"
  else
    echo "bad $mb write $m got $(head -n 1 /tmp/got 2>/dev/null | head -c 120)"
  fi
}

writer() {
  tries=0
  while [ ! -b /dev/vda ]; do
    tries=$((tries + 1))
    [ $tries -eq 50 ] && echo "ferry-guest waiting for /dev/vda"
    sleep 0.1
  done
  echo "ferry-guest writer blocks $blocks interval_ms $interval_ms check_every $check_every"
  counter=0 acked=0 due=0 interval_cs=$((interval_ms / 10))
  while :; do
    counter=$((counter + 1))
    echo "tick $counter $acked"
    if [ "$interval_cs" -gt 0 ]; then
      now_cs
      if [ "$now" -lt "$due" ]; then
        sleep 0.01
        continue
      fi
      due=$((now + interval_cs))
    fi
    n=$((acked + 1))
    b=$((n % blocks))
    make_block "$n" "$b" /tmp/write
    # O_DIRECT so the write reaches the virtual disk now, fsync so it is flushed there too:
    # only then is it acknowledged to the host.
    if dd if=/tmp/write of=/dev/vda bs=4096 count=1 seek="$b" oflag=direct conv=notrunc,fsync \
      2>/tmp/dd-error; then
      acked=$n
      echo "ack $n $b"
      [ $((n % check_every)) -eq 0 ] && check_one
    else
      echo "error $n $b $(tr '\n' ' ' </tmp/dd-error | head -c 200)"
      sleep 0.1
    fi
  done
}

idle() {
  counter=0
  while :; do
    counter=$((counter + 1))
    echo "tick $counter 0"
    sleep 0.01
  done
}

# Memory that changes faster than a slow migration stream can send it: random data (so no page
# is sent as a zero page) copied over and over onto the same pages of the RAM-backed root.
if [ "$dirty_mib" -gt 0 ]; then
  dd if=/dev/urandom of=/tmp/dirty-source bs=1M count="$dirty_mib" 2>/dev/null
  (while :; do
    dd if=/tmp/dirty-source of=/tmp/dirty bs=1M conv=notrunc 2>/dev/null
  done) &
fi

# A random id per boot: after a live migration the same id must carry on.
read -r id </proc/sys/kernel/random/uuid
case "$guest" in
writer | idle)
  echo "ferry-guest boot $id"
  $guest
  ;;
*)
  echo "ferry-guest shell (ferry.guest=writer|idle for the test guests); exit powers off"
  setsid cttyhack sh
  ;;
esac
poweroff -f
