# syntax=docker/dockerfile:1
# Renkei: the broker (`renkei serve`, the default), the IoT agent (`renkei iot-agent`),
# `renkei publish` and the other commands, in one image.
#   docker build -t renkei .
#   docker run -p 1026:1026 -v renkei-data:/data renkei

# 1. The map viewer's MapLibre bundle and the API docs' Swagger UI and ReDoc, from npm
#    with the committed lock files.
FROM node:22-bookworm-slim AS viewer
WORKDIR /src
COPY scripts/build-viewer.sh scripts/
COPY broker/static/viewer/ broker/static/viewer/
COPY broker/static/docs/ broker/static/docs/
RUN scripts/build-viewer.sh

# 2. Renkei and its dependencies in a virtualenv (binary wheels from PyPI).
FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/renkei
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker/ broker/
COPY connectors/ connectors/
COPY opendata/ opendata/
COPY schemas/ schemas/
COPY --from=viewer /src/broker/static/viewer/vendor/ broker/static/viewer/vendor/
COPY --from=viewer /src/broker/static/docs/vendor/ broker/static/docs/vendor/
RUN /opt/renkei/bin/pip install .

# 3. The runtime: the virtualenv on the same Python, a user without privileges.
FROM python:3.12-slim-bookworm
RUN groupadd --system --gid 10001 renkei \
 && useradd --system --uid 10001 --gid renkei --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin renkei \
 && mkdir /data \
 && chown renkei:renkei /data
COPY --from=build /opt/renkei /opt/renkei
ENV PATH=/opt/renkei/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    RENKEI_HOST=0.0.0.0 \
    RENKEI_STORE=sqlite:////data/renkei.db \
    RENKEI_IOTA_DB=/data/renkei-iota.db \
    RENKEI_HEALTHCHECK_URL=http://127.0.0.1:1026/health
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 1026 4041
# For `renkei iot-agent` set RENKEI_HEALTHCHECK_URL=http://127.0.0.1:4041/health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; urllib.request.urlopen(os.environ['RENKEI_HEALTHCHECK_URL'], timeout=4); sys.exit(0)"]
ENTRYPOINT ["renkei"]
CMD ["serve"]
