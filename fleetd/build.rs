//! Link options for release builds of the fleetd binary (Documentation/performance.md,
//! "Round six"), both about the pages a host keeps resident:
//!
//! - `hot-code.txt` lists the functions a cluster's fleetd runs (written by
//!   `scripts/hot-code.sh`); the linker places them first and together. The kernel maps a
//!   binary's code 64 KiB around each page fault, so in link order, where those functions are
//!   spread over most of the binary, a host kept about three times their weight resident.
//!   Names the build no longer has are skipped, and new functions go after the hot ones: a
//!   stale list costs memory, never correctness.
//! - Relative relocations are packed (`DT_RELR`, glibc 2.36 and later): the loader reads a
//!   few KiB of them at start instead of 340 KiB of `.rela.dyn`.
//!
//! Only for release builds on x86_64 Linux (GNU), where rustc links with LLD; debug builds and
//! other targets link as before.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=hot-code.txt");
    println!("cargo:rerun-if-changed=build.rs");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let target = env::var("TARGET").unwrap_or_default();
    if !release || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&manifest_dir).join("hot-code.txt");
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=fleetd=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=fleetd=-Wl,--no-warn-symbol-ordering");
    } else {
        println!(
            "cargo:warning=fleetd/hot-code.txt is missing: link order unchanged (scripts/hot-code.sh writes it)"
        );
    }
    println!("cargo:rustc-link-arg-bin=fleetd=-Wl,-z,pack-relative-relocs");
}
