# The pgplane binary in a small Debian image.
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgplane

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/pgplane pgplane
COPY --from=build /src/target/release/pgplane /usr/local/bin/pgplane
USER pgplane
ENTRYPOINT ["pgplane"]
CMD ["--help"]
