"""The only modules that change the host: files, libvirt, systemd. Each step registers its undo."""
