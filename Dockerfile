# meter's container image: `meter serve` by default; the same image runs `meter db upgrade` and
# `meter demo-upstream`. Build from the repository root: docker build -t meter .
#
# Set METER_DATABASE_URL in containers: without it meter starts an embedded Postgres in
# METER_DATA_DIR, which is for trying meter on a laptop, not for containers.

FROM python:3.11-slim AS build
RUN python -m venv /opt/meter
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY meter ./meter
COPY migrations ./migrations
RUN /opt/meter/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meter --create-home meter
COPY --from=build /opt/meter /opt/meter
ENV PATH=/opt/meter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    METER_HOST=0.0.0.0 \
    METER_PORT=8080 \
    METER_DATA_DIR=/var/lib/meter
USER 10001:10001
WORKDIR /var/lib/meter
EXPOSE 8080
ENTRYPOINT ["meter"]
CMD ["serve"]
