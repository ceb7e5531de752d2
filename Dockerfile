# syntax=docker/dockerfile:1
# One recipe for the three service images and the single-process one. From the repository root:
#   docker build --build-arg SERVICE=governor    -t tai-governor .
#   docker build --build-arg SERVICE=coordinator -t tai-coordinator .
#   docker build --build-arg SERVICE=scheduler   -t tai-scheduler .
#   docker build --build-arg SERVICE=server      -t tai-server .
# `server` is the three services in one process (`tai-server`, package services/server), for
# small installs (the chart's `mode: single`). Every image also carries `tai-console` (the
# operator console's file server, standard library only), which the chart runs from tai-server's.
# The build stage does not depend on SERVICE, so Docker builds it once for all four.
# tests/deploy/test_container_image.py carries out these steps without a Docker engine.
ARG PYTHON_IMAGE=python:3.11-slim
# Which image: governor, coordinator, scheduler or server.
ARG SERVICE

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
        ./services/governor ./services/coordinator ./services/scheduler ./services/server \
        ./services/console

# --- install: one package from those wheels alone, run as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS install
ARG SERVICE
COPY --from=build /src/wheels /wheels
# --no-index: every package comes from the wheels built above, never from a public index.
RUN case "${SERVICE}" in governor|coordinator|scheduler|server) ;; \
        *) echo "--build-arg SERVICE=governor|coordinator|scheduler|server is required" >&2; exit 1 ;; esac \
    && pip install --no-cache-dir --no-index --find-links /wheels "tai-${SERVICE}" tai-console \
    && rm -rf /wheels \
    && ln -s "$(command -v "tai-${SERVICE}")" /usr/local/bin/tai-service
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tai
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    TAI_HOST=0.0.0.0 \
    TAI_ENVIRONMENT=production
ENTRYPOINT ["tai-service"]

# --- the images: `docker build` ends with the last stage, the one SERVICE names ---
# A service's ports are settings (TAI_GRPC_PORT, TAI_METRICS_PORT) that the chart sets and
# declares on the container: no EXPOSE.
FROM install AS tai-governor
FROM install AS tai-coordinator
FROM install AS tai-scheduler
# The single process listens on the three services' gRPC ports and one metrics port, by
# default these (TAI_GOVERNOR_GRPC_PORT, TAI_COORDINATOR_GRPC_PORT, TAI_SCHEDULER_GRPC_PORT,
# TAI_METRICS_PORT).
FROM install AS tai-server
EXPOSE 50051 50052 50053 9100
# Without SERVICE the last FROM names this stage, and the install step above stops with the
# reason. (An unknown SERVICE names an image that does not exist, and the pull fails.)
FROM install AS tai-
FROM tai-${SERVICE}
