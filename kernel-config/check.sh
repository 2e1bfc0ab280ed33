#!/usr/bin/env bash
# Usage: kernel-config/check.sh FRAGMENT DOTCONFIG
# Fails unless every option FRAGMENT sets came out exactly so in DOTCONFIG.
# Kconfig drops an option silently when its dependencies are missing (on
# 6.1, BPF_LSM without MODULES), so a build is only trusted after this.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 FRAGMENT DOTCONFIG" >&2
    exit 2
fi
fragment=$1 config=$2
for f in "$fragment" "$config"; do
    [ -r "$f" ] || { echo "kernel-config check: cannot read $f" >&2; exit 2; }
done
required=0 bad=0
while IFS= read -r line; do
    case $line in
    CONFIG_*=*) want=$line name=${line%%=*} ;;
    "# CONFIG_"*" is not set") want=$line name=${line#\# }; name=${name%% *} ;;
    *) continue ;;
    esac
    required=$((required + 1))
    if ! grep -qxF -- "$want" "$config"; then
        got=$(grep -E "^(# )?${name}[= ]" "$config" || true)
        echo "kernel-config check: $fragment wants '$want', $config has '${got:-nothing (option unknown or its dependencies are missing)}'" >&2
        bad=$((bad + 1))
    fi
done <"$fragment"
if [ "$required" -eq 0 ]; then
    echo "kernel-config check: $fragment sets no options" >&2
    exit 2
fi
if [ "$bad" -ne 0 ]; then
    echo "kernel-config check: FAILED: $bad of $required required options are not as $fragment says" >&2
    exit 1
fi
echo "kernel-config check: all $required options of $fragment are set in $config"
