# MyProxy image: python:3.11-slim (or any BASE with python3 and its venv module), the
# runtime dependencies installed in a separate stage, run as a non-root user.
#
#   docker build -t myproxy .
#   docker run --stop-timeout 30 -p 8080:8080 -e MYPROXY_BACKENDS=http://host:5001 myproxy
#
# SIGTERM (docker stop, Kubernetes) goes on serving for shutdown_delay (0 s here) with
# /_myproxy/health answering 503, then stops accepting and gives in-flight requests
# shutdown_timeout (25 s): more than docker stop's default 10 s wait, hence --stop-timeout
# 30 above (compose: stop_grace_period). SIGHUP (docker kill -s HUP) reloads the config.
#
# BASE: where Docker Hub cannot be reached, an image made from Debian's packages serves
# (debootstrap --include=python3,python3-venv; what .ci/run builds as myproxy-base).
# PIP_INDEX_URL: the package index pip uses in the build stage.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
RUN python3 -m venv /opt/venv
COPY requirements-runtime.txt .
# Wheels exist for every dependency on amd64 and arm64. Where pip finds none, a compiler
# is installed to build it; either way it stays in this stage. The installer itself (pip,
# setuptools) is not needed to run and is left out of the image.
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: -r requirements-runtime.txt \
 || { apt-get update \
      && apt-get install -y --no-install-recommends build-essential \
      && /opt/venv/bin/pip install --no-cache-dir -r requirements-runtime.txt; } \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools

FROM ${BASE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY app ./app
COPY config ./config
COPY wsgi.py gunicorn.conf.py ./
RUN useradd --system --uid 10001 --no-create-home myproxy
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "wsgi.py", "--alive"]
STOPSIGNAL SIGTERM
CMD ["python", "wsgi.py"]
