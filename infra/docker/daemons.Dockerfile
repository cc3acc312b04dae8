# Orthanc (with its DICOMweb and Python plugins), nginx and Redis from Debian's
# packages: the same binaries and versions the native stack runs.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      orthanc orthanc-dicomweb orthanc-python nginx-light redis-server curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The Orthanc-side plugin and the package it shares with the policy service (standard
# library only), imported from /app as the plugin's PythonPath.
COPY infra/orthanc /app/infra/orthanc
COPY services/__init__.py /app/services/__init__.py
COPY services/access /app/services/access
WORKDIR /app
