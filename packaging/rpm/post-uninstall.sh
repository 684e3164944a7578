# push-server %postun: forget the unit. The user `bitrix` is kept (the Bitrix site may use it).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
