#!/usr/bin/env bash
# `./run setup` must never stop, kill or disable a service on the user's machine. It runs
# here against stand-ins for dpkg-query (every package missing), apt-get, systemctl, pkill,
# killall and service that record how they were called, with the policy-rc.d path moved
# into a temporary directory. Checked: at install time a policy-rc.d forbids every service
# action (exit 101, as invoke-rc.d reads it); it is gone afterwards when none was there
# before and left untouched when one was; nothing else touched a service.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
log="$work/calls"
: >"$log"
for tool in systemctl pkill killall service invoke-rc.d; do
  printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "$tool" "$log" >"$work/bin/$tool"
done
printf '#!/bin/sh\nexit 1\n' >"$work/bin/dpkg-query"
cat >"$work/bin/apt-get" <<STUB
#!/bin/sh
[ "\$1" = install ] || exit 0
if [ -x "$work/policy-rc.d" ]; then "$work/policy-rc.d" nginx start; echo "policy-rc.d \$?" >>"$log"
else echo "policy-rc.d absent" >>"$log"; fi
STUB
chmod +x "$work/bin/"*

fail=0
expect() { # what, grep pattern, file
  if ! grep -q -- "$2" "$3"; then echo "FAIL: $1" >&2; cat "$3" >&2; fail=1; fi
}
refuse() {
  if grep -q -- "$2" "$3"; then echo "FAIL: $1" >&2; cat "$3" >&2; fail=1; fi
}

# 1. No policy-rc.d before: one forbids services during the install, none is left after.
PATH="$work/bin:$PATH" TOKENGATE_POLICY_RC_D="$work/policy-rc.d" "$repo/run" setup 2>/dev/null
expect "services forbidden while installing" "^policy-rc.d 101$" "$log"
refuse "a service was stopped, killed or disabled" "^\(systemctl\|pkill\|killall\|service\|invoke-rc.d\) " "$log"
if [ -e "$work/policy-rc.d" ]; then echo "FAIL: policy-rc.d left behind" >&2; fail=1; fi

# 2. The machine has its own policy-rc.d: it is used as it is and kept.
printf '#!/bin/sh\nexit 0\n' >"$work/policy-rc.d"
chmod +x "$work/policy-rc.d"
before=$(sha256sum <"$work/policy-rc.d")
: >"$log"
PATH="$work/bin:$PATH" TOKENGATE_POLICY_RC_D="$work/policy-rc.d" "$repo/run" setup 2>/dev/null
expect "the machine's own policy-rc.d is consulted" "^policy-rc.d 0$" "$log"
refuse "a service was stopped, killed or disabled" "^\(systemctl\|pkill\|killall\|service\|invoke-rc.d\) " "$log"
if [ "$(sha256sum <"$work/policy-rc.d")" != "$before" ]; then echo "FAIL: the machine's policy-rc.d changed" >&2; fail=1; fi

[ "$fail" = 0 ] && echo "ok: ./run setup leaves services alone"
exit "$fail"
