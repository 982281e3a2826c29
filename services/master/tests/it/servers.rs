//! Servers of one test's own, beside the machine's shared ones: Postgres,
//! RabbitMQ and Redis a test may restart or flush, an SMTP server, IRC
//! networks, and a TCP proxy that cuts a process off as a partition would.
//! Each runs on free ports of 127.0.0.1 from a directory of its own and is
//! stopped when dropped, so tests that use them still run in parallel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::harness::free_port;

/// A TCP proxy on a free port of 127.0.0.1, to cut a process off from a
/// service as a network partition would: `cut` drops every connection
/// through it and refuses new ones until `restore`.
pub struct TcpProxy {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    /// While true, what the client sends is held (not forwarded, not lost).
    sends_frozen: tokio::sync::watch::Sender<bool>,
    /// While true, what the target answers is held.
    replies_frozen: tokio::sync::watch::Sender<bool>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    accepting: tokio::task::JoinHandle<()>,
}

/// Copies one direction of a proxied connection, holding the data while
/// `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a proxy port");
        let port = listener.local_addr().expect("local addr").port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sends_frozen = tokio::sync::watch::Sender::new(false);
        let replies_frozen = tokio::sync::watch::Sender::new(false);
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accepting = tokio::spawn({
            let (cut, connections) = (cut.clone(), connections.clone());
            let (sends_frozen, replies_frozen) = (sends_frozen.clone(), replies_frozen.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the client sees its connection closed
                    }
                    let (sends, replies) = (sends_frozen.subscribe(), replies_frozen.subscribe());
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                            let (client_reads, client_writes) = inbound.into_split();
                            let (target_reads, target_writes) = outbound.into_split();
                            tokio::join!(
                                pump(client_reads, target_writes, sends),
                                pump(target_reads, client_writes, replies)
                            );
                        }
                    });
                }
            }
        });
        TcpProxy { port, cut, sends_frozen, replies_frozen, connections, accepting }
    }

    /// Holds everything, both ways, on the open connections and new ones:
    /// the peers see a network gone silent, not a closed connection.
    pub fn freeze(&self) {
        self.sends_frozen.send_replace(true);
        self.replies_frozen.send_replace(true);
    }

    /// Holds only what the target answers: the client's messages arrive,
    /// but it hears nothing back (no confirms, no replies).
    pub fn freeze_replies(&self) {
        self.replies_frozen.send_replace(true);
    }

    /// The address of `url` with its host and port replaced by this proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let userinfo = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}{path}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    /// Accepts connections again and lets held data through.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
        self.sends_frozen.send_replace(false);
        self.replies_frozen.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// The address (host and port) a service URL points at.
pub fn address_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|_| panic!("`{host_port}` is not host:port"))
}

/// A RabbitMQ node of one test's own (own port, node name and data
/// directory), so the test may restart it without touching anyone else.
pub struct PrivateRabbitMq {
    port: u16,
    /// The CA that signed the server's certificate, when it speaks only TLS.
    ca_file: Option<PathBuf>,
    /// The management API's port, when the plugin is on.
    management_port: Option<u16>,
    node: String,
    dir: tempfile::TempDir,
    server: Child,
}

impl PrivateRabbitMq {
    pub async fn start() -> PrivateRabbitMq {
        Self::start_with(false, false).await
    }

    /// With the management plugin, which masters use to make per-worker
    /// accounts.
    pub async fn start_with_management() -> PrivateRabbitMq {
        Self::start_with(true, false).await
    }

    /// Speaking only TLS (AMQP over TLS, `amqps://`), with a certificate for
    /// `localhost` from a CA of its own (`ca_file`), and the management
    /// plugin. Clients need the CA: give processes `SSL_CERT_FILE`.
    pub async fn start_tls_with_management() -> PrivateRabbitMq {
        Self::start_with(true, true).await
    }

    async fn start_with(management: bool, tls: bool) -> PrivateRabbitMq {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let management_port = management.then(free_port);
        let node = format!("buildmaster-test-{port}@localhost");
        let mut conf = String::from("loopback_users = none\n");
        let ca_file = if tls {
            let (ca, cert, key) = make_certificates(dir.path());
            conf.push_str(&format!(
                "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca.display(),
                cert.display(),
                key.display()
            ));
            Some(ca)
        } else {
            conf.push_str(&format!("listeners.tcp.default = 127.0.0.1:{port}\n"));
            None
        };
        if let Some(management_port) = management_port {
            conf.push_str(&format!("management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"));
        }
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
        let plugins = if management { "[rabbitmq_management].\n" } else { "[].\n" };
        std::fs::write(dir.path().join("enabled_plugins"), plugins).expect("write enabled_plugins");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let server = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", dir.path())
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.path().join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.path().join("pid"))
            .current_dir(dir.path())
            .process_group(0)
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server starts (deploy/services.sh ensure installs it)");
        let rabbitmq = PrivateRabbitMq { port, ca_file, management_port, node, dir, server };
        rabbitmq.wait_until_serving().await;
        if let Some(url) = rabbitmq.management_url() {
            let deadline = Instant::now() + Duration::from_secs(60);
            let http = reqwest::Client::new();
            while !http.get(format!("{url}api/overview")).send().await.is_ok_and(|r| r.status().is_success()) {
                assert!(
                    Instant::now() < deadline,
                    "private RabbitMQ's management API did not start; see {:?}",
                    rabbitmq.dir
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        rabbitmq
    }

    /// The management API, with the administrator's credentials.
    pub fn management_url(&self) -> Option<String> {
        self.management_port.map(|port| format!("http://guest:guest@127.0.0.1:{port}/"))
    }

    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.connect().await.is_err() {
            assert!(Instant::now() < deadline, "private RabbitMQ {} did not start; see {:?}", self.node, self.dir);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self) -> String {
        match self.ca_file {
            Some(_) => format!("amqps://guest:guest@localhost:{}/%2f", self.port),
            None => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
        }
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// A connection as the administrator, trusting the broker's own CA.
    pub async fn connect(&self) -> lapin::Result<lapin::Connection> {
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_file.as_ref().map(|ca| std::fs::read_to_string(ca).expect("read the CA")),
        };
        lapin::Connection::connect_with_config(&self.url(), Default::default(), tls, lapin::runtime::default_runtime()?)
            .await
    }

    /// Stops the broker application (every connection drops) and starts it
    /// again; durable queues and persistent messages survive, as in a
    /// restart of the service.
    pub async fn restart(&self) {
        for action in ["stop_app", "start_app"] {
            // Not the /usr/sbin wrapper: as root it switches to the rabbitmq
            // user, whose Erlang cookie is not this node's.
            let output = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
                .env("HOME", self.dir.path())
                .args(["-n", &self.node, action])
                .output()
                .expect("rabbitmqctl runs");
            let said = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "rabbitmqctl {action} on {}: {said}", self.node);
        }
        self.wait_until_serving().await;
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        // The server is a script and the Erlang VM it starts: kill the group.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.server.id())]).status();
        let _ = self.server.wait();
    }
}

/// A Redis server of one test's own (own port, own directory, nothing kept
/// on disk), so the test may flush it without touching anyone else.
pub struct PrivateRedis {
    port: u16,
    /// The CA that signed the server's certificate, when it speaks TLS.
    ca_file: Option<PathBuf>,
    /// How it was started, to start it again after `stop`.
    command_line: Vec<std::ffi::OsString>,
    server: std::sync::Mutex<Option<ChildGuard>>,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        Self::start_with(false).await
    }

    /// A Redis that speaks only TLS, with a certificate for `localhost` from
    /// a CA of its own (`ca_file`).
    pub async fn start_tls() -> PrivateRedis {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> PrivateRedis {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).arg("--dir").arg(dir.path());
        let ca_file = if tls {
            let (ca, cert, key) = make_certificates(dir.path());
            command.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]);
            command.arg("--tls-cert-file").arg(cert).arg("--tls-key-file").arg(key).arg("--tls-ca-cert-file").arg(&ca);
            Some(ca)
        } else {
            command.args(["--port", &port.to_string()]);
            None
        };
        let command_line: Vec<std::ffi::OsString> = command.get_args().map(ToOwned::to_owned).collect();
        let redis = PrivateRedis { port, ca_file, command_line, server: std::sync::Mutex::new(None), _dir: dir };
        redis.start_again().await;
        redis
    }

    /// Stops the server (SIGKILL: what it held is gone, as after a crash of
    /// a Redis that keeps nothing on disk); clients see connections refused.
    pub fn stop(&self) {
        self.server.lock().unwrap().take();
    }

    /// Starts the stopped server again on the same port, empty.
    pub async fn start_again(&self) {
        let server = Command::new("redis-server")
            .args(&self.command_line)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (deploy/services.sh ensure installs it)");
        *self.server.lock().unwrap() = Some(ChildGuard(server));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").await.is_err() {
            assert!(Instant::now() < deadline, "private redis-server on port {} did not answer", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        match self.ca_file {
            Some(_) => format!("rediss://localhost:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    pub async fn command(&self, name: &str) -> redis::RedisResult<redis::Value> {
        let client = match &self.ca_file {
            Some(ca) => {
                let root_cert = Some(std::fs::read(ca).expect("read the CA"));
                redis::Client::build_with_tls(self.url(), redis::TlsCertificates { client_tls: None, root_cert })?
            }
            None => redis::Client::open(self.url())?,
        };
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd(name).query_async(&mut connection).await
    }
}

/// Makes a CA and a certificate for `localhost` it signed, with openssl;
/// returns the CA's, the certificate's and its key's paths.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, request) = (dir.join("server.pem"), dir.join("server.key"), dir.join("server.csr"));
    let extensions = dir.join("server.ext");
    std::fs::write(&extensions, "subjectAltName = DNS:localhost, IP:127.0.0.1\n").expect("write extensions");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let output = Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let os = |text: &'static str| std::ffi::OsStr::new(text);
    openssl(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("2"),
        os("-subj"),
        os("/CN=buildmaster test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=localhost"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        request.as_os_str(),
    ]);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        request.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("2"),
        os("-extfile"),
        extensions.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}

/// A private IRC network: the distribution's ngircd on two free ports, one
/// plain (for the test's own clients) and one TLS only, with a
/// certificate for `localhost` from a CA of its own (`ca_file`).
pub struct PrivateIrc {
    pub port: u16,
    pub tls_port: u16,
    pub ca_file: PathBuf,
    config: PathBuf,
    server: ChildGuard,
    _dir: tempfile::TempDir,
}

impl PrivateIrc {
    pub async fn start() -> PrivateIrc {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (port, tls_port) = (free_port(), free_port());
        let (ca_file, cert, key) = make_certificates(dir.path());
        // ngircd drops root for `nobody`, after reading its files.
        let config = dir.path().join("ngircd.conf");
        std::fs::write(
            &config,
            format!(
                "[Global]\n  Name = irc.buildmaster.test\n  Info = buildmaster tests\n  Listen = 127.0.0.1\n\
                 \x20 Ports = {port}\n  MotdPhrase = \"buildmaster tests\"\n\
                 [Limits]\n  MaxConnectionsIP = 0\n\
                 [Options]\n  DNS = no\n  Ident = no\n  PAM = no\n\
                 [SSL]\n  CertFile = {}\n  KeyFile = {}\n  Ports = {tls_port}\n",
                cert.display(),
                key.display()
            ),
        )
        .expect("write ngircd.conf");
        let server = Self::serve(&config, port, tls_port).await;
        PrivateIrc { port, tls_port, ca_file, config, server, _dir: dir }
    }

    /// Stops the server (every connection drops) and starts it again on
    /// the same ports, as a network's restart does.
    pub async fn restart(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
        self.server = Self::serve(&self.config, self.port, self.tls_port).await;
    }

    async fn serve(config: &Path, port: u16, tls_port: u16) -> ChildGuard {
        let server = Command::new("ngircd")
            .arg("-n")
            .arg("-f")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ngircd starts (deploy/services.sh ensure --tests installs it)");
        let server = ChildGuard(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [port, tls_port] {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(Instant::now() < deadline, "ngircd on port {port} did not listen");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        server
    }
}

/// A private IRC network with services, for what ngircd cannot do (SASL):
/// the distribution's InspIRCd with Atheme (NickServ, SaslServ) linked to
/// it, on free ports, plain text.
pub struct PrivateIrcServices {
    pub port: u16,
    _ircd: ChildGuard,
    _services: ChildGuard,
    _dir: tempfile::TempDir,
}

impl PrivateIrcServices {
    pub async fn start() -> PrivateIrcServices {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (port, link_port) = (free_port(), free_port());
        let at = dir.path().display();
        // No throttles: a test connects many times in a few seconds.
        let ircd_config = format!(
            r#"<config format="xml">
<path configdir="{at}" datadir="{at}" logdir="{at}" moduledir="/usr/lib/inspircd/modules">
<server name="irc.buildmaster.test" description="buildmaster tests" network="TestNet">
<admin name="tests" nick="tests" email="tests@example.org">
<bind address="127.0.0.1" port="{port}" type="clients">
<bind address="127.0.0.1" port="{link_port}" type="servers">
<connect name="main" allow="*" timeout="20" pingfreq="2m" hardsendq="1M" softsendq="1M" recvq="64K"
         threshold="1000" commandrate="100000" fakelag="no" localmax="1000" globalmax="1000" limit="5000"
         resolvehostnames="no" useident="no">
<dns server="127.0.0.1" timeout="1">
<pid file="{at}/inspircd.pid">
<log method="file" type="*" level="default" target="{at}/inspircd.log">
<module name="cap">
<module name="sasl">
<module name="services_account">
<module name="spanningtree">
<sasl target="services.buildmaster.test">
<link name="services.buildmaster.test" ipaddr="127.0.0.1" port="{link_port}" allowmask="127.0.0.0/8"
      timeout="30s" sendpass="linkpass" recvpass="linkpass">
<uline server="services.buildmaster.test" silent="yes">
"#
        );
        let services_config = format!(
            r#"loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/register";
loadmodule "modules/nickserv/identify";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";
serverinfo {{
    name = "services.buildmaster.test"; desc = "test services"; numeric = "00A"; recontime = 1;
    netname = "TestNet"; hidehostsuffix = "users.test"; adminname = "tests"; adminemail = "tests@example.org";
    registeremail = "noreply@example.org"; mta = "/bin/true"; loglevel = {{ error; info; admin; network; }};
    maxlogins = 5; maxusers = 50; mdlimit = 30; emaillimit = 10; emailtime = 300; auth = none;
    casemapping = rfc1459;
}};
uplink "irc.buildmaster.test" {{
    host = "127.0.0.1"; port = {link_port}; send_password = "linkpass"; receive_password = "linkpass";
}};
nickserv {{ nick = "NickServ"; user = "NickServ"; host = "services.test"; real = "Nickname Services"; maxnicks = 5; expire = 0; }};
saslserv {{ nick = "SaslServ"; user = "SaslServ"; host = "services.test"; real = "SASL"; }};
general {{
    flood_msgs = 1000; flood_time = 10; ratelimit_uses = 1000; ratelimit_period = 1; kline_time = 7;
    commit_interval = 5; default_clone_allowed = 1000; default_clone_warn = 1000;
    uplink_sendq_limit = 1048576; language = "en"; immune_level = immune; exempts {{ }};
}};
operclass "user" {{ }};
"#
        );
        std::fs::write(dir.path().join("inspircd.conf"), ircd_config).expect("write inspircd.conf");
        std::fs::write(dir.path().join("atheme.conf"), services_config).expect("write atheme.conf");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("a log file");
        let mut ircd = Command::new("inspircd");
        ircd.arg("--config").arg(dir.path().join("inspircd.conf")).arg("--nofork");
        let uid = Command::new("id").arg("-u").output().expect("id runs");
        if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
            // It refuses root unless told that is meant.
            ircd.arg("--runasroot");
        }
        let ircd = ircd
            .stdin(Stdio::null())
            .stdout(log("inspircd.out"))
            .stderr(log("inspircd.err"))
            .spawn()
            .expect("inspircd starts (deploy/services.sh ensure --tests installs it)");
        let ircd = ChildGuard(ircd);
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", link_port)).await.is_err() {
            assert!(Instant::now() < deadline, "inspircd on port {link_port} did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let services = Command::new("atheme-services")
            .arg("-n")
            .arg("-c")
            .arg(dir.path().join("atheme.conf"))
            .arg("-D")
            .arg(dir.path())
            .arg("-l")
            .arg(dir.path().join("atheme.log"))
            .arg("-p")
            .arg(dir.path().join("atheme.pid"))
            .stdin(Stdio::null())
            .stdout(log("atheme.out"))
            .stderr(log("atheme.err"))
            .spawn()
            .expect("atheme-services starts (deploy/services.sh ensure --tests installs it)");
        let services = ChildGuard(services);
        // Ready once linked: the services say so in their log.
        let atheme_log = dir.path().join("atheme.log");
        while !std::fs::read_to_string(&atheme_log).unwrap_or_default().contains("finished synching with uplink") {
            assert!(Instant::now() < deadline, "atheme did not link to inspircd");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PrivateIrcServices { port, _ircd: ircd, _services: services, _dir: dir }
    }
}

/// A private SMTP server (the distribution's aiosmtpd) on a free port,
/// keeping every mail it accepts in a maildir.
pub struct PrivateSmtp {
    pub port: u16,
    /// The CA of its certificate, when it speaks TLS.
    pub ca_file: Option<PathBuf>,
    _server: ChildGuard,
    dir: tempfile::TempDir,
}

/// aiosmtpd as a library, for what its command line cannot do: STARTTLS
/// required before AUTH, and one login that is accepted.
const SECURED_SMTP: &str = r#"
import sys, time, ssl
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult
port, cert, key, maildir, user, password = sys.argv[1:]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
def authenticate(server, session, envelope, mechanism, data):
    return AuthResult(success=data.login.decode() == user and data.password.decode() == password)
Controller(Mailbox(maildir), hostname="127.0.0.1", port=int(port), tls_context=context, require_starttls=True,
           auth_required=True, auth_require_tls=True, authenticator=authenticate).start()
while True:
    time.sleep(3600)
"#;

impl PrivateSmtp {
    /// A server that takes mail only after STARTTLS and a login as `user`
    /// with `password`, with a certificate for `localhost` (`ca_file`).
    pub async fn start_secured(user: &str, password: &str) -> PrivateSmtp {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let (ca, cert, key) = make_certificates(dir.path());
        // The interpreter aiosmtpd was installed for (its command's).
        let command = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("aiosmtpd"))
            .find(|candidate| candidate.is_file())
            .expect("aiosmtpd (deploy/services.sh ensure --tests installs it)");
        let script = std::fs::read_to_string(command).expect("read aiosmtpd");
        let python = script.lines().next().and_then(|line| line.strip_prefix("#!")).unwrap_or("python3").trim();
        let server = Command::new(python)
            .args(["-c", SECURED_SMTP, &port.to_string()])
            .arg(cert)
            .arg(key)
            .arg(dir.path().join("mail"))
            .args([user, password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python runs aiosmtpd");
        let server = ChildGuard(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd on port {port} did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateSmtp { port, ca_file: Some(ca), _server: server, dir }
    }

    pub async fn start() -> PrivateSmtp {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let server = Command::new("aiosmtpd")
            .args(["-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd starts (deploy/services.sh ensure --tests installs it)");
        let server = ChildGuard(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd on port {port} did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateSmtp { port, ca_file: None, _server: server, dir }
    }

    /// Every mail received so far, whole (headers and body), oldest first.
    pub fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail").join("new")) else { return Vec::new() };
        let mut mails: Vec<(std::time::SystemTime, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let modified = entry.metadata().ok()?.modified().ok()?;
                Some((modified, std::fs::read_to_string(entry.path()).ok()?))
            })
            .collect();
        mails.sort();
        mails.into_iter().map(|(_, mail)| mail).collect()
    }
}

/// A Postgres server of one test's own (own port, own data directory), so the
/// test may restart it without touching anyone else. Run as the `postgres`
/// user when the tests run as root (Postgres refuses root).
pub struct PrivatePostgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let bindir = Command::new("pg_config").arg("--bindir").output().ok().filter(|o| o.status.success());
        let bin = match bindir {
            Some(output) => PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()),
            None => std::fs::read_dir("/usr/lib/postgresql")
                .expect("Postgres server binaries (deploy/services.sh ensure installs them)")
                .flatten()
                .map(|version| version.path().join("bin"))
                .max()
                .expect("a Postgres version under /usr/lib/postgresql"),
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if as_postgres {
            let owned = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().expect("chown runs");
            assert!(owned.success(), "chown the private Postgres directory to postgres");
        }
        let postgres = PrivatePostgres { port: free_port(), bin, data, as_postgres, _dir: dir };
        postgres.run("initdb", &["-A", "trust", "-U", "postgres", "--no-sync", "-D"]);
        postgres.start_server();
        postgres
    }

    /// A Postgres tool, run as the `postgres` user when needed.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.current_dir("/");
        command
    }

    /// Runs a tool with `args` and the data directory last.
    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.tool(tool).args(args).arg(&self.data).output().expect("Postgres tool runs");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn start_server(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.data.display());
        let log = self.data.join("server.log");
        self.run("pg_ctl", &["-w", "-l", &log.to_string_lossy(), "-o", &options, "start", "-D"]);
    }

    /// Stops the server (fast: open connections are cut) and starts it again.
    pub fn restart(&self) {
        self.run("pg_ctl", &["-w", "-m", "fast", "stop", "-D"]);
        self.start_server();
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `psql` on `database` of this server, as its superuser.
    pub fn psql(&self, database: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", database]);
        command.arg("-p").arg(self.port.to_string());
        command
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl").args(["-m", "immediate", "stop", "-D"]).arg(&self.data).output();
    }
}

/// Kills a child process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
