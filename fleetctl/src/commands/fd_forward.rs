//! `fd-forward SOCKET`: copy stdin to a unix socket and the socket to stdout
//! until the socket side ends. The remote end of an SSH tunnel to a unix
//! endpoint runs this: the original fleetctl's `--tunnel` still does against our hosts
//! (Documentation/compatibility.md, "fleetctl transports").
//!
//! A socket that cannot be dialled is an error (status 1); the original exited 0, a quirk
//! fixed on purpose (Documentation/compatibility.md, "Quirks of the original").

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::cli::FdForwardArgs;
use crate::exit::Exit;
use crate::output::Console;

pub async fn run(args: FdForwardArgs, console: Console) -> Exit {
    let [socket] = args.socket.as_slice() else {
        console.err("Provide a single argument");
        return Exit::Failure;
    };
    let stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(error) => {
            console.err(&format!("Unable to connect to socket {socket}: {error}"));
            return Exit::Failure;
        }
    };
    let (mut socket_read, mut socket_write) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let upstream = async {
        let copied = tokio::io::copy(&mut stdin, &mut socket_write).await;
        // Tell the server the request side is finished; keep reading its answer.
        let _ = socket_write.shutdown().await;
        copied
    };
    let downstream = async {
        let copied = tokio::io::copy(&mut socket_read, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    tokio::pin!(upstream);
    tokio::pin!(downstream);
    // The socket closing ends the session; stdin ending only half-closes it.
    let result = tokio::select! {
        result = &mut downstream => result,
        up = &mut upstream => match up {
            Ok(_) => downstream.await,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(_) => Exit::Success,
        Err(error) => {
            console.err(&format!("Error forwarding socket {socket}: {error}"));
            Exit::Failure
        }
    }
}
