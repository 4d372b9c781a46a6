# The pgplane binary in a Debian image that also carries what agents drive
# (PostgreSQL 15, Patroni 4.1.5, HAProxy) and etcd for the compose file's DCS.
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgplane

FROM debian:bookworm-slim
COPY scripts/patroni-requirements.txt /tmp/patroni-requirements.txt
# Patroni pinned in a virtual environment of its own, as scripts/install-deps makes it (the
# agent runs /opt/pgplane/patroni/bin/patroni; Debian's 3.0.2 can lose acknowledged writes).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
        postgresql-15 postgresql-client-15 python3-venv haproxy etcd-server \
    && rm -rf /var/lib/apt/lists/* \
    && /usr/bin/python3 -m venv /opt/pgplane/patroni \
    && /opt/pgplane/patroni/bin/pip install -q --no-cache-dir -r /tmp/patroni-requirements.txt \
    && rm /tmp/patroni-requirements.txt
COPY --from=build /src/target/release/pgplane /usr/local/bin/pgplane
ENTRYPOINT ["pgplane"]
CMD ["--help"]
