# push-server %pre: the service user must exist before the files are unpacked, so that the config
# file gets its group (bitrix). Kept if it exists (BitrixVM has it).
if ! getent group bitrix >/dev/null; then
    groupadd --system bitrix
fi
if ! getent passwd bitrix >/dev/null; then
    NOLOGIN=$(command -v nologin || echo /sbin/nologin)
    useradd --system --gid bitrix --home-dir /nonexistent --no-create-home \
        --shell "$NOLOGIN" --comment "Bitrix push server" bitrix
fi
exit 0
