# corral (rpm %post): $1 is 1 on install, 2 or more on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 2 ]; then
        # Each app's sockets belong to systemd: a restart refuses no connection.
        for unit in $(systemctl list-units --type=service --state=running --plain --no-legend 'corral@*.service' | awk '{ print $1 }'); do
            echo "corral: restarting $unit on the new version"
            systemctl try-restart "$unit" || :
        done
    fi
fi
