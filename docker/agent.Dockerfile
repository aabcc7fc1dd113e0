# syntax=docker/dockerfile:1
# kubenurse-agent (DaemonSet): HTTP 8080, HTTPS 8443 with KUBENURSE_USE_TLS.
# A static musl binary on distroless, running as 65532 (nonroot). From the repository root:
#   docker build -f docker/agent.Dockerfile -t ghcr.io/kubenurse-rs/kubenurse-agent:0.1.0 .

# On Alpine the host target is musl (x86_64-unknown-linux-musl on amd64), linked statically.
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
ENV RUSTFLAGS="-C target-feature=+crt-static" CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kubenurse-agent --bin kubenurse-agent \
 && install -D -m 0755 target/release/kubenurse-agent /out/kubenurse-agent

# static: CA certificates, /etc/passwd with nonroot (65532), nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kubenurse-agent /usr/local/bin/kubenurse-agent
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/kubenurse-agent"]
