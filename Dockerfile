# syntax=docker/dockerfile:1
# One image for every role: the command decides what a container is.
#   docker run IMAGE                        -> shop run (everything in one process, embedded SQLite)
#   docker run IMAGE shop serve catalog     -> one module as a service (Redis transport)
#   docker run IMAGE shop gateway           -> the API gateway
#   docker run IMAGE shop migrate           -> the Alembic upgrade of every module's schema (a deploy step)
# Settings are SHOP_* environment variables (README, "Settings"); deploy/compose.yaml and
# deploy/k8s/ show them for a whole fleet.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the virtualenv from the committed lock ---------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# The same uv as the Makefile (UV_VERSION); a test checks that they agree.
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN python -m pip install "uv==${UV_VERSION}"

WORKDIR /app
# Dependencies first (a layer that survives source changes), then the project itself.
# The dev tools are the `dev` extra, so installing without extras leaves them out (and uvicorn,
# the `uvicorn` extra: the image serves with granian); --no-dev also leaves out any dependency group.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && /app/.venv/bin/python -m compileall -q /app/src

# --- runtime: the virtualenv, the code, the migrations; no build tools, not root -----------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="shop" \
      org.opencontainers.image.description="Shop: one process or many, the same code" \
      org.opencontainers.image.source="https://github.com/shop-dev/shop"

RUN groupadd --system --gid 10001 shop \
    && useradd --system --uid 10001 --gid shop --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin shop

WORKDIR /app
# The project is installed editable into the venv (a .pth pointing at /app/src), so the venv
# and the source keep the paths they were built at.
COPY --from=builder /app/.venv /app/.venv
COPY --from=builder /app/src /app/src
# Alembic's configuration is the migrations folder itself: migrations/_kernel (env.py, the
# template, the kernel revision) and migrations/<module>/versions (there is no alembic.ini).
COPY migrations /app/migrations
# The data dir: dev JWT keys (compose shares it between containers), SQLite files for `shop run`.
RUN mkdir -p /app/var && chown shop:shop /app/var

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHOP_HOST=0.0.0.0 \
    SHOP_PORT=8000 \
    SHOP_DATA_DIR=/app/var \
    SHOP_MIGRATIONS_DIR=/app/migrations

USER shop:shop
EXPOSE 8000

# /health answers while the process lives (in every role); no curl in the image, python asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SHOP_PORT', '8000'), timeout=2)"]

CMD ["shop", "run"]
