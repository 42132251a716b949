# %post for pgsql-broker (.rpm); $1: 1 = install, 2 = upgrade.
# Makes systemd see the unit. It deliberately does NOT enable or start pgsql-broker.service:
# configure /etc/pgsql-broker/broker.yaml and install the schema first, then
#     pgsql-broker --config /etc/pgsql-broker/broker.yaml install
#     systemctl enable --now pgsql-broker.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
