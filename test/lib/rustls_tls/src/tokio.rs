//! rustls_tokio: a TLS client on tokio-rustls 0.23 (Debian's librust-tokio-rustls-dev) and
//! tokio's multi-threaded runtime, built by test/kernel/rustls.test.ts with --features async:
//!   rustls_tokio PORT CERT.der  connects to 127.0.0.1:PORT, trusts exactly CERT.der, sends its
//!                               standard input with one write_all, copies what it reads until
//!                               the close to standard output
//! tokio-rustls moves the connection as it drives the handshake (the stream is taken out of
//! the future at each poll and handed back by value), and tasks may run on either worker
//! thread: what async rustls programs do. Exit code 0 only if every step worked.
use std::convert::TryFrom;
use std::io::{Read, Write};
use std::sync::Arc;
use std::{env, fs, process};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "pinned.rs"]
mod pinned;

fn die(what: &str) -> ! {
    eprintln!("rustls_tokio: {}", what);
    process::exit(1)
}

async fn exchange(port: String, cert: Vec<u8>, input: Vec<u8>) -> Vec<u8> {
    let config = rustls::ClientConfig::builder()
        .with_safe_defaults()
        .with_custom_certificate_verifier(Arc::new(pinned::Pinned(cert)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let sock = TcpStream::connect(format!("127.0.0.1:{}", port)).await.unwrap_or_else(|e| die(&format!("connect: {}", e)));
    let name = rustls::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, sock).await.unwrap_or_else(|e| die(&format!("handshake: {}", e)));
    tls.write_all(&input).await.unwrap_or_else(|e| die(&format!("write: {}", e)));
    tls.flush().await.unwrap_or_else(|e| die(&format!("flush: {}", e)));
    let mut out = Vec::new();
    match tls.read_to_end(&mut out).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => die(&format!("read: {}", e)),
    }
    out
}

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 3 {
        die("usage: rustls_tokio PORT CERT.der");
    }
    let cert = fs::read(&args[2]).unwrap_or_else(|e| die(&format!("cannot read {}: {}", args[2], e)));
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap_or_else(|e| die(&format!("stdin: {}", e)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {}", e)));
    let out = rt.block_on(rt.spawn(exchange(args[1].clone(), cert, input))).unwrap_or_else(|e| die(&format!("task: {}", e)));
    std::io::stdout().write_all(&out).unwrap_or_else(|e| die(&format!("stdout: {}", e)));
}
