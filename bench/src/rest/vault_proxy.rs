//! The counting Vault proxy: the control planes reach OpenBao only through it, so the request
//! lines it saw while keyward was under load show whether the measured path calls Vault (it must
//! not).

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards TCP connections to OpenBao and records the request line of every HTTP/1.1 request
/// passing towards it.
#[derive(Debug)]
pub(super) struct VaultProxy {
    /// `http://127.0.0.1:PORT`: the Vault address the control planes are given.
    pub(super) addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl VaultProxy {
    pub(super) async fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .context("OpenBao's address is not http://")?
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (upstream, seen) = (upstream.clone(), Arc::clone(&seen));
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            let _ = relay(client, server, seen).await;
                        }
                    });
                }
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// Requests seen so far.
    pub(super) fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The request lines seen after the first `from`.
    pub(super) fn since(&self, from: usize) -> Vec<String> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)[from..].to_vec()
    }
}

impl Drop for VaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const METHODS: [&str; 6] = ["GET ", "POST ", "PUT ", "DELETE ", "LIST ", "PATCH "];

async fn relay(
    client: TcpStream,
    server: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let upward = async move {
        let mut buf = vec![0u8; 16 * 1024];
        // The tail of the previous read, so a request line split across reads is still seen.
        let mut carry = String::new();
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                sw.shutdown().await?;
                return Ok::<_, std::io::Error>(());
            }
            let text = format!("{carry}{}", String::from_utf8_lossy(&buf[..n]));
            for line in text.split("\r\n") {
                if line.ends_with(" HTTP/1.1") && METHODS.iter().any(|m| line.starts_with(m)) {
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line.to_owned());
                }
            }
            carry = text
                .rsplit_once("\r\n")
                .map_or_else(|| text.clone(), |(_, tail)| tail.to_owned());
            if carry.len() > 4096 {
                carry.clear();
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let downward = async move {
        tokio::io::copy(&mut sr, &mut cw).await?;
        cw.shutdown().await
    };
    let _ = tokio::try_join!(upward, downward);
    Ok(())
}
