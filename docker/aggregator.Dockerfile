# syntax=docker/dockerfile:1
# kubenurse-aggregator (Deployment): gRPC 50051, HTTP 8080.
# A static musl binary on distroless, running as 65532 (nonroot). From the repository root:
#   docker build -f docker/aggregator.Dockerfile -t ghcr.io/kubenurse-rs/kubenurse-aggregator:0.1.0 .

# On Alpine the host target is musl (x86_64-unknown-linux-musl on amd64), linked statically.
FROM rust:1-alpine AS build
# gcc: mimalloc, the aggregator's allocator, is C (built by the cc crate).
RUN apk add --no-cache musl-dev gcc
ENV RUSTFLAGS="-C target-feature=+crt-static" CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kubenurse-aggregator --bin kubenurse-aggregator \
 && install -D -m 0755 target/release/kubenurse-aggregator /out/kubenurse-aggregator

# static: CA certificates, /etc/passwd with nonroot (65532), nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kubenurse-aggregator /usr/local/bin/kubenurse-aggregator
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/kubenurse-aggregator"]
