#!/usr/bin/env bash
# Install the Debian packages the stack needs, when they are missing.
#   infra/install-system-packages.sh          what `make up` needs
#   infra/install-system-packages.sh --test   plus what `make test` needs
set -euo pipefail

declare -A why=(
  [orthanc]="the DICOM server (stores studies, DICOM TLS port)"
  [orthanc-dicomweb]="Orthanc's DICOMweb plugin (QIDO/WADO/STOW for web viewers)"
  [orthanc-python]="Orthanc's Python plugin (runs the token check inside Orthanc)"
  [nginx-light]="TLS termination and routing in front of everything"
  [redis-server]="token revocation store (one-off tokens work exactly once)"
  [openssl]="TLS tools"
  [make]="the project's commands"
  [chromium]="headless browser for the end-to-end browser tests"
  [wrk]="load generator for the benchmarks"
)
# A package counts as present when the file it provides is there.
declare -A provides=(
  [orthanc]=/usr/sbin/Orthanc
  [orthanc-dicomweb]=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
  [orthanc-python]=/usr/share/orthanc/plugins/libOrthancPython.so
  [nginx-light]=/usr/sbin/nginx
  [redis-server]=/usr/bin/redis-server
  [openssl]=/usr/bin/openssl
  [make]=/usr/bin/make
  [chromium]=/usr/bin/chromium
  [wrk]=/usr/bin/wrk
)
wanted=(orthanc orthanc-dicomweb orthanc-python nginx-light redis-server openssl make)
if [[ "${1:-}" == "--test" ]]; then
  wanted+=(chromium wrk)
fi

missing=()
for package in "${wanted[@]}"; do
  [[ -e "${provides[$package]}" ]] || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install-system-packages: missing ${missing[*]} and there is no apt-get here;" >&2
  echo "  install them with your system's package manager (see README: Requirements)." >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-system-packages: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
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
