//! The `config` target: the fleetd config loader.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use fleetd::config::Config;

/// `config`: environment lines `NAME=VALUE` up to a line `--`, then the
/// config file's text (with no `--` line, all of it is the file).
///
/// Drives the goini parser, every option's value parser, the `FLEET_*`
/// overrides and the cross-option checks. Property: a config that loads
/// gives the engine, agent and registry settings without panicking, and
/// every duration in them can be added to the clock (the daemon does).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (env_text, file_text) = match text.split_once("\n--\n") {
        Some((env, file)) => (env, file),
        None => ("", text.as_ref()),
    };
    let env: HashMap<String, String> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let path = Path::new("/etc/fleet/fleet.conf");
    let Ok((config, _notices)) = Config::from_sources(Some((path, file_text)), &env) else {
        return;
    };
    let (engine, agent, registry) = (config.engine(), config.agent(), config.registry());
    let now = Instant::now();
    for duration in [
        engine.lease_ttl,
        engine.machine_loss_grace,
        agent.agent_ttl,
        registry.request_timeout,
    ] {
        assert!(
            now.checked_add(duration).is_some(),
            "{duration:?} cannot be added to the clock"
        );
    }
}
