# corral (rpm %post): $1 is 1 on install, 2 or more on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 2 ]; then
        # Each running app's supervisor re-executes the new binary in place (`corral
        # upgrade`): its pid, workers and sockets stay. One that cannot is restarted, named
        # (systemd holds the sockets: no connection is refused), unless its config does not
        # pass `corral check`: it then runs on as it is.
        restart=""
        for unit in $(systemctl list-units --type=service --state=running --plain --no-legend 'corral@*.service' | awk '{ print $1 }'); do
            app=${unit#corral@}
            app=${app%.service}
            if said=$(corral upgrade "$app" 2>&1); then
                echo "corral: $unit: $said"
            elif corral check "/etc/corral/$app.toml" >/dev/null 2>&1; then
                echo "corral: $unit cannot be upgraded in place (${said#corral: }): restarting it on the new version" >&2
                restart="$restart $unit"
            else
                echo "corral: $unit cannot be upgraded in place (${said#corral: }), and is not restarted: /etc/corral/$app.toml does not pass 'corral check'" >&2
            fi
        done
        [ -z "$restart" ] || systemctl try-restart $restart || :
    fi
fi
