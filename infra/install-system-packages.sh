#!/usr/bin/env bash
# Install the Debian packages the stack needs, when they are missing.
#   infra/install-system-packages.sh          what `make up` needs
#   infra/install-system-packages.sh --test   plus what `make test` needs
#   infra/install-system-packages.sh --containers   Podman, to boot docker-compose.yml
#                                                   (`make test-containers`)
set -euo pipefail

declare -A why=(
  [orthanc]="the DICOM server (stores studies, DICOM TLS port)"
  [orthanc-dicomweb]="Orthanc's DICOMweb plugin (QIDO/WADO/STOW for web viewers)"
  [orthanc-python]="Orthanc's Python plugin (runs the token check inside Orthanc)"
  [nginx-light]="TLS termination and routing in front of everything"
  [redis-server]="token revocation store (one-off tokens work exactly once)"
  [openssl]="TLS tools"
  [make]="the project's commands"
  [npm]="fetches the OHIF viewer's published build (@ohif/app) for /viewer/"
  [chromium]="headless browser for the end-to-end browser tests"
  [wrk]="load generator for the benchmarks"
  [valgrind]="counts instructions for the benchmarks (python -m bench.instructions)"
  [strace]="counts Orthanc's system calls per request in a test"
  [podman]="container engine that boots docker-compose.yml (no daemon needed)"
  [runc]="the container runtime Podman is set to use (crun fails on some hosts' cgroups)"
  [catatonit]="the init process of containers started with init: true"
  [debootstrap]="makes the debian:bookworm-slim base image where no registry answers"
  [netavark]="Podman's container networks (the set-up container's own network)"
  [aardvark-dns]="name resolution on Podman's container networks"
  [iptables]="Podman's port publishing (HTTPS and DICOM TLS)"
)
# A package counts as present when the file it provides is there (one of them, for npm:
# Node.js's own packages put it in /usr/bin or /usr/local/bin, Debian's in /usr/bin).
declare -A provides=(
  [orthanc]=/usr/sbin/Orthanc
  [orthanc-dicomweb]=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
  [orthanc-python]=/usr/share/orthanc/plugins/libOrthancPython.so
  [nginx-light]=/usr/sbin/nginx
  [redis-server]=/usr/bin/redis-server
  [openssl]=/usr/bin/openssl
  [make]=/usr/bin/make
  [npm]="/usr/bin/npm /usr/local/bin/npm"
  [chromium]=/usr/bin/chromium
  [wrk]=/usr/bin/wrk
  [valgrind]=/usr/bin/valgrind
  [strace]=/usr/bin/strace
  [podman]=/usr/bin/podman
  [runc]=/usr/sbin/runc
  [catatonit]=/usr/bin/catatonit
  [debootstrap]=/usr/sbin/debootstrap
  [netavark]=/usr/lib/podman/netavark
  [aardvark-dns]=/usr/lib/podman/aardvark-dns
  [iptables]=/usr/sbin/iptables
)
case "${1:-}" in
  "") wanted=(orthanc orthanc-dicomweb orthanc-python nginx-light redis-server openssl make npm) ;;
  --test) wanted=(orthanc orthanc-dicomweb orthanc-python nginx-light redis-server openssl make
                  npm chromium wrk valgrind strace) ;;
  --containers) wanted=(podman runc catatonit netavark aardvark-dns iptables debootstrap) ;;
  *) echo "usage: $0 [--test|--containers]" >&2; exit 2 ;;
esac

# Podman's settings for this kind of host (its open-file limit is too low for
# Orthanc and nginx, and crun fails on its cgroups); an existing file is the
# machine owner's and is left alone.
configure_podman() {
  local conf=/etc/containers/containers.conf
  if [[ -e "$conf" ]]; then
    grep -q 'runtime *= *"runc"' "$conf" \
      || echo "install-system-packages: $conf exists; if containers fail to start, set runtime = \"runc\" in its [engine] section" >&2
    return 0
  fi
  echo "Writing $conf (runc, open-file and process limits for the containers)"
  "${sudo[@]}" mkdir -p /etc/containers
  printf '%s\n' '# Written by zhiva-pacs infra/install-system-packages.sh --containers.' \
    '[containers]' 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' \
    '[engine]' 'runtime = "runc"' | "${sudo[@]}" tee "$conf" >/dev/null
}

missing=()
present() {
  local path
  for path in ${provides[$1]}; do
    [[ -e "$path" ]] && return 0
  done
  return 1
}
for package in "${wanted[@]}"; do
  present "$package" || missing+=("$package")
done
podman_unset=false
[[ "${1:-}" == "--containers" && ! -e /etc/containers/containers.conf ]] && podman_unset=true
[[ ${#missing[@]} -eq 0 && $podman_unset == false ]] && exit 0

if [[ ${#missing[@]} -gt 0 ]] && ! command -v apt-get >/dev/null; then
  echo "install-system-packages: missing ${missing[*]} and there is no apt-get here;" >&2
  echo "  install them with your system's package manager (see README: Requirements)." >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-system-packages: need root or sudo to install ${missing[*]:-the Podman settings}" >&2; exit 1; }
  sudo=(sudo)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  configure_podman
  exit 0
fi

echo "Installing Debian packages the stack needs:"
for package in "${missing[@]}"; do
  printf '  %-18s %s\n' "$package" "${why[$package]}"
done
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

# Debian starts a system-wide Orthanc on ports 8042/4242 after installing it; the
# stack runs its own Orthanc with its own configuration, so that one is stopped.
if [[ " ${missing[*]} " == *" orthanc "* ]] && command -v systemctl >/dev/null \
   && systemctl is-active --quiet orthanc 2>/dev/null; then
  echo "Stopping and disabling Debian's system-wide orthanc service (the stack runs its own)."
  "${sudo[@]}" systemctl disable --now orthanc || true
fi

if [[ "${1:-}" == "--containers" ]]; then
  configure_podman
fi
