# One image, two modes: WORKER_MODE=false (default) runs the HTTP publisher on 3001,
# WORKER_MODE=true the worker supervisor with its health server on 3003.

# --- build: install the pinned dependencies and the package into a virtual environment ---
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-deps .

# --- runtime: the virtual environment only, as an unprivileged user ---
FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/app
EXPOSE 3001 3003
# Asks this container's own process for /health on its PORT: no curl in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service", "healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
