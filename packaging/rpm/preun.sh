# %preun for pgsql-broker (.rpm); $1: 0 = erase, 1 = upgrade.
# On erase: stop (SIGTERM drains running jobs) and disable the service, as %systemd_preun does.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now pgsql-broker.service >/dev/null 2>&1 || :
fi
exit 0
