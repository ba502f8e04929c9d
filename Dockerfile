# box-upload-gateway: a small, non-root image that runs `serve`.
#
#   docker build -t box-upload-gateway .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /var/spool/gateway box-upload-gateway --emulator
#
# The builder matches the toolchain the project is developed with (rustc 1.95) and the runtime's Debian
# release (bookworm, glibc 2.36): the binary links against glibc, so both stages must agree.

FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependencies first, built against a stand-in crate: this layer is reused until Cargo.toml or
# Cargo.lock change, so an edit to src/ rebuilds only the gateway itself (about 1 min instead of 3).
# (The test and example targets Cargo.toml names are not built, and cargo does not look for them.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src ./src
# The release profile (Cargo.toml) leaves debug info out: the binary is 21 MB, not 108 MB, and a
# panic's backtrace (RUST_BACKTRACE=1) still names every function, without file:line.
# COPY keeps the files' own modification times, which may be older than the stand-in's build: touch
# them so cargo rebuilds the crate instead of keeping the empty stand-in.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/box-upload-gateway /out/box-upload-gateway \
    && install -d -m 0700 /out/spool

# distroless/cc: glibc, libgcc, CA certificates (reqwest's rustls verifies Box's certificates against
# /etc/ssl/certs), no shell, no package manager. The `nonroot` variant runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/box-upload-gateway /usr/local/bin/box-upload-gateway
# The spool directory for bodies of unknown size. The root filesystem can be read-only: mount a
# volume here (Kubernetes: an emptyDir, see deploy/base). With `serve --emulator`, the emulator's files
# go under it too (see deploy/overlays/emulator).
COPY --from=builder --chown=65532:65532 /out/spool /var/spool/gateway
# spool_dir defaults to the system temp dir, which TMPDIR names: a settings file or GATEWAY_SPOOL_DIR
# still wins (an ENV of GATEWAY_SPOOL_DIR here would silently override the file's spool_dir). The
# defaults already listen on 0.0.0.0:8080 and log JSON when stdout is not a terminal.
ENV TMPDIR=/var/spool/gateway
USER 65532:65532
WORKDIR /var/spool/gateway
EXPOSE 8080
# No HEALTHCHECK: the image has no shell or curl to run one; orchestrators probe GET /healthz
# (liveness) and GET /readyz (readiness) over HTTP instead.
ENTRYPOINT ["/usr/local/bin/box-upload-gateway", "serve"]
