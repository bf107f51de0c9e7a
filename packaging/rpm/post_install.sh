# corral (rpm %post): $1 is 1 on install, 2 or more on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 2 ]; then
        # Each app's sockets belong to systemd: a restart refuses no connection. An app whose
        # config does not pass `corral check` is left running as it is.
        restart=""
        for unit in $(systemctl list-units --type=service --state=running --plain --no-legend 'corral@*.service' | awk '{ print $1 }'); do
            app=${unit#corral@}
            app=${app%.service}
            if corral check "/etc/corral/$app.toml" >/dev/null 2>&1; then
                echo "corral: restarting $unit on the new version"
                restart="$restart $unit"
            else
                echo "corral: not restarting $unit: /etc/corral/$app.toml does not pass 'corral check'" >&2
            fi
        done
        [ -z "$restart" ] || systemctl try-restart $restart || :
    fi
fi
