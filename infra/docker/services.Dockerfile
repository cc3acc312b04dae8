# The three Flask services (and the set-up), one image, Debian's Python 3.11.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY infra ./infra
# Editable, so the code stays at /app (the project directory the configuration names).
RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install --no-cache-dir -e /app
ENV PATH=/app/.venv/bin:$PATH
