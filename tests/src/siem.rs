//! Receivers for audit export's tests, as a SIEM runs them: Debian's rsyslogd taking RFC 5425
//! syslog over TLS (`rsyslog-gnutls`) and writing what it got to a file, and an HTTPS endpoint
//! that checks each body's HMAC signature. Each can be stopped and started again on its port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use keyward_test_support::{Proc, eventually, free_port, require};

use crate::control_plane::TestTls;

/// rsyslogd with a TLS listener on `port`, writing `MSGID<TAB>STRUCTURED-DATA<TAB>MSG` lines to
/// `file` (appended across restarts).
#[derive(Debug)]
pub struct RsyslogTls {
    pub port: u16,
    pub file: PathBuf,
    dir: PathBuf,
    tls: TestTls,
    proc: Option<Proc>,
}

impl RsyslogTls {
    pub async fn start(dir: &Path, tls: &TestTls) -> Self {
        require("/usr/sbin/rsyslogd", "rsyslog");
        require(
            "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
            "rsyslog-gnutls",
        );
        let mut r = Self {
            port: free_port(),
            file: dir.join("received.log"),
            dir: dir.to_path_buf(),
            tls: tls.clone(),
            proc: None,
        };
        r.resume().await;
        r
    }

    /// Starts it again (after [`RsyslogTls::stop`]) on the same port and file.
    pub async fn resume(&mut self) {
        let work = self.dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let ca = self.dir.join("ca.pem");
        std::fs::write(&ca, &self.tls.ca_pem).unwrap();
        let config = self.dir.join("rsyslog.conf");
        std::fs::write(
            &config,
            format!(
                "global(workDirectory=\"{work}\" maxMessageSize=\"256k\"\n\
                   DefaultNetstreamDriver=\"gtls\"\n\
                   DefaultNetstreamDriverCAFile=\"{ca}\"\n\
                   DefaultNetstreamDriverCertFile=\"{cert}\"\n\
                   DefaultNetstreamDriverKeyFile=\"{key}\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" \
                   StreamDriver.AuthMode=\"anon\")\n\
                 input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
                 template(name=\"kw\" type=\"string\" string=\"%msgid%\\t%structured-data%\\t%msg%\\n\")\n\
                 action(type=\"omfile\" file=\"{file}\" template=\"kw\")\n",
                work = work.display(),
                ca = ca.display(),
                cert = self.tls.cert_file.display(),
                key = self.tls.key_file.display(),
                port = self.port,
                file = self.file.display(),
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&config)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let port = self.port;
        eventually("rsyslogd's TLS listener", Duration::from_secs(15), || {
            assert!(proc.running(), "rsyslogd exited; see {}", config.display());
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        self.proc = Some(proc);
    }

    /// Stops it as its service manager would (SIGTERM: what it took in is written first).
    pub async fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let pid = nix::unistd::Pid::from_raw(proc.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            eventually("rsyslogd to exit", Duration::from_secs(15), || {
                let exited = !proc.running();
                async move { exited.then_some(()) }
            })
            .await;
        }
    }

    /// The lines written so far: (MSGID, structured data, message without its BOM).
    pub fn lines(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut parts = l.splitn(3, '\t');
                let msgid = parts.next().unwrap_or_default().to_owned();
                let sd = parts.next().unwrap_or_default().to_owned();
                let msg = parts.next().unwrap_or_default();
                (msgid, sd, msg.trim_start_matches('\u{feff}').to_owned())
            })
            .collect()
    }
}

/// What the HTTPS receiver got: each accepted body's lines, and how many bodies it refused.
#[derive(Debug, Default)]
pub struct Received {
    pub lines: Vec<String>,
    pub bodies: usize,
    pub bad_signatures: usize,
}

/// An HTTPS endpoint on `addr` that takes POSTs signed with `key` (keyward's webhook sink).
#[derive(Debug)]
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    key: Vec<u8>,
    tls: TestTls,
    handle: Option<axum_server::Handle>,
}

/// `t=SECONDS,v1=HEX` checked against HMAC-SHA256(key, "SECONDS.BODY"), in constant time.
fn signature_holds(key: &[u8], header: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

impl WebhookReceiver {
    pub async fn start(tls: &TestTls, key: &[u8]) -> Self {
        let mut r = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            received: Arc::default(),
            key: key.to_vec(),
            tls: tls.clone(),
            handle: None,
        };
        r.resume().await;
        r
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/keyward", self.addr.port())
    }

    pub async fn resume(&mut self) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(
            &self.tls.cert_file,
            &self.tls.key_file,
        )
        .await
        .unwrap();
        let received = self.received.clone();
        let key = self.key.clone();
        let app = axum::Router::new().route(
            "/keyward",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let received = received.clone();
                    let key = key.clone();
                    async move {
                        let signature = headers
                            .get("x-keyward-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let mut r = received.lock().unwrap();
                        if !signature_holds(&key, signature, &body) {
                            r.bad_signatures += 1;
                            return axum::http::StatusCode::UNAUTHORIZED;
                        }
                        r.bodies += 1;
                        let text = String::from_utf8_lossy(&body).into_owned();
                        r.lines.extend(text.lines().map(str::to_owned));
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        );
        let handle = axum_server::Handle::new();
        let server = axum_server::bind_rustls(self.addr, config).handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        let port = self.addr.port();
        eventually(
            "the webhook receiver",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        self.handle = Some(handle);
    }

    pub async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
            let port = self.addr.port();
            eventually(
                "the webhook receiver to stop",
                Duration::from_secs(10),
                || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_err()
                        .then_some(())
                },
            )
            .await;
        }
    }
}
