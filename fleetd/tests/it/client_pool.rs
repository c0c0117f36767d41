//! The API client keeps its connections: many requests to the real fleetd
//! share one connection, and a connection the server closed for idleness is
//! replaced without the caller seeing an error.
//!
//! A byte-forwarding proxy between the client and fleetd counts the
//! connections the client opens and sees the ones fleetd closes; it changes
//! nothing that passes through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_api::client::{Client, Endpoint};
use fleet_registry::testing::Etcd;
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::Fleetd;
use crate::util::{free_port, machine_id_file, prefix, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

/// Connections opened through the proxy, and those fleetd ended.
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    closed_by_server: AtomicUsize,
}

/// Forwards every connection on a free loopback port to `target`; returns
/// the port.
async fn counting_proxy(target: u16, counts: Arc<Counts>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counts.opened.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                tokio::select! {
                    _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                    _ = tokio::io::copy(&mut server_read, &mut client_write) => {
                        counts.closed_by_server.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_a_connection_and_survive_an_idle_close() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-pool");
    let port = free_port();
    let conf = format!(
        "etcd_servers = {}\netcd_key_prefix = {}\nmachine_id_file = {}\ndisable_agent = true\n\
         api_listen = tcp://127.0.0.1:{port}\napi_idle_timeout = 0.5\n",
        etcd.endpoint(),
        prefix("pool"),
        id_file.display()
    );
    let _fleetd = Fleetd::start(dir.path(), &conf, &[]);
    let counts = Arc::new(Counts::default());
    let proxy = counting_proxy(port, counts.clone()).await;
    let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{proxy}")).expect("endpoint");
    let client = Client::new(endpoint).with_timeout(Some(DEADLINE));
    wait_until(DEADLINE, "fleetd lists this machine", || async {
        client
            .machines()
            .await
            .is_ok_and(|machines| machines.len() == 1)
    })
    .await;

    let before = counts.opened.load(Ordering::SeqCst);
    for _ in 0..20 {
        client.machines().await.expect("lists machines");
    }
    let opened = counts.opened.load(Ordering::SeqCst) - before;
    assert!(opened <= 1, "20 requests opened {opened} connections");

    // fleetd closes the idle connection after 0.5 s; the next request must
    // not fail because of it.
    let closed = counts.closed_by_server.load(Ordering::SeqCst);
    wait_until(DEADLINE, "fleetd closes the idle connection", || async {
        counts.closed_by_server.load(Ordering::SeqCst) > closed
    })
    .await;
    client
        .machines()
        .await
        .expect("a request after the idle close succeeds");
}
