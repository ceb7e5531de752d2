# syntax=docker/dockerfile:1
# One recipe for the three service images. From the repository root:
#   docker build --build-arg SERVICE=governor    -t tai-governor .
#   docker build --build-arg SERVICE=coordinator -t tai-coordinator .
#   docker build --build-arg SERVICE=scheduler   -t tai-scheduler .
# The build stage does not depend on SERVICE, so Docker builds it once for all three.
# tests/deploy/test_container_image.py carries out these steps without a Docker engine.
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: generate the protobuf code, then wheels of every TAI package and dependency ---
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt grpcio-tools mypy-protobuf googleapis-common-protos
COPY protos protos
COPY scripts/copy_proto_deps.py scripts/
# Every library and service: a package one of them comes to depend on cannot be left out.
COPY libs libs
COPY services services
RUN mkdir -p build/proto-deps \
    && python scripts/copy_proto_deps.py build/proto-deps \
    && python -m grpc_tools.protoc -I protos -I build/proto-deps \
        --python_out=libs/proto --grpc_python_out=libs/proto protos/tai/v1/*.proto \
    && touch libs/proto/tai/__init__.py libs/proto/tai/v1/__init__.py \
    && pip wheel --no-cache-dir -c constraints.txt -w wheels \
        ./libs/proto ./libs/rpc ./libs/common ./libs/client \
        ./services/governor ./services/coordinator ./services/scheduler

# --- run: one service from those wheels alone, as an unprivileged user ---
FROM ${PYTHON_IMAGE}
ARG SERVICE
COPY --from=build /src/wheels /wheels
# --no-index: every package comes from the wheels built above, never from a public index.
RUN case "${SERVICE}" in governor|coordinator|scheduler) ;; \
        *) echo "--build-arg SERVICE=governor|coordinator|scheduler is required" >&2; exit 1 ;; esac \
    && pip install --no-cache-dir --no-index --find-links /wheels "tai-${SERVICE}" \
    && rm -rf /wheels \
    && ln -s "$(command -v "tai-${SERVICE}")" /usr/local/bin/tai-service
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tai
USER 10001:10001
# No EXPOSE: each service has its own ports (TAI_GRPC_PORT, TAI_METRICS_PORT), which the chart
# sets and declares on the container.
ENV PYTHONUNBUFFERED=1 \
    TAI_HOST=0.0.0.0 \
    TAI_ENVIRONMENT=production
ENTRYPOINT ["tai-service"]
