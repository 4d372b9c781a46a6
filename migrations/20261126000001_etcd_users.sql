-- Each database has its own etcd user (`db-<database id>`), confined to its Patroni prefix
-- `/service/<database id>/`; its password is kept with the database's other secrets.
ALTER TABLE database_secrets ADD COLUMN etcd_password text;
