# corral (rpm %postun): $1 is 0 when the package is erased (not upgraded).
if [ "$1" -eq 0 ]; then
    rm -f /etc/systemd/system/*.wants/corral@* 2>/dev/null || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
