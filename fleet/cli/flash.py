"""``fleet flash``: write a disk image onto a board or SD card, safely, and prove it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from fleet.cli import flash_many
from fleet.cli import provision as provision_opts
from fleet.cli.output import JSON_HELP, bytes_progress, note, out, print_json, warn
from fleet.errors import FlashError, UsageError
from fleet.flash.discovery import BlockDevice, device_info, list_block_devices
from fleet.flash.flasher import find_bmap, image_size
from fleet.flash.flasher import flash as run_flash
from fleet.flash.many import Plan
from fleet.flash.safety import check_target, exclusive, unmount_all
from fleet.flash.source import open_image
from fleet.flash.wait import default_predicate, wait_for_device

RPIBOOT_FILES = Path("/usr/share/rpiboot/mass-storage-gadget64")


def _interactive() -> bool:
    return sys.stdin.isatty()


def _choose(candidates: list[BlockDevice]) -> BlockDevice:
    if not candidates:
        raise FlashError(
            "no flashable device found: plug in a card or board and use --wait, "
            "or name one with --device (see fleet devices)"
        )
    if len(candidates) == 1:
        return candidates[0]
    if not _interactive():
        names = ", ".join(d.node for d in candidates)
        raise FlashError(f"several devices could be the target ({names}): pick one with --device")
    for i, d in enumerate(candidates, 1):
        note(f"  {i}) {d.describe()}")
    pick: int = typer.prompt("Which device", type=int)
    if not 1 <= pick <= len(candidates):
        raise UsageError(f"no device number {pick}")
    return candidates[pick - 1]


def _confirm(device: BlockDevice, image: Path, yes: bool) -> None:
    if device.system:
        if not _interactive():
            raise FlashError(
                f"{device.node} is a system drive and there is no terminal to type its name "
                f"on; {device.node} was not changed"
            )
        warn(f"{device.describe()} is a SYSTEM drive: {device.system_reason}.")
        typed = typer.prompt(f"Type {device.name} to destroy everything on it")
        if typed.strip() != device.name:
            raise FlashError(f"confirmation did not match; {device.node} was not changed")
        return
    if yes:
        return
    if not _interactive():
        raise FlashError(
            f"no terminal to confirm on: pass --yes to write {device.node}; it was not changed"
        )
    if not typer.confirm(f"Write {image.name} to {device.describe()}? Everything on it is lost"):
        raise FlashError(f"cancelled; {device.node} was not changed")


def _find_target(
    device: str | None,
    wait: bool,
    timeout: float | None,
    usb_path: str | None,
    usb_serial: str | None,
    rpiboot_mode: bool,
    rpiboot_files: Path,
) -> BlockDevice:
    if device is not None:
        return device_info(device)
    if rpiboot_mode or usb_path or usb_serial:
        from fleet.flash import rpiboot  # pyusb only for boards in boot-ROM mode (start-up)
        from fleet.flash.rpiboot_files import BootFiles

        files = BootFiles(rpiboot_files)

        def boot() -> None:  # once the disk monitor listens: a quick disk is not missed
            served = rpiboot.boot(
                files, path=usb_path, serial=usb_serial, timeout=timeout or 30.0, log=note
            )
            note(
                f"board booted the mass-storage gadget ({len(served)} files); waiting for its disk"
            )

        return wait_for_device(
            lambda d: d.offered and d.rpi_msd, timeout=timeout or 60.0, on_listening=boot
        )
    if wait:
        note("waiting for a card or board to appear (Ctrl-C to stop)...")
        return wait_for_device(default_predicate, timeout=timeout)
    return _choose([d for d in list_block_devices() if d.offered])


def _flash_many(
    image: Path,
    req: flash_many.Request,
    *,
    bmap: Path | None,
    no_bmap: bool,
    verify: bool,
    unmount: bool,
    allow_system_drive: bool,
    single_board: tuple[str | None, ...],
    hostname: str | None,
    settings_file: Path | None,
    make: flash_many.SettingsMaker,
    json_out: bool,
) -> None:
    if allow_system_drive:
        raise UsageError("a system drive is flashed on its own: name one --device")
    if any(single_board):
        raise UsageError("--usb-path, --usb-serial and --serial pick one board: not with several")
    flash_many.check_request(req, hostname, settings_file is not None)
    the_bmap, bmap_path = find_bmap(image, bmap, not no_bmap)
    with open_image(image) as source:
        size = image_size(source, the_bmap)
    plan = Plan(
        image=image,
        bmap=the_bmap,
        bmap_path=bmap_path,
        size=size,
        verify=verify,
        unmount=unmount,
        settings_for=flash_many.settings_for(make, hostname),
    )
    # Serial-keyed settings can only be looked up once each board has said its serial.
    by_serial = settings_file is not None and not hostname
    flash_many.flash_many(req, plan, hostname, check_settings=not by_serial, json_out=json_out)


def flash(
    image: Annotated[
        Path,
        typer.Argument(help="Disk image: raw, or .gz/.xz/.zst compressed (streamed)."),
    ],
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            "-d",
            help="Target whole disk, e.g. /dev/sdb; repeat it to flash several at once.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a new card or board to appear.")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            help="With --wait or --rpiboot: flash each of the next N new cards or boards as "
            "it appears, all at once.",
        ),
    ] = None,
    all_removable: Annotated[
        bool,
        typer.Option(
            "--all-removable",
            help="Flash every removable disk there is now (listed, then asked once).",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds to wait with --wait or for a USB boot board."),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Do not ask before writing (needs --device, or --wait --count)."
        ),
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the read-back check.")
    ] = False,
    bmap: Annotated[
        Path | None,
        typer.Option("--bmap", help="Block map (default: IMAGE.bmap, or the uncompressed name's)."),
    ] = None,
    no_bmap: Annotated[
        bool, typer.Option("--no-bmap", help="Write every byte; ignore any bmap.")
    ] = False,
    unmount: Annotated[
        bool, typer.Option("--unmount", help="Unmount the target's partitions first.")
    ] = False,
    allow_system_drive: Annotated[
        bool,
        typer.Option("--allow-system-drive", help="Allow a system drive (you must type its name)."),
    ] = False,
    rpiboot_mode: Annotated[
        bool,
        typer.Option("--rpiboot", help="First boot a board in USB boot-ROM mode into a USB disk."),
    ] = False,
    usb_path: Annotated[
        str | None, typer.Option("--usb-path", help="USB boot board's USB path, e.g. 1-1.3.")
    ] = None,
    usb_serial: Annotated[
        str | None, typer.Option("--usb-serial", help="USB boot board's serial number.")
    ] = None,
    rpiboot_files: Annotated[
        Path, typer.Option("--rpiboot-files", help="Folder with the mass-storage-gadget files.")
    ] = RPIBOOT_FILES,
    hostname: provision_opts.HostnameOpt = None,
    authorized_key: provision_opts.KeyOpt = None,
    network: provision_opts.NetworkOpt = None,
    config_file: provision_opts.ConfigFileOpt = None,
    settings_file: provision_opts.SettingsOpt = None,
    serial: provision_opts.SerialOpt = None,
    wifi_ssid: provision_opts.WifiSsidOpt = None,
    wifi_psk_file: provision_opts.WifiPskOpt = None,
    wifi_country: provision_opts.WifiCountryOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write IMAGE to a USB disk, SD card or board, then read it back to prove it.

    With the image's .bmap (made by fleet build or bmaptool) only the ranges that hold
    data are written, each checked against its SHA-256. Refuses system drives, mounted
    or too-small targets; asks before writing unless --yes, which needs --device.

    With --hostname, --authorized-key, --network, --config-file, --wifi-* or --settings
    the board's own settings then go into its first partition (docs/provisioning.md); they are
    checked before anything is written.

    Several targets at once, each with its own progress, read-back and settings, and a
    summary at the end: repeat --device, or --wait --count N (each new card or board as
    it appears; with --rpiboot, boards in USB boot mode), or --all-removable. Name them
    apart with a pattern, --hostname 'kiosk-{n:02}' or 'pi-{serial}', or with a --settings
    file keyed by the USB-boot board's serial. One failing target never stops the others;
    the exit code is 0 only when every one succeeded.

    Examples: fleet flash out/disk.img --wait; fleet flash disk.img.zst -d /dev/sdb --yes;
    fleet flash out/disk.img -d /dev/sdb --hostname kiosk-01 --authorized-key ~/.ssh/id_ed25519.pub;
    fleet flash out/disk.img -d /dev/sdb -d /dev/sdc --yes --hostname 'kiosk-{n:02}';
    fleet flash out/disk.img --rpiboot --count 4 --settings boards.toml
    """
    devices = device or []
    if yes and not devices and count is None:
        # Without a named device, --yes would let fleet pick what it destroys.
        raise UsageError(
            "--yes writes without asking, so it needs --device to name the target "
            "(see fleet devices)"
        )
    if not image.is_file():
        raise UsageError(f"image {image} does not exist")
    if flash_many.is_many(devices, count, all_removable):
        _flash_many(
            image,
            flash_many.Request(
                devices, wait, count, all_removable, timeout, yes, rpiboot_mode, rpiboot_files
            ),
            bmap=bmap,
            no_bmap=no_bmap,
            verify=not no_verify,
            unmount=unmount,
            allow_system_drive=allow_system_drive,
            single_board=(usb_path, usb_serial, serial),
            hostname=hostname,
            settings_file=settings_file,
            make=lambda name, board_serial: provision_opts.requested(
                name,
                authorized_key,
                network,
                config_file,
                settings_file,
                board_serial,
                wifi_ssid=wifi_ssid,
                wifi_psk_file=wifi_psk_file,
                wifi_country=wifi_country,
            ),
            json_out=json_out,
        )
        return
    settings = provision_opts.requested(
        hostname,
        authorized_key,
        network,
        config_file,
        settings_file,
        serial or usb_serial,
        wifi_ssid=wifi_ssid,
        wifi_psk_file=wifi_psk_file,
        wifi_country=wifi_country,
    )
    the_bmap, bmap_path = find_bmap(image, bmap, not no_bmap)
    with open_image(image) as source:
        size = image_size(source, the_bmap)
        target = _find_target(
            devices[0] if devices else None,
            wait,
            timeout,
            usb_path,
            usb_serial,
            rpiboot_mode,
            rpiboot_files,
        )
        check_target(target, size, allow_system=allow_system_drive, unmount=unmount)
        _confirm(target, image, yes)
        if unmount and target.mounts:
            note(f"unmounted {', '.join(unmount_all(target))}")
        # Held from the image's first byte to the settings' last one.
        with exclusive(target) as held:
            with bytes_progress() as progress:

                def phase(name: str, total: int | None) -> Callable[[int], None]:
                    task = progress.add_task(name, total=total)
                    return lambda n: progress.advance(task, n)

                result = run_flash(
                    source, the_bmap, bmap_path, target, held, verify=not no_verify, phase=phase
                )
            provisioned = None
            if settings is not None:
                from fleet import provision

                provision.write(Path(target.node), settings, held_fd=held[0])
                provisioned = provision.describe(settings)
    if json_out:
        data = result.as_dict()
        if settings is not None:
            data["provisioned"] = settings.as_dict()
        print_json(data)
        return
    if provisioned is not None:
        out.print(f"provisioned {target.node}: {provisioned}")
    how = "verified by read-back" if result.verified else "NOT verified (--no-verify)"
    via = f" using {Path(result.bmap).name}" if result.bmap else ""
    out.print(
        f"flashed {image.name} to {result.device}{via}: {result.bytes_written} bytes written "
        f"in {result.write_seconds:.1f} s, {how}; synced, safe to remove"
    )
