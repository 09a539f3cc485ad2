# MyProxy image: python:3.11-slim, dependencies built in a separate stage so that no
# compiler or header is left in the image, run as a non-root user.
#
#   docker build -t myproxy . && docker run -p 8080:8080 -e MYPROXY_BACKENDS=http://host:5001 myproxy
#
# SIGTERM (docker stop, Kubernetes) drains: /_myproxy/health turns 503 at once, in-flight
# requests finish within shutdown_timeout (25 s: give docker stop -t 30). SIGHUP
# (docker kill -s HUP) reloads the config file.

FROM python:3.11-slim AS build
# Wheels exist for gevent and PyYAML on amd64 and arm64; the compiler is here for the
# platforms where pip has to build them, and stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY requirements.txt .
RUN /opt/venv/bin/pip install --no-cache-dir -r requirements.txt

FROM python:3.11-slim
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
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_myproxy/health' % os.environ.get('PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "wsgi.py"]
