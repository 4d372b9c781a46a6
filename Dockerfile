# The pgplane binary in a Debian image that also carries what agents drive
# (PostgreSQL 15, Patroni, HAProxy) and etcd for the compose file's DCS.
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgplane

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
        postgresql-15 postgresql-client-15 patroni haproxy etcd-server \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pgplane /usr/local/bin/pgplane
ENTRYPOINT ["pgplane"]
CMD ["--help"]
