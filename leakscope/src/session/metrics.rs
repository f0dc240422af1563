//! `--prometheus ADDR`: a minimal HTTP server on its own thread that answers `GET /metrics`
//! with the latest report in Prometheus' text format (`report::prometheus`). Bound before
//! tracing starts (an address in use is refused at once); each connection is answered and
//! closed, with short timeouts, so a slow client cannot hold it.
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct MetricsServer {
    latest: Arc<Mutex<String>>,
    pub addr: SocketAddr,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("--prometheus {addr}: cannot listen"))?;
        let addr = listener.local_addr()?;
        let latest = Arc::new(Mutex::new(String::new()));
        let shared = latest.clone();
        std::thread::Builder::new()
            .name("leakscope-metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = answer(stream, &shared);
                }
            })?;
        Ok(MetricsServer { latest, addr })
    }

    /// Serves `text` from now on.
    pub fn publish(&self, text: String) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }
}

fn answer(mut stream: TcpStream, latest: &Mutex<String>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            latest.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ),
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "leakscope: the findings are at /metrics\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_latest_text_at_metrics() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        m.publish("a 1\n".into());
        m.publish("a 2\n".into());
        let r = get(m.addr, "/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("version=0.0.4"), "{r}");
        assert!(r.ends_with("\r\n\r\na 2\n"), "{r}");
        assert!(get(m.addr, "/nope").starts_with("HTTP/1.1 404"));
        // an address in use is refused with the flag named
        let e = MetricsServer::start(m.addr).err().unwrap();
        assert!(format!("{e:#}").contains("--prometheus"), "{e:#}");
    }
}
