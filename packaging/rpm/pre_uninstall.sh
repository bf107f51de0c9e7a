# corral (rpm %preun): $1 is 0 when the package is erased (not upgraded).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    units=$(systemctl list-units --plain --no-legend --state=active 'corral@*.service' 'corral@*.socket' | awk '{ print $1 }')
    if [ -n "$units" ]; then
        echo "corral: stopping" $units "(the corral package is being removed)"
        systemctl stop $units || :
    fi
fi
