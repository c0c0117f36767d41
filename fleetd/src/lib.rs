//! fleetd: one per machine. The heart keeps the machine's presence, the
//! engine (on one elected machine) schedules, the agent drives systemd, and
//! the listeners serve the API. (Being written.)
