//! Coverage-guided fuzz targets for the parts of fleet that read input from
//! outside: unit files, API requests and the fleetd config.
//!
//! Each target is a function from arbitrary bytes to nothing that panics
//! when it finds a bug: a panic inside fleet's code, or a broken property
//! checked here (accepted unit content keeps its hash through its stored form, an
//! API request rejected before etcd gets a 4xx, a loaded config can be
//! turned into every component's settings). The binaries in `src/bin/`
//! wrap them: built by `scripts/fuzz.sh` (`cargo afl build --features afl`)
//! they are AFL++ persistent-mode harnesses; built plainly, as the workspace
//! build does, they run one input read from stdin, which is how a crash AFL
//! found is replayed (`target/debug/config < crash-file`).
//!
//! The input formats are plain text so that seeds (`fuzz/seeds/<target>/`)
//! are readable and AFL's dictionary-free mutations still hit structure:
//! see [`unit_parser`], [`api`] and [`config`].

use std::io::Read;
use std::str::FromStr;

use fleet_systemd::unit::{
    Requirements, UnitFile, UnitName, fleetctl_unit_name, glob_is_valid, glob_match,
    unrecognized_requirements, validate_options,
};

#[cfg(feature = "api")]
mod api;
#[cfg(feature = "config")]
mod config;
#[cfg(feature = "api")]
pub use api::api;
#[cfg(feature = "config")]
pub use config::config;

/// Runs `target` on all of stdin: the plain build of every target binary.
pub fn run_stdin(target: fn(&[u8])) {
    let mut input = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("cannot read stdin: {error}");
        std::process::exit(2);
    }
    target(&input);
}

/// `unit-parser`: the first line is a unit name, the rest a unit file.
///
/// Drives the name rules (validation, templates, fleetctl's suffixing,
/// globs), the parser, the canonical form and hash, `[X-Fleet]`
/// requirements and option validation. Property: a file that validation
/// accepts serializes to text that parses again to the same hash (content is
/// stored as that text and identified by that hash).
pub fn unit_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name_line, unit_text) = text.split_once('\n').unwrap_or((&text, ""));
    let name = UnitName::from_str(name_line).ok();
    if let Some(name) = &name {
        assert_eq!(name.to_string(), name_line, "a valid name prints as given");
        let _ = (
            name.template(),
            name.instantiate("1"),
            name.is_recognized_type(),
        );
    }
    let _ = fleetctl_unit_name(name_line);
    if glob_is_valid(name_line) {
        let _ = glob_match(name_line, "web@1.service");
    }
    let Ok(file) = UnitFile::parse(unit_text) else {
        return;
    };
    if validate_options(&file).is_ok() {
        let stored = file.serialize();
        let reparsed = UnitFile::parse(&stored);
        assert!(reparsed.is_ok(), "accepted content must parse: {stored:?}");
        if let Ok(reparsed) = reparsed {
            assert_eq!(reparsed.hash(), file.hash(), "hash changed: {stored:?}");
        }
    }
    let requirements = match &name {
        Some(name) => Requirements::of(&file, name),
        None => Requirements::of_unnamed(&file),
    };
    let _ = requirements.conflicts_with("a.service", "b.service", &requirements);
    let _ = requirements.replaces("a.service");
    let _ = unrecognized_requirements(&file);
    let _ = (
        file.description(),
        file.canonical_options(),
        file.hash().short(),
    );
}
