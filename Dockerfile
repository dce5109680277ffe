# syntax=docker/dockerfile:1
# The API image: `docker compose up` (compose.yaml) builds it. Only the locked runtime dependencies go in:
# no dev tools and no `embedded` extra, because the image talks to real PostgreSQL and Valkey servers.

FROM python:3.11-slim AS build

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11
WORKDIR /app

# uv itself, pinned by version and hash like everywhere else (.ci/uv-requirements.txt; x86_64 wheel).
COPY .ci/uv-requirements.txt /tmp/uv-requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --require-hashes -r /tmp/uv-requirements.txt

# Dependencies first, in their own layer: rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself, installed non-editable so the runtime stage needs only the virtualenv.
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable


FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 support \
    && useradd --system --uid 10001 --gid support --no-create-home --home-dir /app --shell /usr/sbin/nologin support
WORKDIR /app

COPY --from=build /app/.venv /app/.venv
# `support db upgrade` finds alembic.ini (and through it migrations/) in the working directory.
COPY alembic.ini ./
COPY migrations ./migrations

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SUPPORT_ENV=prod \
    SUPPORT_HOST=0.0.0.0 \
    SUPPORT_PORT=8000 \
    SUPPORT_EMBEDDING__MODEL_CACHE_DIR=/app/models

# The embedding model's int8 derivation (docs/knowledge.md), made once here: the service user cannot write to
# /app, and every container then starts without deriving it.
RUN python -c "from pathlib import Path; from support.adapters.embedding.onnx_minilm import prepared_model_path; print(prepared_model_path(Path('/app/models')))"

USER support
EXPOSE 8000
# Applies pending migrations, then serves. With several replicas, run `support db upgrade` once beforehand
# and start them with `support serve --no-migrate` (as compose.yaml does).
CMD ["support", "serve"]
