"""Per-board provisioning settings: hostname, authorized SSH keys, network, the app's
config files, and a one-shot request to recreate a damaged data filesystem.

Everything here is outside input (command line, a settings file, key files a person
picked), so every value is checked before a single byte is written. The settings go
into the ``fleet/`` folder of the disk's first (FAT) partition, beside the boot state,
the way Raspberry Pi Imager customises a card; the signed slot payloads never change.
The board reads them at every boot (fleet/device/rc.sysinit). Layout on partition 1::

    fleet/hostname         one line
    fleet/authorized_keys  OpenSSH authorized_keys lines
    fleet/network          key=value lines: mode=dhcp, or mode=static + address etc.
    fleet/wifi             ssid=, psk= (derived key), country= (fleet.provision.wifi)
    fleet/pull             url=, group=, interval=, jitter=: pull mode (docs/pull.md)
    fleet/files/...        copied to /data/app/config/... (a mirror) at every boot
    fleet/data-recreate    present: recreate the data filesystem if it is damaged

Split by concern: ``values`` checks single values, ``settings`` is the model and the
settings file, ``fat`` writes and reads partition 1. Everything is re-exported here,
so callers keep using ``fleet.provision.X``.
"""

from __future__ import annotations

from fleet.provision.fat import (
    FIRMWARE_PARTITION,
    MTOOLS_ENV,
    firmware_offset,
    listing,
    read,
    write,
)
from fleet.provision.settings import (
    Options,
    Settings,
    SettingsFile,
    describe,
    from_options,
    with_defaults,
)
from fleet.provision.values import (
    CONFIG_DIR,
    KEY_TYPES,
    MAX_FILE_BYTES,
    MAX_FILES_BYTES,
    MAX_KEYS_BYTES,
    ConfigFile,
    Network,
    check_dest,
    check_files,
    check_hostname,
    check_serial,
    parse_authorized_keys,
    parse_config_file,
    parse_network,
    read_key_file,
)

__all__ = [
    "CONFIG_DIR",
    "FIRMWARE_PARTITION",
    "KEY_TYPES",
    "MAX_FILES_BYTES",
    "MAX_FILE_BYTES",
    "MAX_KEYS_BYTES",
    "MTOOLS_ENV",
    "ConfigFile",
    "Network",
    "Options",
    "Settings",
    "SettingsFile",
    "check_dest",
    "check_files",
    "check_hostname",
    "check_serial",
    "describe",
    "firmware_offset",
    "from_options",
    "listing",
    "parse_authorized_keys",
    "parse_config_file",
    "parse_network",
    "read",
    "read_key_file",
    "with_defaults",
    "write",
]
