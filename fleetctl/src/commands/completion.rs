//! `completion SHELL` and the hidden `man-pages DIR`: documentation generated from the clap
//! definitions of [`crate::cli`], so completions and man pages list exactly the commands and
//! flags this fleetctl parses.
//!
//! `completion` prints a script for bash, zsh or fish on stdout, like `kubectl completion`:
//! `source <(fleetctl completion bash)` tries it in the current shell, and the Debian package
//! installs the three scripts where each shell looks for them. `man-pages` writes `fleetctl.1`
//! and one `fleetctl-<command>.1` per visible command into a directory; it exists for
//! `scripts/package.sh`, so it is hidden from help and completions.

use std::path::{Path, PathBuf};

use clap::Args;
use clap_complete::Shell;

use crate::exit::Exit;
use crate::output::Console;

/// `fleetctl completion SHELL`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to print a completion script for
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: CompletionShell,
}

/// The shells we ship completions for (clap_complete knows more; these are the ones the
/// package installs and the docs describe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(shell: CompletionShell) -> Shell {
        match shell {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

/// `fleetctl man-pages DIR` (hidden).
#[derive(Debug, Args)]
pub struct ManPagesArgs {
    /// The directory to write the pages into (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script of `args.shell` on stdout.
pub fn run_completion(args: &CompletionArgs, console: Console) -> Exit {
    console.out_raw(&completion_script(args.shell));
    Exit::Success
}

/// The completion script for `shell`, generated from fleetctl's clap command.
pub fn completion_script(shell: CompletionShell) -> String {
    let mut cmd = crate::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(Shell::from(shell), &mut cmd, "fleetctl", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Writes the man pages into `args.dir`.
pub fn run_man_pages(args: &ManPagesArgs, console: Console) -> Exit {
    match write_man_pages(&args.dir) {
        Ok(count) => {
            console.err(&format!(
                "wrote {count} man pages into {}",
                args.dir.display()
            ));
            Exit::Success
        }
        Err(error) => {
            console.err(&format!(
                "error: cannot write man pages into {}: {error}",
                args.dir.display()
            ));
            Exit::Failure
        }
    }
}

/// Renders `fleetctl.1` and `fleetctl-<command>.1` for every visible command into `dir`,
/// returning how many pages it wrote.
pub fn write_man_pages(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let cmd = crate::cli::command();
    let mut count = 0;
    // clap's generated `help` command gets no page: `fleetctl help X` is `man fleetctl-X`.
    let pages = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help");
    for sub in pages {
        man(sub.clone()).generate_to(dir)?;
        count += 1;
    }
    man(cmd).generate_to(dir)?;
    Ok(count + 1)
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section("1")
        .manual("fleet")
        .source(format!("fleet {}", crate::cli::VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_that_knows_the_commands() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let script = completion_script(shell);
            for word in ["list-machines", "list-units", "completion", "endpoint"] {
                assert!(script.contains(word), "{shell:?} script lacks {word}");
            }
        }
    }

    #[test]
    fn man_pages_cover_every_visible_command_and_no_hidden_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let count = write_man_pages(dir.path()).expect("write man pages");
        let page = |name: &str| dir.path().join(name);
        assert!(page("fleetctl.1").is_file());
        let list_machines =
            std::fs::read_to_string(page("fleetctl-list-machines.1")).expect("list-machines page");
        assert!(list_machines.contains("\\-\\-fields"), "{list_machines}");
        assert!(page("fleetctl-completion.1").is_file());
        assert!(!page("fleetctl-man-pages.1").exists());
        assert!(!page("fleetctl-fd-forward.1").exists());
        assert!(!page("fleetctl-help.1").exists());
        let files = std::fs::read_dir(dir.path()).expect("read dir").count();
        assert_eq!(files, count);
    }
}
