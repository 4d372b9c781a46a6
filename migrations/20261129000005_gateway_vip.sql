-- A database's virtual IP, from the scheduler's VIP pool, while its gateways are on two or more
-- hosts: keepalived moves it to a live gateway host and the connection URL names it. Released
-- with the database (or when its gateways are on one host again). Address and VRRP router id
-- are unique across the pool.
CREATE TABLE database_vips (
    database_id uuid PRIMARY KEY REFERENCES databases (id),
    address     text NOT NULL UNIQUE,
    port        integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    router_id   integer NOT NULL UNIQUE CHECK (router_id BETWEEN 1 AND 255),
    created_at  timestamptz NOT NULL DEFAULT now()
);
