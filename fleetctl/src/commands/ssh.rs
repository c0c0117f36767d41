//! `ssh {MACHINE|UNIT} [--] [command...]`: a shell or a command on a machine
//! (Documentation/using-the-client.md); the work is in [`crate::ssh::remote::ssh_command`].

use crate::cli::SshArgs;
use crate::context::Ctx;
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: SshArgs) -> anyhow::Result<Exit> {
    Ok(crate::ssh::remote::ssh_command(ctx, &args).await)
}
