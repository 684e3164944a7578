# push-server %post: run directory, systemd reload; on upgrade ($1 > 1) restart a running server.
# A fresh install is NOT enabled or started: set SECURITY_KEY in /etc/sysconfig/push-server-multi
# and stop the Node push server first, then `systemctl enable --now push-server`.
if command -v systemd-tmpfiles >/dev/null; then
    systemd-tmpfiles --create push-server.conf || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -gt 1 ]; then
        systemctl try-restart push-server.service || :
    fi
fi
exit 0
