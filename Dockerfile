# The project image: every ordersaga process (workers, listener, market data, broker simulator,
# one-shot migrations) runs from it with a different command. See docs/DEPLOY.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml and constraints.txt alone, so a source change does not
# reinstall them. Only the runtime dependencies, each at its version in constraints.txt (the
# file also pins dev/embedded/bench, which a constraints file does not install).
COPY pyproject.toml README.md constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home ordersaga \
    && mkdir -p /data \
    && chown ordersaga:ordersaga /data

# The broker simulator's SQLite state lives here (a named volume in docker-compose.yml); a fresh
# named volume takes this directory's owner, so the non-root user can write to it.
VOLUME ["/data"]
USER ordersaga

ENTRYPOINT ["ordersaga"]
CMD ["--help"]
