//! Every seed (and every crash input kept as a regression, `fuzz/seeds/`)
//! runs through its target without panicking: the corpus stays valid input
//! for the targets as the code changes.

use std::path::Path;

fn run_all(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count >= 3, "{}: only {count} seeds", dir.display());
}

#[test]
fn unit_parser_seeds_run_clean() {
    run_all("unit-parser", fleet_fuzz::unit_parser);
}

#[cfg(feature = "api")]
#[test]
fn api_seeds_run_clean() {
    run_all("api", fleet_fuzz::api);
}

#[cfg(feature = "config")]
#[test]
fn config_seeds_run_clean() {
    run_all("config", fleet_fuzz::config);
}
