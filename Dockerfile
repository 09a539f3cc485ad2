FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY app ./app
COPY config ./config
COPY wsgi.py gunicorn.conf.py ./

RUN useradd --system --uid 10001 --no-create-home myproxy
USER myproxy

EXPOSE 8080
# SIGTERM drains in-flight requests within shutdown_timeout (25 s by default).
STOPSIGNAL SIGTERM
CMD ["python", "wsgi.py"]
