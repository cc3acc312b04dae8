# Orthanc (with its DICOMweb and Python plugins), nginx and Redis from Debian's
# packages: the same binaries and versions the native stack runs.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      orthanc orthanc-dicomweb orthanc-python nginx-light redis-server curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The Orthanc-side plugin and the modules it shares with the policy service (stdlib only).
COPY infra/orthanc /app/infra/orthanc
COPY services/access/permissions.py services/access/handoff.py /app/services/policy_service/
WORKDIR /app
