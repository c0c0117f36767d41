//! The systemd D-Bus client (to be written).
