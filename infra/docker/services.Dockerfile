# The OHIF viewer's pinned release (infra/viewer.py), fetched with npm and its integrity
# checked in a stage of its own: the image carries the checked tarball, not Node.js. The
# set-up container unpacks and patches it into the state volume (once per release), where
# nginx serves it, as the native `make up` does. Where HTTPS is intercepted, BUILD_CA_CERTS
# is trusted for this step as for pip's (and left out of the image).
FROM debian:bookworm-slim AS viewer
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      npm python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ARG BUILD_CA_CERTS=""
COPY infra/__init__.py infra/console.py infra/viewer.py /build/infra/
RUN cd /build \
 && { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$BUILD_CA_CERTS"; } > /tmp/build-ca.crt \
 && npm_config_cafile=/tmp/build-ca.crt python3 -m infra.viewer fetch /opt/zhiva-viewer \
 && rm /tmp/build-ca.crt

# The three Flask services (and the set-up), one image, Debian's Python 3.11.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The build and run-time dependencies first, from pyproject.toml alone: a change to the code then
# rebuilds only the last, small layer. Where HTTPS to PyPI is intercepted, the
# build host's extra CA certificates (PEM text; off by default) are trusted for
# this step only and left out of the image.
# `make up` passes the native .venv's `pip freeze` as PIP_CONSTRAINTS, so the
# containers run the versions the native stack and its tests run.
ARG BUILD_CA_CERTS=""
ARG PIP_CONSTRAINTS=""
COPY pyproject.toml README.md ./
RUN python3 -m venv /app/.venv \
 && { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$BUILD_CA_CERTS"; } > /tmp/build-ca.crt \
 && printf '%s\n' "$PIP_CONSTRAINTS" > /tmp/constraints.txt \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
 && PIP_CERT=/tmp/build-ca.crt /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -c /tmp/constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/build-ca.crt /tmp/requirements.txt /tmp/constraints.txt
# The viewer's tarball, checked again when the set-up unpacks it (infra/viewer.py install).
COPY --from=viewer /opt/zhiva-viewer /opt/zhiva-viewer
COPY services ./services
COPY infra ./infra
# Editable, so the code stays at /app (the project directory the configuration names);
# nothing is downloaded here.
RUN /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation --no-index -e /app
ENV PATH=/app/.venv/bin:$PATH
