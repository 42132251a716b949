# %pre for pgsql-broker (.rpm); $1: 1 = install, 2 = upgrade.
# Creates the system group and user before the files land, so that
# /etc/pgsql-broker/broker.yaml gets its group (root:pgsql-broker 0640).
getent group pgsql-broker >/dev/null || groupadd --system pgsql-broker
getent passwd pgsql-broker >/dev/null || \
    useradd --system --gid pgsql-broker --no-create-home --home-dir /nonexistent \
        --shell /sbin/nologin --comment "PostgreSQL job broker" pgsql-broker
exit 0
