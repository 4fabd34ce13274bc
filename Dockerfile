# Multi-stage build: a release binary built with the pinned toolchain, copied into a small
# distroless runtime that runs as a non-root user. `modelstamp healthcheck` probes /readyz.
# Mount the config (and a file registry) at /etc/modelstamp; the admin listener must be on 9901
# for the healthcheck (or override it).
#   docker build -t modelstamp:0.1.0 .
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin modelstamp

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/modelstamp /usr/local/bin/modelstamp
ENV MIMALLOC_ARENA_EAGER_COMMIT=0
USER nonroot:nonroot
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/modelstamp", "healthcheck", "--admin", "http://127.0.0.1:9901"]
ENTRYPOINT ["/usr/local/bin/modelstamp"]
CMD ["run", "--config", "/etc/modelstamp/modelstamp.toml"]
