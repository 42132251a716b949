# %postun for pgsql-broker (.rpm); $1: 0 = erase, 1 = upgrade.
# Reloads systemd; on upgrade restarts the service if it was running (%systemd_postun_with_restart).
# The pgsql-broker user is kept on erase, as the Fedora packaging guidelines require (files it
# owns may remain, e.g. broker.yaml.rpmsave); remove it with `userdel pgsql-broker` if wanted.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart pgsql-broker.service >/dev/null 2>&1 || :
    fi
fi
exit 0
